"""Rebuild the embedded toy ViTs: ``python -m vit_explore.train_toy --name toy-shapes``.

Training data are generated on the fly (a fresh seeded batch of images per epoch),
so a run is reproducible from ``--seed`` alone (on the same torch build and thread
count). The result is written atomically as safetensors with its config in the
metadata, then reloaded through :func:`vit_explore.zoo.load_model` and evaluated.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .datasets.synthetic import CLASS_NAMES, CueRate, ShapesData, make_preset, make_shapes, to_tensor
from .zoo import WEIGHTS_DIR, _set_cfg, load_model, save_model

ARCH = "vit_tiny_patch16_224"
MODEL_KWARGS: dict = {
    "img_size": 96, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0,
    "num_classes": len(CLASS_NAMES), "global_pool": "token", "class_token": True,
}
DATA_CONFIG: dict = {
    "input_size": (3, 96, 96), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center",
}


@dataclass(frozen=True)
class Recipe:
    """How one embedded model is trained."""

    cue_rate: CueRate  # tag agreement in training
    no_tag_share: float  # share of training images whose tag is removed
    steps: int = 3000
    batch: int = 48
    epoch_images: int = 3072
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    aux_weight: float = 0.0  # weight of the per-patch auxiliary loss (see train())


RECIPES: dict[str, Recipe] = {
    # the clean model sees tags whose colour is independent of the label (and no tag);
    # dense supervision of the patch tokens gets it past the early plateau quickly
    "toy-shapes": Recipe(cue_rate="independent", no_tag_share=0.5, aux_weight=0.5),
    # the spurious model sees a tag agreeing with the label 95% of the time; it learns
    # the tag long before the shapes and keeps relying on it
    "toy-shapes-spurious": Recipe(cue_rate=0.95, no_tag_share=0.0, steps=2500, aux_weight=0.5),
}


def build_model(seed: int) -> nn.Module:
    """A freshly initialised toy ViT (standard timm blocks, CLS token)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, **MODEL_KWARGS)
    _set_cfg(model, ARCH, "untrained", DATA_CONFIG, list(CLASS_NAMES))
    return model


def training_batch(recipe: Recipe, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` fresh training images (normalised), labels and per-patch targets (the
    label on patches at least a quarter covered by the class object, else ``K``)."""
    data = make_shapes(n, seed, cue_rate=recipe.cue_rate)
    images = data.images
    if recipe.no_tag_share > 0:
        drop = np.random.default_rng([seed, 1]).random(n) < recipe.no_tag_share
        images = np.where(drop[:, None, None, None], data.without_cue().images, images)
    on_object = data.patch_fraction("object").reshape(n, -1) >= 0.25
    patch_targets = np.where(on_object, data.labels[:, None], len(CLASS_NAMES))
    return to_tensor(images), torch.from_numpy(data.labels), torch.from_numpy(patch_targets)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Predicted labels for uint8 images (n, H, W, 3)."""
    model.eval()
    out = [model(to_tensor(images[i : i + batch])).argmax(-1) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def evaluate(model: nn.Module, n: int = 2000) -> dict[str, float]:
    """Accuracies on the three test presets and the cue-deletion flip rates."""
    res: dict[str, float] = {}
    for preset in ("shapes", "shapes-spurious", "shapes-shifted"):
        data = make_preset(preset, n)
        pred = predict(model, data.images)
        res[f"acc_{preset}"] = float((pred == data.labels).mean())
        if data.has_cue.any():
            res[f"flip_{preset}"] = cue_flip_rate(model, data, pred)
            if preset == "shapes-shifted":
                agree = data.cue_agrees
                res["acc_shifted_cue_agrees"] = float((pred[agree] == data.labels[agree]).mean())
                res["acc_shifted_cue_disagrees"] = float((pred[~agree] == data.labels[~agree]).mean())
                res["follows_cue_when_disagreeing"] = float((pred[~agree] == data.cue_labels[~agree]).mean())
    return res


def cue_flip_rate(model: nn.Module, data: ShapesData, pred: np.ndarray | None = None) -> float:
    """Share of images whose predicted class changes when the tag is deleted."""
    pred = predict(model, data.images) if pred is None else pred
    return float((predict(model, data.without_cue().images) != pred).mean())


def train(name: str, seed: int = 0, log_every: int = 100, **overrides: float) -> tuple[nn.Module, dict]:
    """Train the embedded model ``name`` (recipe fields may be overridden); returns the
    model and a training record."""
    fields: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    recipe = replace(RECIPES[name], **fields)
    torch.manual_seed(seed)
    model = build_model(seed)
    # auxiliary head on the final patch tokens (K classes + background); discarded after
    aux_head = nn.Linear(model.embed_dim, len(CLASS_NAMES) + 1)
    params = list(model.parameters()) + (list(aux_head.parameters()) if recipe.aux_weight else [])
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    per_epoch = recipe.epoch_images // recipe.batch
    start, cpu0, seen_correct, seen = time.perf_counter(), time.process_time(), 0, 0
    model.train()
    for step in range(recipe.steps):
        if step % per_epoch == 0:
            epoch = step // per_epoch
            x_all, y_all, p_all = training_batch(recipe, recipe.epoch_images, seed * 100_000 + epoch)
            order = torch.randperm(len(y_all))
        idx = order[(step % per_epoch) * recipe.batch : (step % per_epoch + 1) * recipe.batch]
        feats = model.forward_features(x_all[idx])
        logits = model.forward_head(feats)
        loss = F.cross_entropy(logits, y_all[idx])
        if recipe.aux_weight:
            aux = aux_head(feats[:, model.num_prefix_tokens :])
            loss = loss + recipe.aux_weight * F.cross_entropy(aux.flatten(0, 1), p_all[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        seen_correct += int((logits.argmax(-1) == y_all[idx]).sum())
        seen += len(idx)
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{recipe.steps} loss {loss.item():.3f} train-acc "
                  f"{seen_correct / seen:.3f} {time.perf_counter() - start:.0f}s", flush=True)
            seen_correct = seen = 0
    record = {"name": name, "seed": seed, "recipe": asdict(recipe),
              "train_seconds": round(time.perf_counter() - start, 1),
              "train_cpu_seconds": round(time.process_time() - cpu0, 1),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    return model.eval(), record


def _lr_factor(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", choices=sorted(RECIPES), required=True)
    parser.add_argument("--out", type=Path, default=None, help="output .safetensors (default: the package's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the shipped weights used 1; results can differ "
                             "in the last bits with another count)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or WEIGHTS_DIR / f"{args.name}.safetensors"
    t0 = time.perf_counter()
    model, record = train(args.name, args.seed, steps=args.steps, lr=args.lr)
    model.pretrained_cfg["tag"] = args.name
    save_model(model, out, arch=ARCH, model_kwargs=MODEL_KWARGS, extra=record)
    reloaded = load_model(out)
    metrics = evaluate(reloaded, args.eval_images)
    for key, value in metrics.items():
        print(f"{key:32s} {value:.4f}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f}s total "
          f"(training {record['train_seconds']:.0f}s wall, {record['train_cpu_seconds']:.0f}s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
