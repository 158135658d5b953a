"""The family x method table, built by running every method on one tiny random-weight timm model per family.

Each cell is what the code does, never typed by hand:

* ``exact``: the map (or, for ``intervene``, the logits) equals a float64 restatement of the method
  run here (``vit_explore.testing.float64``: the method's math written again over the float64
  model's attention, gradients and weight-restated scores), within the tolerance in the caption;
  ``exact in float64``: ``chefer_lrp``'s float32 map does not, the same code on the float64 model
  does (the note gives the float32 error);
* ``differs (e)``: it does not (e: the largest error over the map's magnitude): a bug;
* ``finite, not compared: <why>``: a finite map on the grid, but no float64 restatement of this
  method or family in the script yet;
* ``not defined: <reason>``: the UnsupportedModelError / InputError actually raised, shortened;
* ``crash: <error>``: any other exception (a bug).

    PYTHONPATH=. python bench/family_table.py            # markdown table on stdout
    PYTHONPATH=. python bench/family_table.py --readme   # also replace the block in README.md
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import warnings
from pathlib import Path

import timm
import torch

import vit_explore as vx
from vit_explore.capture.classifier import inspect_model, layout_any
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.testing import float64 as f64
from vit_explore.testing import float64_agnostic as agn64
from vit_explore.testing.float64_agnostic import GradientCheckError
from vit_explore.testing.float64_chefer_lrp import restates as restates_chefer
from vit_explore.testing.float64_drop import drop64, drop_family, grid64
from vit_explore.testing.float64_map import is_map

SMALL = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}

#: family -> (timm name, constructor overrides, input size)
FAMILIES: dict[str, tuple[str, dict, int]] = {
    "ViT": ("vit_tiny_patch16_224", SMALL, 32),
    "ViT registers + GAP": ("vit_base_patch16_reg4_gap_256", SMALL, 32),
    "DeiT": ("deit_tiny_patch16_224", SMALL, 32),
    "DeiT distilled": ("deit_tiny_distilled_patch16_224", SMALL, 32),
    "DeiT III": ("deit3_small_patch16_224", SMALL, 32),
    "FlexiViT": ("flexivit_small", SMALL, 32),
    "DINOv2": ("vit_small_patch14_dinov2", SMALL, 32),
    "DINOv2 + registers": ("vit_small_patch14_reg4_dinov2", SMALL, 32),
    "CLIP": ("vit_base_patch16_clip_224", SMALL, 32),
    "SigLIP (GAP)": ("vit_base_patch16_siglip_gap_224", SMALL, 32),
    "SigLIP (MAP head)": ("vit_base_patch16_siglip_224", SMALL, 32),
    "EVA": ("eva_giant_patch14_224", SMALL, 32),
    "EVA-02": ("eva02_tiny_patch14_224", SMALL, 32),
    "BEiT": ("beit_base_patch16_224", SMALL, 32),
    "BEiT v2": ("beitv2_base_patch16_224", SMALL, 32),
    "ViT relpos": ("vit_relpos_small_patch16_224", SMALL, 32),
    "ViT srelpos": ("vit_srelpos_small_patch16_224", SMALL, 32),
    "ViT RoPE": ("vit_base_patch16_rope_224", SMALL, 32),
    "DINOv3": ("vit_base_patch16_dinov3", SMALL, 32),
    "CaiT": ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "depth": 2, "depth_token_only": 1,
                                "embed_dim": 32, "num_heads": 2}, 32),
    "XCiT": ("xcit_nano_12_p16_224", {"img_size": 64, "depth": 2}, 64),
    "SAM ViT": ("samvit_base_patch16", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32,
                                        "num_heads": 2, "global_attn_indexes": (1,), "window_size": 2,
                                        "neck_chans": 16}, 32),
    "NaFlexViT": ("naflexvit_base_patch16_gap", {"depth": 2, "embed_dim": 32, "num_heads": 2}, 64),
    "ConViT": ("convit_tiny", {"img_size": 32, "patch_size": 8, "depth": 2, "local_up_to_layer": 1}, 32),
    "LeViT": ("levit_128s", {"img_size": 128}, 128),
    "Swin": ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1),
                                               "embed_dim": 24, "num_heads": (1, 2, 2, 4)}, 64),
    "PiT": ("pit_ti_224", {"img_size": 64}, 64),
    "VOLO": ("volo_d1_224", {}, 64),
    "MViTv2": ("mvitv2_tiny", {}, 64),
    "Hiera": ("hiera_tiny_224", {"img_size": 64, "embed_dim": 24, "num_heads": 1, "stages": (1, 1, 1, 1)}, 64),
    "ResNet": ("resnet18", {}, 64),
    "ConvNeXt": ("convnext_atto", {"depths": (1, 1, 1, 1)}, 64),
}

#: cheap parameters, so that the table is about coverage and not run time
PARAMS: dict[str, dict] = {
    "rise": {"n_masks": 8},
}
INTERVENE = ("intervene (noise)", "intervene (drop)")


#: families whose zero-initialised biases and batch-norm statistics are drawn at random (``off_zero``)
OFF_ZERO = {"LeViT", "Swin", "PiT", "VOLO", "MViTv2", "Hiera", "ResNet", "ConvNeXt"}


def off_zero(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Biases and batch-norm running statistics drawn at random (seeded), as a trained model has them.

    timm initialises them to zero, which puts a random-weight ReLU / LayerNorm network exactly on
    its kinks at the all-zero image where integrated gradients starts (every pre-activation 0, a
    LayerNorm over a constant vector): the gradient there is not defined and the float64 check of
    the reference's gradient rightly refuses it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def build(name: str, overrides: dict) -> torch.nn.Module:
    """A seeded random-weight model; the constructor overrides that it does not accept are dropped
    (VOLO and MViTv2 are built from their classes with small stages)."""
    torch.manual_seed(0)
    if name == "volo_d1_224":
        from timm.models.volo import VOLO

        return VOLO(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2), img_size=64,
                    num_classes=5).eval()
    if name == "mvitv2_tiny":
        from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

        return MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=24), img_size=64, num_classes=5).eval()
    kw = dict(overrides)
    while True:
        try:
            return timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
        except TypeError as e:
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if bad is None or bad.group(1) not in kw:
                raise
            kw.pop(bad.group(1))


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    msg = re.sub(r"^method '[\w]+' (cannot run on this model: )?", "", msg)
    msg = msg.split("; methods that apply")[0].split("; use a pixel mode")[0]
    return (msg[:157] + "...") if len(msg) > 160 else msg


#: attention classes whose scores ``vit_explore.testing.float64.scores64`` restates
RESTATED_ATTN = ("timm.layers.attention.Attention", "timm.models.eva.EvaAttention",
                 "timm.layers.attention.AttentionRope", "timm.models.beit.Attention",
                 "timm.models.vision_transformer_relpos.RelPosAttention")


#: model classes whose embedding, blocks and read-out the restatements assume (subclasses too)
RESTATED_MODELS = ("timm.models.vision_transformer.VisionTransformer", "timm.models.eva.Eva",
                   "timm.models.beit.Beit", "timm.models.vision_transformer_relpos.VisionTransformerRelPos",
                   "timm.models.naflexvit.NaFlexVit")


#: methods whose restatement needs only the model's forward / input gradient (any patch-grid model)
AGNOSTIC = ("saliency", "integrated_gradients", "occlusion", "rise", "intervene (noise)")


#: models whose attention ``float64_cait`` / ``float64_convit`` restate from the weights, and the methods restated there
RESTATED_OWN = {"timm.models.cait.Cait": "CaiT", "timm.models.xcit.Xcit": "XCiT", "timm.models.convit.ConVit": "ConViT"}
RESTATED_OWN_METHODS = ("raw_attention", "rollout", "attention_flow", "chefer_generic", "attn_grad_cam", "tam",
                        "vit_cx", "attn_lrp")


def restated(model: torch.nn.Module, method: str | None = None) -> str | None:
    """None when the float64 restatements cover the model (for ``method``), else why not."""
    bases = {f"{c.__module__}.{c.__qualname__}" for c in type(model).__mro__}
    own = [v for k, v in RESTATED_OWN.items() if k in bases]
    if own:
        return None if method in RESTATED_OWN_METHODS else f"no float64 restatement of {method} on {own[0]}"
    if not bases & set(RESTATED_MODELS):
        return f"no float64 restatement of {type(model).__name__}"
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") for b in blocks):
        return f"no float64 restatement of {type(model).__name__}"
    for b in blocks:
        a = type(b.attn)
        if f"{a.__module__}.{a.__qualname__}" not in RESTATED_ATTN:
            return f"no float64 restatement of {a.__name__} attention"
    if getattr(model, "global_pool", "token") not in ("token", "avg") and not is_map(model):
        return f"no float64 read-out for global_pool={model.global_pool!r}"
    return None


def _compared(got: torch.Tensor, ref: torch.Tensor, method: str = "") -> str:
    ok, err = f64.close_to(got, ref, f64.FLOOR.get(method, 0.0))
    return "exact" if ok else f"differs ({err:.1e})"


def cell(model: torch.nn.Module, x: torch.Tensor, method: str) -> str:
    ex, target = None, None
    try:
        if method in INTERVENE:
            iv = vx.intervene(model, x, [0], mode="drop" if "drop" in method else "noise")
            out = iv.logits
            ok = bool(torch.isfinite(out).all())
        else:
            with torch.no_grad():
                target = model(x).argmax(1)
            kw = {**PARAMS.get(method, {}), **f64.METHODS64.get(method, {})}
            ex = vx.explain(model, x, method, target=target, **kw)
            out = ex.patch_map
            ok = out.shape == (x.shape[0], *ex.layout.grid) and bool(torch.isfinite(out).all())
        if not ok:
            return "crash: non-finite or misshapen map"
    except (UnsupportedModelError, InputError) as e:
        return f"not defined: {_short(e)}"
    except Exception as e:  # noqa: BLE001 - a crash is reported in the table, as it is
        return f"crash: {type(e).__name__}: {_short(e)}"
    try:
        return verdict(model, x, method, out, ex, target)
    except GradientCheckError as e:  # the reference itself would be wrong: say so, compare nothing
        return f"not compared: {_short(e)}"
    except Exception as e:  # noqa: BLE001 - a crash of the restatement is reported in the table too
        return f"crash: float64 restatement: {type(e).__name__}: {_short(e)}"


def _agnostic(model: torch.nn.Module, x: torch.Tensor, method: str, out: torch.Tensor, ex, target) -> str:
    """A model-agnostic method (and Grad-CAM) on a model outside the attention restatements,
    against ``float64_agnostic`` on the grid the code reports (Grad-CAM: at the layer it used)."""
    layout = ex.layout if ex is not None else layout_any(inspect_model(model), *x.shape[-2:])
    grid, cell = tuple(layout.grid), tuple(layout.patch_size)
    own = agn64.feature_cell64(model, x)  # the cell from forward_features' spatial size (None: PiT)
    if method != "grad_cam" and own is not None and own != cell:
        return f"differs (analysis cell {cell}, forward_features gives {own})"
    if method == "intervene (noise)":
        return _compared(out, agn64.noised_cells64(model, x, [0], grid, cell))
    layer = ex.extras.get("layer") if method == "grad_cam" else None
    return _compared(out, agn64.reference_any64(model, x, method, target, grid, cell, layer), method)


def verdict(model: torch.nn.Module, x: torch.Tensor, method: str, out: torch.Tensor, ex, target) -> str:
    """``exact`` / ``differs`` against the float64 restatement, or why there is none here."""
    vit = any(f"{c.__module__}.{c.__qualname__}" in RESTATED_MODELS for c in type(model).__mro__)
    if method in AGNOSTIC and not vit or method == "grad_cam" and restated(model) is not None:
        return _agnostic(model, x, method, out, ex, target)
    if method in AGNOSTIC:  # a forward / gradient of the whole model on the ViT's patch grid
        if method == "intervene (noise)":
            return _compared(out, f64.noised64(model, x, [0]))
        return _compared(out, f64.reference64(model, x, method, target), method)
    if method not in f64.METHODS64 and method != "intervene (drop)":
        return f"finite, not compared: no float64 restatement of {method} in this script"
    why = restated(model, method)
    if method == "intervene (drop)":  # CaiT, ConViT, NaFlexViT, MAP heads: vit_explore/testing/float64_drop.py
        if why is not None and drop_family(model) is None:
            return f"finite, not compared: {why}"
        gh, gw = grid64(model, x)
        return _compared(out, drop64(model, x, list(range(1, gh * gw))))
    if method == "chefer_lrp" and restates_chefer(model):  # its restatement writes out the MAP head, CaiT, ConViT
        why = None
    if why is not None:
        return f"finite, not compared: {why}"
    ref = f64.reference64(model, x, method, target)
    got = _compared(out, ref, method)
    if method == "chefer_lrp" and got != "exact":  # its rules divide by near-zero sums: try the code in float64
        ex64 = vx.explain(copy.deepcopy(model).double(), x.double(), method, target=target)
        if _compared(ex64.patch_map, ref, method) == "exact":
            return (f"exact in float64: the code run on the float64 model; the float32 map {got} "
                    "(the LRP rules' near-zero denominators amplify float32 rounding)")
    return got


def table(families: dict[str, tuple[str, dict, int]], methods: list[str], out=sys.stderr) -> str:
    cols = [*methods, *INTERVENE]
    lines = ["| family (timm model) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    notes: dict[str, int] = {}
    for fam, (name, kw, size) in families.items():
        try:
            model = build(name, kw)
            if fam in OFF_ZERO:
                off_zero(model)
        except Exception as e:  # noqa: BLE001
            lines.append(f"| {fam} (`{name}`) | " + " | ".join(["model not built: " + _short(e)] * len(cols)) + " |")
            continue
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        row = []
        for m in cols:
            c = cell(model, x, m)
            if c.startswith(("not defined: ", "crash: ", "finite, not compared: ", "not compared: ",
                             "exact in float64: ")):
                key = c  # long reasons go to numbered notes under the table
                notes.setdefault(key, len(notes) + 1)
                c = f"{c.split(': ')[0]} [{notes[key]}]"
            row.append(c)
        print(f"{fam}: {sum(c.startswith('exact') for c in row)}/{len(cols)} exact", file=out)
        lines.append(f"| {fam} (`{name}`) | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"exact: equal to the float64 restatement within {f64.RTOL:g} x |ref| + {f64.ATOL:g} x max|ref| "
                 f"per entry (occlusion: + {f64.FLOOR['occlusion']:.1e}, float32 probabilities subtracted) "
                 "(vit_explore/testing/float64.py; intervene: logits with patch 0 dropped / noised). "
                 "Models outside the attention restatements: the model-agnostic methods against "
                 "vit_explore/testing/float64_agnostic.py on the grid the Explanation reports, its cell checked "
                 "against the size of forward_features (except PiT, whose forward_features is its class token), "
                 "and Grad-CAM at the layer the code chose (extras['layer']) for both. Every input gradient of a "
                 "reference is checked against a float64 central difference; at a point with no gradient (the "
                 "all-zero baseline of integrated gradients on a max-pool net: tied maxima) the reference keeps "
                 "autograd's one-sided choice. " + ", ".join(sorted(OFF_ZERO)) + ": biases and batch-norm "
                 "statistics drawn off zero (off_zero), as a trained model has them.")
    lines.append("")
    lines += [f"{i}. {k}" for k, i in notes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", action="store_true", help="replace the block between <!-- family-table --> markers")
    ap.add_argument("--families", help="comma-separated subset of the families")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    fams = FAMILIES
    if args.families:
        wanted = [f.strip() for f in args.families.split(",")]
        unknown = [f for f in wanted if f not in FAMILIES]
        if unknown:
            ap.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
        fams = {f: FAMILIES[f] for f in wanted}
    md = table(fams, vx.list_methods())
    print(md)
    if args.readme:
        return write_readme_block("<!-- family-table -->", md)
    return 0


def write_readme_block(marker: str, md: str) -> int:
    """Replace what stands between the README's two ``marker`` lines by ``md`` (atomically)."""
    path = Path(__file__).resolve().parents[1] / "README.md"
    parts = path.read_text().split(marker)
    if len(parts) != 3:
        print(f"README.md needs exactly two {marker} lines", file=sys.stderr)
        return 1
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(parts[0] + marker + "\n" + md + "\n" + marker + parts[2])
    tmp.replace(path)  # nothing half-written
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
