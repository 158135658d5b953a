"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop, arXiv:1312.6034)."""

from __future__ import annotations

from typing import Literal

import torch

from ..capture.session import Needs, Trace
from ..errors import InputError
from ._registry import ExplainerResult, register_explainer

Reduce = Literal["max", "sum", "mean"]


def reduce_channels(g: torch.Tensor, reduce: Reduce, abs: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): optional absolute value, then max / sum / mean over channels."""
    if reduce not in ("max", "sum", "mean"):
        raise InputError(f"reduce must be 'max', 'sum' or 'mean', got {reduce!r}")
    g = g.abs() if abs else g
    if reduce == "max":
        return g.amax(dim=1)
    return g.sum(dim=1) if reduce == "sum" else g.mean(dim=1)


@register_explainer(
    "saliency",
    needs=Needs(input_grad=True),
    class_specific=True,
    paper="Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks: Visualising Image "
    "Classification Models and Saliency Maps, ICLR 2014 workshop",
    reference="captum.attr.Saliency (abs=True) and InputXGradient (times_input=True)",
)
def saliency(trace: Trace, *, abs: bool = True, reduce: Reduce = "max", times_input: bool = False) -> ExplainerResult:
    """Gradient of the target logit w.r.t. the input pixels.

    Pixel map ``m = reduce_c f(g_c)`` with ``g = ∂y_c/∂x`` (times ``x`` when ``times_input``:
    gradient×input) and ``f = |·|`` when ``abs``. The default is Simonyan et al.'s map, the
    maximum over channels of ``|∂y_c/∂x|``; ``abs=False, reduce="sum", times_input=True`` is
    gradient×input summed over channels (signed).

    Args:
        trace: uses ``trace.input_grad`` (B, 3, H, W) and ``trace.input``.

    Returns:
        ``ExplainerResult``: the pixel map summed within each patch (B, gh, gw), and the
        (B, H, W) pixel map in ``extras["pixel_map"]``.
    """
    g = trace.input_grad
    if g is None:
        raise InputError("saliency needs a trace captured with Needs(input_grad=True)")
    if times_input:
        g = g * trace.input
    pixel = reduce_channels(g, reduce, abs)
    return ExplainerResult(trace.layout.pool_pixels(pixel), extras={"pixel_map": pixel})
