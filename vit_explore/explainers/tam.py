"""Transition Attention Maps (Yuan, Li, Xiong, Cao & Dou, NeurIPS 2021 XAI4Debugging; docs/methods.md §7)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from .._checks import MAX_PASSES, check_int
from ..capture.adapters import ViTInfo
from ..capture.attn_class import check_composable
from ..capture.session import Needs, capture
from ..errors import InputError
from ..targets import TargetLike
from ._fusion import check_start_layer
from ._registry import ExplainerResult, register_explainer


def _positive_int(name: str, v: object, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
        raise InputError(f"{name} must be an int >= {least}, got {v!r}")
    return int(v)


@register_explainer(
    "tam",
    kind="model",
    class_specific=True,
    paper="Yuan et al., Explaining Information Flow Inside Vision Transformers Using Markov Chain, "
    "NeurIPS 2021 XAI4Debugging workshop",
    reference="XianrenYty/Transition_Attention_Maps (Baselines.generate_transition_attention_maps); "
    "PaddlePaddle/InterpretDL TAMInterpreter (target_score='prob')",
)
def tam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: TargetLike,
    info: ViTInfo,
    start_layer: int = 0,
    steps: int = 20,
    with_integral: bool = True,
    first_state: bool = False,
    target_score: Literal["logit", "prob"] = "logit",
    internal_batch_size: int = 16,
) -> ExplainerResult:
    """Markov-chain states of the read-out token, weighted by integrated attention gradients.

    States: ``s = E_h A_{L-1}[r]`` (read-out row), then ``s ← s Ā_i + s`` for
    ``i = L-2 … start_layer`` (no normalisation). Weights: the target score's gradient
    w.r.t. the last block's attention at ``α·x`` for ``α`` in ``np.linspace(0, 1, steps)``
    (both ends; the baseline is the all-zero normalised input), averaged,
    ``W = E_h[(mean_α ∇A_{L-1})^+][r]``. Map: ``(s ⊙ W)`` on the patch columns.

    The ``steps`` passes only need the last block's gradient: they run batched
    (``internal_batch_size`` images a pass) and the backward stops at the last block.

    Args:
        start_layer: last block of the state recursion (reference class default 0;
            the reference's perturbation/segmentation/pointing-game scripts use 4).
        steps: integration points (>= 2; the reference: 20).
        with_integral: False uses the gradient at ``x`` alone (one pass).
        first_state: use the last block's read-out row alone as the state.
        target_score: ``"logit"`` (the PyTorch reference) or ``"prob"`` (InterpretDL).
        internal_batch_size: images per integration pass.

    Returns:
        ``ExplainerResult`` with the raw (B, gh, gw) map (the reference min-max normalises).
    """
    L = info.num_layers
    start = check_start_layer(start_layer, L)
    check_composable("tam", tuple(None if a.probabilities else a.not_probabilities for a in info.adapters),
                     info.below, start)
    steps = check_int("steps", steps, 2, MAX_PASSES, fix="integration points, e.g. 20")
    chunk = _positive_int("internal_batch_size", internal_batch_size, 1)
    if target_score not in ("logit", "prob"):
        raise InputError(f"target_score must be 'logit' or 'prob', got {target_score!r}")

    # The pass at alpha = 1 (x itself): logits, target, every attention of the states, and dy/dA_{L-1}.
    layers = tuple(range(start, L))
    first = capture(
        model, x, Needs(attn=True, attn_grad=True, layers=layers, grad_from_block=-1),
        target=target, score=target_score, info=info,
    )
    layout, tgt = first.layout, first.target
    total = first.attn_grad_at(-1).clone()
    if with_integral:
        alphas = np.linspace(0, 1, steps)[:-1]  # alpha = 1 was the pass above
        B = x.shape[0]
        jobs = [(float(a), b) for a in alphas for b in range(B)]
        for k in range(0, len(jobs), chunk):
            part = jobs[k : k + chunk]
            idx = torch.tensor([b for _, b in part], device=x.device)
            scale = torch.tensor([a for a, _ in part], dtype=x.dtype, device=x.device)
            xs = x[idx] * scale[:, None, None, None]
            tr = capture(
                model, xs, Needs(attn_grad=True, layers=(-1,), grad_from_block=-1),
                target=tgt[idx], score=target_score, info=info,
            )
            total.index_add_(0, idx, tr.attn_grad_at(-1))
        grad = total / steps
    else:
        grad = total
    w = layout.readout_row(grad.clamp(min=0).mean(dim=1))  # (B, N)

    s = layout.readout_row(first.attn_at(-1).mean(dim=1))  # (B, N)
    if not first_state:
        for i in range(L - 2, start - 1, -1):
            s = (s[:, None, :] @ first.attn_at(i).mean(dim=1))[:, 0] + s
    cam = layout.patch_columns(s * w)
    return ExplainerResult(cam, logits=first.logits, target=tgt, layout=layout)
