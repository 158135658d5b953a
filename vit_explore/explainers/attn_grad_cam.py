"""Grad-CAM on the last attention map: Chefer et al.'s "GradCAM" baseline (CVPR 2021; docs/methods.md §4.5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..capture.session import Needs, Trace
from ..errors import InputError
from ._registry import register_explainer


def _needs(params: Mapping[str, Any]) -> Needs:
    layer = params["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InputError(f"layer must be a block index (int, negative counts from the end), got {layer!r}")
    return Needs(attn=True, attn_grad=True, layers=(layer,))


@register_explainer(
    "attn_grad_cam",
    needs=_needs,
    class_specific=True,
    paper="Selvaraju et al., Grad-CAM, ICCV 2017, applied to attention as in Chefer, Gur & Wolf, "
    "Transformer Interpretability Beyond Attention Visualization, CVPR 2021",
    reference="hila-chefer/Transformer-Explainability (Baselines.generate_cam_attn)",
)
def attn_grad_cam(trace: Trace, *, layer: int = -1) -> torch.Tensor:
    """Head-weighted attention of one block, weights from the attention gradient.

    With ``a_h`` and ``g_h`` the read-out rows (patch columns) of ``A_h`` and ``∇A_h`` of
    block ``layer``: ``w_h = mean(g_h)`` over the patches and ``cam = (E_h[w_h a_h])^+``
    (head mean first, then the clamp).

    Args:
        trace: uses ``trace.attn`` and ``trace.attn_grad`` of block ``layer``, (B, H, N, N).
        layer: the block (the reference: the last one, -1).

    Returns:
        (B, gh, gw), raw: the values before the reference's min-max normalisation
        (``(cam - min) / (max - min)``), which ``Explanation.heatmap()`` applies.
    """
    layout = trace.layout
    a = layout.read(trace.attn_at(layer))  # (B, H, gh, gw)
    g = layout.read(trace.attn_grad_at(layer))
    w = g.mean(dim=(-2, -1), keepdim=True)  # (B, H, 1, 1)
    return (w * a).mean(dim=1).clamp(min=0)
