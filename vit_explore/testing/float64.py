"""Float64 restatements of the attention methods (and of saliency, integrated gradients, Grad-CAM,
occlusion, token drop and noise), for tests and ``bench/family_table.py``.

Each function restates a method's math, written again from its paper / docs/methods.md, over
the attention, gradients and scores of the model run in float64 on timm's unfused attention
path (``run64``): nothing here calls into ``vit_explore.explainers`` or ``vit_explore.capture``.
The scores are restated from the attention module's weights (``scores64``: qkv, q/k norm, the
rotary embedding of the patch tokens, every additive relative position bias), not taken from
the model's softmax. The read-out row is derived from the timm model's own attributes
(``global_pool``, a distillation head, ``num_prefix_tokens``).

Chefer LRP, AttnLRP / CP-LRP and RISE are restated in ``float64_chefer_lrp``, ``float64_attn_lrp``
and ``float64_rise``.

Families: timm ``Attention`` (ViT, DeiT, DINOv2, CLIP, SigLIP-GAP, ...), EVA / EVA-02 / RoPE /
DINOv3 (rotary), BEiT / BEiT v2 and relpos / srelpos (relative position bias); the attention-pool
(MAP) head, whose read-out row is the restated pool's attention (``float64_map``); NaFlexViT,
run from its restated embedding (``float64_naflex``); CaiT, XCiT's class-attention stage and
ConViT (``float64_cait``, ``float64_convit``: attention restated from the weights, laid out on
the 1 + P tokens).
"""


from __future__ import annotations

import torch
from torch import nn

from .float64_attention import (
    ag_cam64,
    attention_flow64,
    attn_grad_cam64,
    chefer_generic64,
    raw_attention64,
    rollout64,
    tam64,
    vit_cx64,
)
from .float64_attn_lrp import attn_lrp64
from .float64_cait import is_class_attention64
from .float64_chefer_lrp import chefer_lrp64
from .float64_convit import attn_lrp_family64, is_convit64
from .float64_model import Run64, model64, readout64, run64, scores64
from .float64_perturb import (
    dropped64,
    grad_cam64,
    integrated_gradients64,
    noised64,
    occlusion64,
    saliency64,
)
from .float64_rise import rise64

__all__ = [
    "METHODS64",
    "Run64",
    "ag_cam64",
    "attention_flow64",
    "attn_grad_cam64",
    "attn_lrp64",
    "chefer_generic64",
    "chefer_lrp64",
    "close_to",
    "dropped64",
    "grad_cam64",
    "integrated_gradients64",
    "model64",
    "noised64",
    "occlusion64",
    "raw_attention64",
    "readout64",
    "reference64",
    "rise64",
    "rollout64",
    "run64",
    "saliency64",
    "scores64",
    "tam64",
    "vit_cx64",
]


#: method -> the explain() keywords its restatement assumes (the methods' defaults, spelled out)
METHODS64: dict[str, dict] = {
    "raw_attention": {}, "rollout": {}, "attention_flow": {}, "chefer_generic": {}, "attn_grad_cam": {},
    "ag_cam": {}, "tam": {"steps": 20}, "vit_cx": {"seed": 0},
    "saliency": {}, "integrated_gradients": {"steps": 8}, "grad_cam": {}, "occlusion": {},
    "chefer_lrp": {}, "attn_lrp": {"variant": "cp"}, "rise": {"n_masks": 8, "s": 8, "p1": 0.1, "seed": 0},
}


def reference64(model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor) -> torch.Tensor:
    """The float64 restatement (B, gh, gw) of ``method`` (a key of ``METHODS64``) for ``target`` (B,)."""
    if method == "chefer_lrp":
        return chefer_lrp64(model, x, target)
    if method == "attn_lrp":
        if is_class_attention64(model) or is_convit64(model):
            return attn_lrp_family64(model, x, target, METHODS64["attn_lrp"]["variant"])
        return attn_lrp64(model, x, target, METHODS64["attn_lrp"]["variant"])
    if method == "rise":
        return rise64(model, x, target, **METHODS64["rise"])
    m64 = model64(model)
    if method == "tam":
        return tam64(m64, x, target, steps=METHODS64["tam"]["steps"])
    if method == "vit_cx":
        return vit_cx64(m64, x, target, seed=METHODS64["vit_cx"]["seed"])
    if method == "integrated_gradients":
        return integrated_gradients64(m64, x, target, METHODS64[method]["steps"])
    if method in ("saliency", "grad_cam", "occlusion"):
        return {"saliency": saliency64, "grad_cam": grad_cam64, "occlusion": occlusion64}[method](m64, x, target)
    r = run64(m64, x, target, detach_attn_input=method == "ag_cam")
    fn = {"raw_attention": raw_attention64, "rollout": rollout64, "attention_flow": attention_flow64,
          "chefer_generic": chefer_generic64, "attn_grad_cam": attn_grad_cam64, "ag_cam": ag_cam64}[method]
    return fn(r)


#: the tolerance of ``close_to``: |got - ref| <= RTOL |ref| + ATOL max|ref| + FLOOR[method]
RTOL, ATOL = 1e-4, 1e-4
#: an absolute floor where the method subtracts two float32 probabilities (4 float32 ulps of 1.0)
FLOOR: dict[str, float] = {"occlusion": 4 * 2.0**-23}


def close_to(got: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> tuple[bool, float]:
    """Whether a float32 map equals its float64 restatement to ``RTOL`` relative, ``ATOL``
    times the map's largest magnitude and ``floor`` absolute; and the largest error relative to
    that magnitude."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape:
        return False, float("inf")
    scale = float(ref.abs().max()) or 1.0
    err = (got - ref).abs()
    ok = bool((err <= RTOL * ref.abs() + ATOL * scale + floor).all())
    return ok, float(err.max()) / scale

