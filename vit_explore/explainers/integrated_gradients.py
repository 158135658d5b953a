"""Integrated gradients (Sundararajan, Taly & Yan, ICML 2017, arXiv:1703.01365)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from .._checks import MAX_PASSES, check_int
from ..capture.classifier import ModelInfo
from ..capture.classifier import capture_any as capture
from ..capture.session import Needs
from ..errors import InputError
from ..inputs import data_config
from ..targets import TargetLike, target_score
from ._registry import ExplainerResult, register_explainer
from .saliency import Reduce, reduce_channels

Rule = Literal["trapezoid", "right"]


def ig_schedule(steps: int, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """Points ``α_k`` and weights ``w_k`` (summing to 1) of the Riemann rule on [0, 1].

    ``"trapezoid"``: ``α_k = k/(steps-1)``, k = 0..steps-1, weights ``1/(steps-1)`` halved at
    both ends: the trapezoid rule, weights summing to 1. Captum's ``riemann_trapezoid`` takes
    the same points but weights ``1/steps`` halved at both ends, which sum to
    ``(steps-1)/steps``: its attributions are ours times ``(steps-1)/steps`` (0.969 at 32
    steps), so its completeness gap never closes. ``"right"``: ``α_k = k/steps``,
    k = 1..steps, weights ``1/steps``, exactly captum's ``riemann_right``.
    """
    if rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return alphas, w
    if rule == "right":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    raise InputError(f"rule must be 'trapezoid' or 'right', got {rule!r}")


def _baseline(model: nn.Module, x: torch.Tensor, baseline: object) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise InputError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input {tuple(x.shape)}"
            ) from None
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "black":
        cfg = data_config(model)
        mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device)
        std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device)
        return ((0.0 - mean) / std)[None, :, None, None].expand_as(x).clone()
    raise InputError(f"baseline must be 'zero', 'black' or a tensor broadcastable to the input, got {baseline!r}")


@register_explainer(
    "integrated_gradients",
    kind="model",
    class_specific=True,
    paper="Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017",
    reference="captum.attr.IntegratedGradients (method='riemann_trapezoid' / 'riemann_right')",
)
def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: TargetLike,
    info: ModelInfo,
    baseline: str | torch.Tensor = "zero",
    steps: int = 32,
    rule: Rule = "trapezoid",
    reduce: Reduce = "sum",
    internal_batch_size: int = 16,
) -> ExplainerResult:
    """``(x - x') ⊙ Σ_k w_k ∂y_c/∂x (x' + α_k (x - x'))`` for the target logit ``y_c``.

    Completeness: the attributions sum to ``y_c(x) - y_c(x')`` up to the quadrature error
    (reported per image in ``extras["delta"]``). All ``steps`` points of all images run
    batched, ``internal_batch_size`` images a pass.

    Args:
        baseline: ``"zero"`` (the all-zero *normalised* tensor, i.e. the dataset mean),
            ``"black"`` (pixel value 0 after the model's mean/std), or a tensor broadcastable
            to ``x``.
        steps: integration points (>= 2).
        rule: ``"trapezoid"`` (both ends, the default) or ``"right"`` Riemann sum.
        reduce: channel reduction of the pixel map (``"sum"`` keeps completeness).

    Returns:
        ``ExplainerResult``: patch map (B, gh, gw) = pixel map summed within each patch;
        extras ``pixel_map`` (B, H, W), ``attributions`` (B, C, H, W), ``delta`` (B,).
    """
    check_int("steps", steps, 2, MAX_PASSES, fix="integration points, e.g. 32")
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1:
        raise InputError(f"internal_batch_size must be an int >= 1, got {internal_batch_size!r}")
    alphas, weights = ig_schedule(int(steps), rule)
    base = _baseline(model, x, baseline)
    ref = capture(model, x, Needs(), target=target, info=info)  # logits and target of x itself
    tgt, B = ref.target, x.shape[0]
    jobs = [(float(a), float(w), b) for a, w in zip(alphas, weights) for b in range(B)]
    total = torch.zeros_like(x)
    score_at = {}
    for k in range(0, len(jobs), internal_batch_size):
        part = jobs[k : k + internal_batch_size]
        idx = torch.tensor([b for *_, b in part], device=x.device)
        a = torch.tensor([p[0] for p in part], dtype=x.dtype, device=x.device)[:, None, None, None]
        w = torch.tensor([p[1] for p in part], dtype=x.dtype, device=x.device)[:, None, None, None]
        xs = base[idx] + a * (x[idx] - base[idx])
        tr = capture(model, xs, Needs(input_grad=True), target=tgt[idx], info=info)
        total.index_add_(0, idx, w * tr.input_grad)
        if any(p[0] == 0.0 for p in part):
            s_part = target_score(tr.logits, tgt, rows=idx)
            for j, (al, _, b) in enumerate(part):
                if al == 0.0:
                    score_at[b] = s_part[j]
    attributions = (x - base) * total
    if len(score_at) < B:  # the right rule never evaluates the baseline itself
        score_base = target_score(capture(model, base, Needs(), target=tgt, info=info).logits, tgt)
    else:
        score_base = torch.stack([score_at[b] for b in range(B)])
    score_x = target_score(ref.logits, tgt)
    delta = attributions.sum(dim=(1, 2, 3)) - (score_x - score_base)
    pixel = reduce_channels(attributions, reduce, abs=False)
    return ExplainerResult(
        ref.layout.pool_pixels(pixel),
        extras={"pixel_map": pixel, "attributions": attributions, "delta": delta},
        logits=ref.logits,
        target=tgt,
        layout=ref.layout,
    )
