"""The reference's LRP rules for Chefer et al. (CVPR 2021; ``modules/layers_ours.py`` of
hila-chefer/Transformer-Explainability) as batched closed forms (docs/methods.md §4.3), shared by
``chefer_lrp.py`` and its class-attention read-out (``_chefer_class_attn.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's ``safe_divide``: ``a / (b + 1e-9)``, 0 where ``b == 0``.

    The reference computes ``den = clamp(b, min=1e-9) + clamp(b, max=1e-9)``, which is
    ``b + 1e-9`` exactly (one clamp returns ``b``, the other ``1e-9``), replaces ``den == 0``
    by 1e-9 and multiplies by ``b != 0``; the same values here with fewer passes over memory
    (``den == 0`` only where ``b == -1e-9``, checked once, fixed only if it occurs).
    """
    den = b + 1e-9
    hole = den == 0
    if hole.any():
        den.masked_fill_(hole, 1e-9)
    return (a / den).masked_fill_(b == 0, 0.0)


def linear_rule(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, xw: torch.Tensor | None = None) -> torch.Tensor:
    """Alpha=1/beta=0 rule of a Linear (bias ignored): x (..., K), r (..., O), w (O, K) -> (..., K).

    With ``x± W±`` written through ``|x|`` and ``|W|`` (``x+ W+ + x- W- = (x W + |x| |W|) / 2``,
    ``x+ (S W+) + x- (S W-) = (x (S W) + |x| (S |W|)) / 2``) the rule reads one weight-sized
    temporary (``|W|``) instead of three (``W+``, ``W-``, ``|W|``): at batch 1 the weights are
    as large as the activations. ``xw``: ``x W^T`` if already known (the recorded output minus
    the bias), saving one matmul.
    """
    aw = w.abs()
    ax = x.abs()
    if xw is None:
        xw = F.linear(x, w)
    z = F.linear(ax, aw).add_(xw).mul_(0.5)  # x+ W+^T + x- W-^T >= 0
    s = sdiv(r, z)
    return (x * (s @ w)).add_(ax.mul_(s @ aw)).mul_(0.5)


def _xw(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out - bias


def scale_rule(x: torch.Tensor, r: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """Alpha=1/beta=0 rule of an element-wise scaling ``x * g`` (LayerScale); identity if g is None."""
    if g is None:
        return r
    gp, gn = g.clamp(min=0), g.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = sdiv(r, xp * gp + xn * gn)
    return xp * (s * gp) + xn * (s * gn)


def add_rule(x0: torch.Tensor, x1: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual Add ``x0 + x1`` of (B, ...) tensors, with the rescaling per image."""
    s = sdiv(r, x0 + x1)
    a, b = x0 * s, x1 * s
    dims = tuple(range(1, r.ndim))
    a_sum, b_sum = a.sum(dims, keepdim=True), b.sum(dims, keepdim=True)
    r_sum = r.sum(dims, keepdim=True)
    tot = a_sum.abs() + b_sum.abs()
    a_fact = sdiv(a_sum.abs(), tot) * r_sum
    b_fact = sdiv(b_sum.abs(), tot) * r_sum
    return a * sdiv(a_fact, a_sum), b * sdiv(b_fact, b_sum)


def clone_rule(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Merge of the two branches of a residual fork."""
    return x * (sdiv(r1, x) + sdiv(r2, x))
