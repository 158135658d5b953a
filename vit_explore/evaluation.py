"""The benchmark runner: dataset x methods x metrics x baselines -> a results table.

Under ``torchrun`` (or any initialised ``torch.distributed`` group) the dataset is cut into
global batches of ``batch_size`` images and rank ``r`` takes batches ``r, r + world, ...``;
every rank's per-image records are gathered (``all_gather_object``) and merged in image
order, so the table does not depend on the number of processes. Use gloo on CPU and nccl on
GPU (:func:`init_distributed` picks it).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, VitExploreError, suggest
from .metrics import functional as MF
from .metrics.accumulators import (
    EnergyPointingGame,
    PerturbationAUC,
    PointingGame,
    RelevanceMass,
    Segmentation,
)

# metric key -> (description, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "del_rise": ("deletion AUC, RISE preset (step 224 px, grey substrate, p(top-1))", False),
    "ins_rise": ("insertion AUC, RISE preset (step 224 px, blur substrate, p(top-1))", True),
    "del_tam": ("deletion AUC, TAM preset (step 1792 px, grey substrate)", False),
    "ins_tam": ("insertion AUC, TAM preset (step 1792 px, grey substrate)", True),
    "del_patch": ("deletion AUC, patch preset (one patch per step, grey substrate)", False),
    "ins_patch": ("insertion AUC, patch preset (one patch per step, from grey)", True),
    "chefer_pos": ("Chefer positive perturbation AUC (black, accuracy vs label, x100, max 90)", False),
    "chefer_neg": ("Chefer negative perturbation AUC (black, accuracy vs label, x100, max 90)", True),
    "pointing": ("pointing game, 15 px tolerance, class-mean accuracy", True),
    "energy_pg": ("energy-based pointing game", True),
    "jaccard": ("Jaccard of the thresholded map vs the object mask (per-image mean)", True),
    "f1": ("F1 of the thresholded map vs the object mask (per-image mean)", True),
    "pixacc": ("true pixel accuracy (TP+TN)/N (per-image mean)", True),
    "mass": ("relevance mass accuracy on the object, pixel level", True),
    "rank": ("relevance rank accuracy on the object, pixel level", True),
    "mass_patch": ("relevance mass accuracy on the object, patch level", True),
    "spurious": ("spurious-mass fraction: share of relevance on the cue", False),
}
_CURVES = {
    "del_rise": ("rise", "deletion"), "ins_rise": ("rise", "insertion"), "del_tam": ("tam", "deletion"),
    "ins_tam": ("tam", "insertion"), "del_patch": ("patch", "deletion"), "ins_patch": ("patch", "insertion"),
    "chefer_pos": ("chefer_perturbation", "positive"), "chefer_neg": ("chefer_perturbation", "negative"),
}
DEFAULT_METRICS: tuple[str, ...] = (
    "del_rise", "ins_rise", "del_patch", "chefer_pos", "chefer_neg", "pointing", "energy_pg",
    "jaccard", "f1", "pixacc", "mass", "rank", "mass_patch", "spurious",
)
DATASETS = ("shapes", "shapes-spurious", "shapes-shifted", "voc")


# --------------------------------------------------------------------------- datasets


@dataclass
class BenchItem:
    """One image: ``x`` (3, H, W) normalised for the model; ``label`` (-1 unknown); ``gt``
    (h, w) uint8 object mask 0/1/255 at the original resolution; ``cue`` (h, w) bool or None;
    ``cls`` the class id used for the pointing game's class mean."""

    index: int
    x: torch.Tensor
    label: int
    gt: np.ndarray
    cue: np.ndarray | None
    cls: int


class BenchDataset:
    """Indexable source of :class:`BenchItem` (``load(indices)``)."""

    name: str = ""
    has_cue: bool = False
    labels_match_model: bool = True

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, indices: Sequence[int]) -> list[BenchItem]:  # pragma: no cover - interface
        raise NotImplementedError


def _norm(model: nn.Module) -> tuple[tuple[int, int], Any, Any]:
    from .inputs import data_config

    cfg = data_config(model)
    return tuple(cfg["input_size"][1:]), cfg["mean"], cfg["std"]


def _to_model_tensor(images: np.ndarray, size, mean, std) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> normalised (n, 3, H, W), bilinear resize without crop when needed."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (x - m) / s


class ShapesBench(BenchDataset):
    """The synthetic shapes test sets (``shapes``, ``shapes-spurious``, ``shapes-shifted``)."""

    def __init__(self, name: str, model: nn.Module, limit: int, seed: int | None = None) -> None:
        from .datasets import synthetic

        if name not in synthetic.PRESETS:
            raise InputError(f"unknown shapes set {name!r}; use one of {sorted(synthetic.PRESETS)}")
        self.name = name
        self.data = synthetic.make_preset(name, n=limit, seed=synthetic.TEST_SEED if seed is None else seed)
        self.has_cue = synthetic.PRESETS[name] is not None
        self.size, self.mean, self.std = _norm(model)
        from .zoo import class_names

        self.labels_match_model = list(class_names(model)) == list(self.data.class_names)

    def __len__(self) -> int:
        return len(self.data)

    def load(self, indices: Sequence[int]) -> list[BenchItem]:
        idx = np.asarray(list(indices), dtype=np.int64)
        x = _to_model_tensor(self.data.images[idx], self.size, self.mean, self.std)
        out = []
        for j, i in enumerate(idx):
            lab = int(self.data.labels[i])
            out.append(BenchItem(int(i), x[j], lab if self.labels_match_model else -1,
                                 self.data.object_mask[i].astype(np.uint8),
                                 self.data.cue_mask[i] if self.has_cue else None, lab))
        return out


class VOCBench(BenchDataset):
    """Pascal VOC 2012 segmentation under the seed report's protocol (see ``datasets.voc``)."""

    def __init__(self, root, model: nn.Module, limit: int | None, split: str = "val") -> None:
        from .datasets import voc
        from .zoo import class_names

        self.name = "voc"
        self.ds = voc.VOCSegmentation(root, split)
        self.n = len(self.ds) if limit is None else min(limit, len(self.ds))
        self.size, self.mean, self.std = _norm(model)
        names = [n.replace(" ", "").lower() for n in class_names(model)]
        self.labels_match_model = names == list(voc.VOC_CLASSES)

    def __len__(self) -> int:
        return self.n

    def load(self, indices: Sequence[int]) -> list[BenchItem]:
        from .datasets import voc

        out = []
        for i in indices:
            s = self.ds[int(i)]
            arr = np.asarray(s.image, dtype=np.uint8)[None]
            x = _to_model_tensor(arr, self.size, self.mean, self.std)[0]
            # ground truth: the VOC class when the model predicts VOC classes, else all objects
            gt = voc.class_mask(s.mask, None)
            out.append(BenchItem(int(i), x, s.main_class if self.labels_match_model else -1, gt, None, s.main_class))
        return out


def make_dataset(name: str, model: nn.Module, limit: int | None, *, voc_root=None, seed: int | None = None) -> BenchDataset:
    if name == "voc":
        if voc_root is None:
            raise InputError("--dataset voc needs --voc-root DIR (the folder holding VOCdevkit/VOC2012)")
        return VOCBench(voc_root, model, limit)
    if name in DATASETS:
        return ShapesBench(name, model, 100 if limit is None else limit, seed)
    raise InputError(f"unknown dataset {name!r}{suggest(name, DATASETS)}; use one of {list(DATASETS)}")


# --------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    """Results: ``table[method][metric]`` (baselines as ``baseline:<name>``), mean curves,
    per-method seconds per image, errors, and run metadata."""

    table: dict[str, dict[str, float]]
    methods: list[str]
    metrics: list[str]
    curves: dict[str, dict[str, dict[str, list[float]]]]
    meta: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def format_table(self, digits: int = 3) -> str:
        """A plain-text table: one row per method, one column per metric (arrows: better)."""
        heads = ["method"] + [f"{m}{'↑' if METRICS[m][1] else '↓'}" for m in self.metrics] + ["s/img"]
        rows = []
        for meth in self.methods:
            vals = [self.table[meth].get(m, math.nan) for m in self.metrics]
            cells = ["—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}" for v in vals]
            t = self.timing.get(meth)
            rows.append([meth] + cells + ["—" if t is None else f"{t:.3f}"])
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
        line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))
        out = [line, "-" * len(line)]
        for r in rows:
            out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        for meth, msg in self.errors.items():
            out.append(f"! {meth}: {msg}")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "methods": self.methods, "metrics": self.metrics,
                "metric_info": {m: {"description": METRICS[m][0], "higher_is_better": METRICS[m][1]} for m in self.metrics},
                "table": self.table, "curves": self.curves, "timing": self.timing, "errors": self.errors}


# --------------------------------------------------------------------------- runner


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | None = None) -> tuple[int, int, bool]:
    """Join the process group that ``torchrun`` describes (env ``WORLD_SIZE`` > 1): nccl when
    the device is CUDA, else gloo. Returns (rank, world, initialised_here)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _method_maps(name: str, model, x, target, indices, grid, seed, params) -> torch.Tensor:
    if name.startswith("baseline:"):
        return MF.baseline_maps(name.split(":", 1)[1], x, indices, grid, seed=seed)
    from .api import explain

    return explain(model, x, name, target=target, **params.get(name, {})).patch_map


def run_benchmark(
    model: nn.Module,
    dataset: BenchDataset,
    methods: Sequence[str],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baselines: Sequence[str] = MF.BASELINES,
    batch_size: int = 16,
    eval_batch_size: int = 128,
    min_prob: float | None = None,
    target: str = "pred",
    threshold: str = "mean",
    tolerance: float = 15.0,
    seed: int = 0,
    method_params: dict[str, dict] | None = None,
    progress: bool | Callable = False,
) -> BenchResult:
    """Explain every image with every method and baseline, and score every map.

    Args:
        model: a classifier (eval mode; never modified). Inputs go to its device.
        dataset: a :class:`BenchDataset` (see :func:`make_dataset`).
        methods: registered method keys; baselines are added as ``baseline:<name>``.
        metrics: keys of :data:`METRICS`; ``spurious`` is dropped for datasets without a cue,
            ``chefer_*`` need labels in the model's class space (else reported as NaN).
        batch_size: images explained together; eval_batch_size: perturbed images per pass.
        min_prob: keep only images whose top-1 softmax probability exceeds it (VOC protocol: 0.85).
        target: ``"pred"`` explains the top-1 class (RISE, Chefer "predicted"), ``"label"`` the label.
        threshold: segmentation rule (``mean``, ``0.5``, ``otsu``, ``0.3max``).
        seed: seeds the random baseline (per image index) and torch.
        progress: True for a tqdm bar (rank 0), or a callable ``f(n_done_images)``.
    """
    from .explainers import get_explainer

    for m in metrics:
        if m not in METRICS:
            raise InputError(f"unknown metric {m!r}{suggest(m, METRICS)}; use some of {list(METRICS)}")
    for m in methods:
        get_explainer(m)  # unknown names fail early with a suggestion
    for b in baselines:
        if b not in MF.BASELINES:
            raise InputError(f"unknown baseline {b!r}; use some of {list(MF.BASELINES)}")
    if target not in ("pred", "label"):
        raise InputError(f"target must be 'pred' or 'label', got {target!r}")
    metrics = [m for m in metrics if m != "spurious" or dataset.has_cue]
    names = list(methods) + [f"baseline:{b}" for b in baselines]
    params = method_params or {}
    rank, world = _dist()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n = len(dataset)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = batches[rank::world]

    bar = None
    if progress is True and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(b) for b in mine), desc=f"bench {dataset.name}", unit="img")
    records: list[dict] = []
    timing = {m: 0.0 for m in names}
    errors: dict[str, str] = {}
    torch.manual_seed(seed)
    try:
        for idx in mine:
            items = dataset.load(idx)
            x = torch.stack([it.x for it in items]).to(device)
            with torch.no_grad():
                probs = torch.cat([model(x[i:i + eval_batch_size]) for i in range(0, len(x), eval_batch_size)]).float().softmax(-1)
            keep = [j for j in range(len(items)) if min_prob is None or float(probs[j].max()) > min_prob]
            for j in range(len(items)):
                if j not in keep:
                    records.append({"index": items[j].index, "skipped": True})
            if keep:
                records += _score_batch(model, [items[j] for j in keep], x[keep], probs[keep], names, metrics, target,
                                        threshold, tolerance, seed, params, eval_batch_size, timing, errors)
            if bar is not None:
                bar.update(len(items))
            elif callable(progress):
                progress(len(items))
    finally:
        if bar is not None:
            bar.close()

    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (records, timing, errors))
        records = [r for g in gathered for r in g[0]]
        timing = {m: sum(g[1][m] for g in gathered) for m in names}
        errors = {k: v for g in gathered for k, v in g[2].items()}
    records.sort(key=lambda r: r["index"])
    if records and all(r["skipped"] for r in records):
        warnings.warn(
            f"no image passed min_prob={min_prob}: every metric is NaN; lower min_prob or check the model",
            stacklevel=2,
        )
    return _aggregate(records, names, metrics, timing, errors, dataset, model, world, threshold, target, min_prob)


def _score_batch(model, items, x, probs, names, metrics, target, threshold, tolerance, seed, params, ebs, timing, errors):
    pred = probs.argmax(-1)
    labels = torch.tensor([it.label for it in items], device=x.device)
    tgt = labels if target == "label" and bool((labels >= 0).all()) else pred
    gt = [it.gt for it in items]
    same_size = len({g.shape for g in gt}) == 1
    indices = [it.index for it in items]
    from .capture.adapters import inspect_vit

    try:
        info = inspect_vit(model)
        ph, pw = info.patch_size
        grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    except VitExploreError:
        grid, ph, pw = (x.shape[-2] // 16, x.shape[-1] // 16), 16, 16
    recs = [{"index": it.index, "skipped": False, "cls": it.cls, "scores": {}, "curves": {}} for it in items]
    all_maps: dict[str, torch.Tensor] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            all_maps[name] = _method_maps(name, model, x, tgt, indices, grid, seed, params).detach().float()
        except Exception as exc:  # noqa: BLE001 - one broken method must not end the benchmark
            errors[name] = f"{type(exc).__name__}: {exc}"
            for r in recs:
                r["scores"][name] = {m: math.nan for m in metrics}
            continue
        timing[name] += time.perf_counter() - t0
    # every curve of every map shares one stream of forward passes (see perturbation_batch)
    has_labels = bool((labels >= 0).all())
    runs = [_CURVES[m] for m in metrics if m in _CURVES and (has_labels or _CURVES[m][0] != "chefer_perturbation")]
    shared = MF.perturbation_curves_many(model, x, all_maps, runs, target=pred, labels=labels if has_labels else None,
                                         batch_size=ebs, patch_size=(ph, pw)) if runs and all_maps else {}
    for name, maps in all_maps.items():
        vals: dict[str, np.ndarray] = {}
        curves: dict[str, np.ndarray] = {}
        for m in metrics:
            if m in _CURVES:
                if _CURVES[m] not in runs:
                    vals[m] = np.full(len(items), math.nan)
                    continue
                res = shared[name][_CURVES[m]]
                vals[m] = res.auc.cpu().numpy()
                curves[m] = res.curves.double().cpu().numpy()
        px = _pixel_metrics(maps, gt, [it.cue for it in items], metrics, threshold, tolerance, same_size, grid)
        vals.update(px)
        for j, r in enumerate(recs):
            r["scores"][name] = {m: float(vals[m][j]) for m in vals}
            r["curves"][name] = {m: c[j] for m, c in curves.items()}
    return recs


def _pixel_metrics(maps, gt, cues, metrics, threshold, tolerance, same_size, grid) -> dict[str, np.ndarray]:
    """Mask metrics at each image's original resolution (batched when sizes agree)."""
    groups = [list(range(len(gt)))] if same_size else [[j] for j in range(len(gt))]
    out = {m: np.full(len(gt), math.nan) for m in metrics if m not in _CURVES}
    for g in groups:
        mk = torch.from_numpy(np.stack([gt[j] for j in g]))
        mp = maps[g].cpu()
        fg = (mk == 1)
        if "pointing" in out:
            out["pointing"][g] = MF.pointing_game(mp, mk, tolerance=tolerance).numpy()
        if "energy_pg" in out:
            out["energy_pg"][g] = MF.energy_pointing_game(mp, mk).numpy()
        if any(k in out for k in ("jaccard", "f1", "pixacc")):
            s = MF.segmentation_scores(mp, mk, rule=threshold)
            for k, key in (("jaccard", "jaccard"), ("f1", "f1"), ("pixacc", "pixel_accuracy")):
                if k in out:
                    out[k][g] = s[key].numpy()
            for k in ("tp", "fp", "fn", "tn"):
                out.setdefault(f"_{k}", np.full(len(gt), math.nan))[g] = s[k].numpy()
        if "mass" in out:
            out["mass"][g] = MF.relevance_mass(mp, fg).numpy()
        if "rank" in out:
            out["rank"][g] = MF.relevance_rank(mp, fg).numpy()
        if "mass_patch" in out:
            out["mass_patch"][g] = MF.relevance_mass(_on_grid(mp, grid), fg, level="patch").numpy()
        if "spurious" in out and cues[g[0]] is not None:
            out["spurious"][g] = MF.spurious_mass(mp, torch.from_numpy(np.stack([cues[j] for j in g]))).numpy()
    return out


def _on_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch-level maps as they are; pixel-level (baseline) maps mean-pooled to the model grid."""
    from .metrics.functional._common import pool_to_grid

    return maps if tuple(maps.shape[-2:]) == tuple(grid) else pool_to_grid(maps, grid)


def _aggregate(records, names, metrics, timing, errors, dataset, model, world, threshold, target, min_prob) -> BenchResult:
    done = [r for r in records if not r["skipped"]]
    table: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in names:
        row: dict[str, float] = {}
        curves[name] = {}
        for m in metrics:
            v = np.array([r["scores"][name].get(m, math.nan) for r in done], dtype=np.float64)
            if m in _CURVES:
                acc = PerturbationAUC(*_CURVES[m])
                acc._add(auc=v)
                row[m] = acc.compute()["auc"]
                cs = [r["curves"].get(name, {}).get(m) for r in done]
                cs = [c for c in cs if c is not None]
                if cs:
                    curves[name][m] = {"x": (np.arange(len(cs[0])) / (len(cs[0]) - 1) * (0.9 if m.startswith("chefer") else 1.0)).tolist(),
                                       "y": np.mean(np.stack(cs), 0).tolist()}
            elif m == "pointing":
                pg = PointingGame(tolerance=15.0)
                pg.update_hits(v, [r["cls"] for r in done])
                row[m] = pg.compute()["accuracy"]
            elif m in ("jaccard", "f1", "pixacc"):
                seg = Segmentation(threshold)
                seg.update_counts(*[[r["scores"][name].get(f"_{k}", math.nan) for r in done] for k in ("tp", "fp", "fn", "tn")])
                row[m] = seg.compute()[{"jaccard": "jaccard", "f1": "f1", "pixacc": "pixel_accuracy"}[m]]
            else:
                mean_of: EnergyPointingGame | RelevanceMass = EnergyPointingGame() if m == "energy_pg" else RelevanceMass()
                mean_of._add(value=v)
                row[m] = mean_of.compute()["mean"]
        table[name] = row
    n_done = max(len(done), 1)
    meta = {
        "dataset": dataset.name, "n_images": len(done), "n_skipped": len(records) - len(done),
        "model": getattr(model, "pretrained_cfg", {}).get("tag") or type(model).__name__,
        "world_size": world, "threshold_rule": threshold, "target": target, "min_prob": min_prob,
        "cue_area_share": float(dataset.data.cue_mask.mean()) if dataset.has_cue and hasattr(dataset, "data") else None,
    }
    return BenchResult(table, names, list(metrics), curves, meta,
                       {m: t / n_done for m, t in timing.items()}, errors)
