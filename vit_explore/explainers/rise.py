"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018, arXiv:1806.07421).

Reference ``eclique/RISE`` (``explanations.py``, PyTorch notebook): N random binary
``s x s`` grids with keep probability ``p1``, each upsampled bilinearly to
``(s + 1) * ceil(H / s)`` (skimage ``resize(order=1, mode='reflect')``, i.e. half-pixel
centres with mirror boundary) and cropped at a random shift in ``[0, cell)``; then
``sal = sum_i P_c(x * M_i) M_i / (N * p1)`` with softmax probabilities. The masks are drawn
from ``numpy.random.RandomState(seed)`` in the reference's order (the grid, then per mask
the row shift and the column shift), so ``seed`` gives the masks the reference gives after
``np.random.seed(seed)``. Cost: N forward passes in batches of ``batch_size``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._checks import MAX_PASSES, check_int
from ..capture.ablation import forward_logits
from ..capture.chunks import check_batch_size, model_batch_size
from ..capture.classifier import ModelInfo, check_logits, layout_any
from ..errors import InputError
from ..targets import ScoreTarget, TargetLike, resolve_target, target_score
from ._registry import ExplainerResult, register_explainer


def mirror_interp_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) float64 linear interpolation, half-pixel centres, mirror boundary
    (``scipy.ndimage.zoom(order=1, mode='mirror', grid_mode=True)``, which skimage's
    ``resize(order=1, mode='reflect', anti_aliasing=False)`` calls)."""
    u = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5
    i0 = torch.floor(u)
    frac = u - i0
    i0 = i0.long()

    def mirror(i: torch.Tensor) -> torch.Tensor:
        if in_size == 1:
            return torch.zeros_like(i)
        period = 2 * (in_size - 1)
        i = i.remainder(period)
        return torch.where(i >= in_size, period - i, i)

    U = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    U.index_put_((rows, mirror(i0)), 1 - frac, accumulate=True)
    U.index_put_((rows, mirror(i0 + 1)), frac, accumulate=True)
    return U


def generate_masks(
    n: int, s: int, p1: float, size: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The random part of RISE's ``generate_masks``: grids (N, s, s) bool and shifts (N, 2)."""
    rs = np.random.RandomState(seed)
    grid = rs.rand(n, s, s) < p1
    cell = (math.ceil(size[0] / s), math.ceil(size[1] / s))
    shifts = np.empty((n, 2), dtype=np.int64)
    for i in range(n):
        shifts[i, 0] = rs.randint(0, cell[0])
        shifts[i, 1] = rs.randint(0, cell[1])
    return grid, shifts


def build_masks(
    grid: np.ndarray, shifts: np.ndarray, s: int, size: tuple[int, int], device=None, dtype=torch.float32
) -> torch.Tensor:
    """(n, H, W) masks from grids and shifts: upsample to (s+1)*cell, crop at the shift."""
    H, W = size
    ch, cw = math.ceil(H / s), math.ceil(W / s)
    Uh = mirror_interp_matrix((s + 1) * ch, s)
    Uw = mirror_interp_matrix((s + 1) * cw, s)
    g = torch.as_tensor(grid, dtype=torch.float64)
    sh = torch.as_tensor(shifts)
    rows = sh[:, 0, None] + torch.arange(H)  # (n, H)
    cols = sh[:, 1, None] + torch.arange(W)
    m = Uh[rows] @ g @ Uw[cols].transpose(1, 2)  # (n, H, W)
    return m.to(device=device, dtype=dtype)


@register_explainer(
    "rise",
    kind="model",
    class_specific=True,
    paper="Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box Models, BMVC 2018",
    reference="eclique/RISE",
)
def rise(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: TargetLike,
    info: ModelInfo,
    n_masks: int = 6000,
    s: int = 8,
    p1: float = 0.1,
    seed: int = 0,
    batch_size: int | None = None,
) -> ExplainerResult:
    """RISE saliency with the reference defaults (N=6000, s=8, p1=0.1 of the PyTorch notebook).

    Args:
        x: (B, 3, H, W); every image gets the same N masks (as ``RISEBatch``).
        n_masks, s, p1: number of masks, grid cells per side, keep probability.
        seed: mask seed (see the module docstring).
        batch_size: masked images per forward pass. None: the reference's 100, except a ViT on
            the CPU, which takes as many as keep a pass's MLP activations within 16 MiB
            (``capture/chunks.py``; ViT-B/16 at 224: 6), as occlusion and ViT-CX do. The results
            differ only by float rounding.

    Returns:
        ``patch_map`` (B, gh, gw): the pixel saliency averaged within each patch;
        ``extras["pixel_map"]`` (B, H, W) the RISE map of the target class (of a callable
        target's value, the score RISE weighs the masks by, in place of the class probability).
    """
    check_batch_size(batch_size)
    for name, v in (("n_masks", n_masks), ("s", s)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}")
    check_int("n_masks", n_masks, 1, MAX_PASSES, fix="e.g. 6000")
    check_int("s", s, 1, min(x.shape[-2:]), fix="grid cells per side, e.g. 8")
    if not 0 < float(p1) <= 1:
        raise InputError(f"p1 must be in (0, 1], got {p1}")
    B, _, H, W = x.shape
    layout = layout_any(info, H, W)
    if batch_size is None:
        batch_size = model_batch_size(info, layout.grid, x, 100)
    logits = check_logits(model, forward_logits(model, x))
    tgt = resolve_target(target, logits)
    sc = "logit" if isinstance(tgt, ScoreTarget) else "prob"  # a callable's own value, else the class probability
    grid, shifts = generate_masks(n_masks, s, float(p1), (H, W), seed)
    sal = torch.zeros(B, H * W, dtype=torch.float64, device=x.device)
    per = max(1, batch_size // B)  # masks per chunk, so that a chunk holds about batch_size images
    rows = torch.arange(B, device=x.device)
    for i in range(0, n_masks, per):
        m = build_masks(grid[i : i + per], shifts[i : i + per], s, (H, W), x.device, x.dtype)  # (n, H, W)
        n = m.shape[0]
        stack = (m[:, None, None] * x[None]).reshape(n * B, *x.shape[1:])  # mask-major, as RISEBatch
        out = forward_logits(model, stack, batch_size)
        pc = target_score(out, tgt, sc, rows=rows.repeat(n)).reshape(n, B).to(torch.float64)  # (n, B)
        sal += pc.T @ m.reshape(n, -1).to(torch.float64)
    sal = (sal / (n_masks * float(p1))).reshape(B, H, W).to(torch.float32)
    return ExplainerResult(
        patch_map=layout.pool_pixels(sal, "mean"),
        extras={"pixel_map": sal, "n_masks": n_masks, "s": s, "p1": float(p1)},
        logits=logits,
        target=tgt,
        layout=layout,
    )
