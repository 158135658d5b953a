"""Patch-aligned sliding-window occlusion (Zeiler & Fergus, ECCV 2014), batched.

A window of ``window`` x ``window`` patches slides over the patch grid with ``stride``
patches (a last window of each axis is added flush with the border; with ``stride >
window`` the patches between windows are never covered and get 0). Each window is acted
on with ``mode`` (as ``vx.intervene``: ``zero``, ``mean``, ``blur``, ``noise`` or
``drop``) and all windows go through the model in batches. The value of a window is
``score(x) - score(occluded)`` of the target (softmax probability by default, or the
logit); a patch's value is the mean over the windows that contain it.
Cost: one forward per window position (gh*gw for the default 1x1 window, stride 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..capture.chunks import check_batch_size, model_batch_size
from ..capture.classifier import ClassifierInfo, ModelInfo, layout_any, not_token_mode
from ..errors import InputError
from ..perturb import ForwardEngine, check_mode
from ..targets import TargetLike, resolve_target, target_score
from ._registry import ExplainerResult, register_explainer


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Start positions along one axis: 0, stride, ... and a last one flush with the border."""
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


@register_explainer(
    "occlusion",
    kind="model",
    class_specific=True,
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    reference="captum.attr.Occlusion (patch-aligned windows)",
)
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: TargetLike,
    info: ModelInfo,
    window: int = 1,
    stride: int = 1,
    mode: str = "zero",
    score: Literal["prob", "logit"] = "prob",
    seed: int = 0,
    sigma: float = 0.1,
    blur_size: int = 11,
    blur_sigma: float = 5.0,
    batch_size: int | None = None,
) -> ExplainerResult:
    """Occlusion map (B, gh, gw): drop of the target's probability (or logit) per patch.

    Args:
        window, stride: in patches.
        mode: how a window is removed (``vx.intervene`` modes).
        score: ``"prob"`` (softmax) or ``"logit"``; with a callable target only ``"logit"`` (the
            callable's value as it is).
        batch_size: window positions per forward pass. None: 64, except a ViT on the CPU, which
            takes as many as keep a pass's MLP activations within 16 MiB (``capture/chunks.py``;
            ViT-B/16 at 224: 6, and 14% less time than passes of 64).
    """
    check_batch_size(batch_size)
    check_mode(mode)
    if score not in ("prob", "logit"):
        raise InputError(f"score must be 'prob' or 'logit', got {score!r}")
    eng = ForwardEngine()
    st = eng.setup(model, x, info=info)  # info: explain's (a headless model for a callable target)
    if mode == "drop" and isinstance(st.info, ClassifierInfo):
        raise not_token_mode(st.info)
    gh, gw = st.grid
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int (patches), got {v!r}")
    if window > min(gh, gw):
        raise InputError(f"window {window} is larger than the {gh}x{gw} patch grid")
    B = st.x.shape[0]
    if batch_size is None:
        batch_size = model_batch_size(st.info, (gh, gw), st.x, 64)
    wins = []
    for r in window_starts(gh, window, stride):
        for c in window_starts(gw, window, stride):
            w = torch.zeros(gh, gw, dtype=torch.bool)
            w[r : r + window, c : c + window] = True
            wins.append(w)
    W = torch.stack(wins)  # (n, gh, gw)
    n = len(W)
    regions = W.repeat(B, 1, 1)
    img_idx = torch.arange(B).repeat_interleave(n)
    base = eng.base_logits(model, st.x)
    tgt = resolve_target(target, base)
    b_s = target_score(base, tgt, score)[:, None]  # (B, 1)
    lg, *_ = eng.run_regions(
        model, st, regions, img_idx, mode, seed=seed, sigma=sigma, blur_size=blur_size,
        blur_sigma=blur_sigma, batch_size=batch_size, with_base=False, keep_fed=False,
    )
    o_s = target_score(lg, tgt, score, rows=img_idx.to(base.device)).reshape(B, n)
    drop = (b_s - o_s).to(torch.float64)  # (B, n)
    Wf = W.reshape(n, -1).to(drop.device, torch.float64)
    cover = Wf.sum(0)
    patch_map = ((drop @ Wf) / cover.clamp_min(1)).reshape(B, gh, gw).to(torch.float32)
    H, Wd = st.x.shape[-2:]
    return ExplainerResult(
        patch_map=patch_map,
        extras={"window_scores": drop.to(torch.float32), "windows": W},
        logits=base,
        target=tgt,
        layout=layout_any(info, H, Wd),
    )
