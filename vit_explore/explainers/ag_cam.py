"""Attention-Guided CAM (Leem & Seo, AAAI 2024, arXiv:2402.04563; docs/methods.md §8)."""

from __future__ import annotations

from typing import Literal

import torch

from ..capture.attn_class import check_composable
from ..capture.session import Needs, Trace
from ..errors import InputError
from ._registry import register_explainer

Fusion = Literal["sum", "mean"]


@register_explainer(
    "ag_cam",
    needs=Needs(attn_grad=True, scores=True, detach_attn_input=True),
    class_specific=True,
    paper="Leem & Seo, Attention Guided CAM: Visual Explanations of Vision Transformer Guided by "
    "Self-Attention, AAAI 2024",
    reference="LeemSaebom/Attention-Guided-CAM-Visual-Explanations-of-Vision-Transformer-Guided-by-Self-Attention "
    "(AGCAM.generate)",
)
def ag_cam(trace: Trace, *, head_fusion: Fusion = "sum", layer_fusion: Fusion = "sum") -> torch.Tensor:
    """``Σ_l Σ_h ReLU(∇A_{l,h}) ⊙ σ(S_{l,h})`` on the read-out row, patch columns.

    ``S`` are the pre-softmax scores ``(q·scale) kᵀ`` and ``∇A`` the gradient of the target
    logit w.r.t. the attention probabilities, taken in the reference's graph where each
    attention's input is detached (gradients reach earlier blocks only through the
    residual and MLP paths). Needs blocks with a timm ``Attention`` whose ``qkv`` Linear
    gives q and k (the scores are recomputed from it).

    Args:
        trace: uses ``trace.attn_grad`` and ``trace.scores`` (L x (B, H, N, N)).
        head_fusion, layer_fusion: ``"sum"`` (the reference) or ``"mean"``.

    Returns:
        (B, gh, gw), raw (the reference min-max normalises after upsampling).
    """
    for what, how in (("head_fusion", head_fusion), ("layer_fusion", layer_fusion)):
        if how not in ("sum", "mean"):
            raise InputError(f"{what} must be 'sum' or 'mean', got {how!r}")
    check_composable("ag_cam", trace.notes, trace.below, None)  # sums every block: σ(S_h) pairs with ∇A_h
    layout = trace.layout
    per_layer = []
    for i in range(trace.num_layers):
        m = trace.attn_grad_at(i).clamp(min=0) * torch.sigmoid(trace.scores_at(i))  # (B, H, N, N)
        r = layout.read(m)  # (B, H, gh, gw)
        per_layer.append(r.sum(dim=1) if head_fusion == "sum" else r.mean(dim=1))
    stacked = torch.stack(per_layer)
    return stacked.sum(dim=0) if layer_fusion == "sum" else stacked.mean(dim=0)
