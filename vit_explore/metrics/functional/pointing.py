"""Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016 /
IJCV 2018; TorchRay ``benchmark/pointing_game.py``) and the energy-based pointing game
(Wang et al., Score-CAM, CVPRW 2020). docs/evaluation.md §1.4-1.5.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import InputError
from ._common import as_maps, as_masks, check_batch, minmax, upsample


def _foreground(mask: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Bool foreground of a bool mask, or of an integer mask (>0 and != ignore_index)."""
    if mask.dtype == torch.bool:
        return mask
    fg = mask > 0
    if ignore_index is not None:
        fg &= mask != ignore_index
    return fg


def argmax_points(saliency: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, 2) (row, col) of each map's maximum after bilinear resize to ``size``; the first
    maximum in raster order wins (``torch.argmax``, as TorchRay)."""
    maps = as_maps(saliency)
    if size is not None:
        maps = upsample(maps, size)
    W = maps.shape[-1]
    idx = maps.reshape(maps.shape[0], -1).argmax(dim=1)
    return torch.stack([idx // W, idx % W], dim=1)


def centre_points(batch: int, size: tuple[int, int], device=None) -> torch.Tensor:
    """The centre-point baseline: (B, 2) points at (H // 2, W // 2)."""
    H, W = size
    return torch.tensor([[H // 2, W // 2]], device=device).expand(batch, 2).clone()


def point_hits(points: torch.Tensor, masks, *, tolerance: float = 15.0, ignore_index: int | None = 255) -> torch.Tensor:
    """Hit (1.0) / miss (0.0) of each point against its mask; NaN where the mask is empty.

    A hit means some ground-truth pixel lies at Euclidean distance ``< tolerance`` from the point
    (TorchRay's strict disk ``d^2 < tolerance^2``; tolerance 0 means the pixel itself).
    """
    m = _foreground(as_masks(masks).to(points.device), ignore_index)
    if points.shape != (m.shape[0], 2):
        raise InputError(f"points must have shape ({m.shape[0]}, 2), got {tuple(points.shape)}")
    H, W = m.shape[-2:]
    yy = torch.arange(H, device=m.device, dtype=torch.float64)[None, :, None]
    xx = torch.arange(W, device=m.device, dtype=torch.float64)[None, None, :]
    d2 = (yy - points[:, 0, None, None].double()) ** 2 + (xx - points[:, 1, None, None].double()) ** 2
    disk = d2 < tolerance**2 if tolerance > 0 else d2 == 0
    hit = (m & disk).flatten(1).any(1).double()
    empty = ~m.flatten(1).any(1)
    return torch.where(empty, torch.full_like(hit, math.nan), hit)


def pointing_game(
    saliency, masks, *, tolerance: float = 15.0, ignore_index: int | None = 255
) -> torch.Tensor:
    """Per-image pointing-game hits (B,) float64: 1 hit, 0 miss, NaN for an empty mask (skipped).

    Args:
        saliency: (B, h, w) maps, resized bilinearly to the mask's (original-image) size first.
        masks: (B, H, W) ground truth of the explained class (bool, or integer with
            ``ignore_index`` as void).
        tolerance: pixels, in the mask's resolution (15 in the protocol).
    """
    m = as_masks(masks)
    maps = as_maps(saliency)
    check_batch(maps, m)
    pts = argmax_points(maps, (m.shape[-2], m.shape[-1]))
    return point_hits(pts, m, tolerance=tolerance, ignore_index=ignore_index)


def class_mean_accuracy(hits, classes) -> float:
    """Pointing accuracy as the protocol reports it: mean over classes of hits / (hits + misses).

    NaN entries (skipped pairs) are ignored; classes with no valid pair are left out.
    """
    h = np.asarray(hits, dtype=np.float64).reshape(-1)
    c = np.asarray(classes).reshape(-1)
    if h.shape != c.shape:
        raise InputError(f"{h.size} hits but {c.size} class ids")
    ok = ~np.isnan(h)
    accs = [h[ok & (c == k)].mean() for k in np.unique(c[ok])]
    return float(np.mean(accs)) if accs else math.nan


def energy_pointing_game(
    saliency, masks, *, ignore_index: int | None = 255, binarize: float | None = None
) -> torch.Tensor:
    """Energy-based pointing game (Score-CAM): sum of the min-max normalised map inside the
    ground truth / sum over the image, per image (B,) float64; NaN for an all-zero map.

    ``binarize=0.3`` gives the TAM variant (map > 0.3 * max counted as 1, else 0). Pixels marked
    ``ignore_index`` count in neither sum.
    """
    m = as_masks(masks)
    maps = as_maps(saliency)
    check_batch(maps, m)
    maps = minmax(upsample(maps.to(m.device), (m.shape[-2], m.shape[-1]))).double()
    if binarize is not None:
        maps = (maps > binarize * maps.flatten(1).max(1).values[:, None, None]).double()
    valid = torch.ones_like(m, dtype=torch.bool) if m.dtype == torch.bool or ignore_index is None else m != ignore_index
    fg = _foreground(m, ignore_index)
    total = (maps * valid).flatten(1).sum(1)
    inside = (maps * fg).flatten(1).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(total, math.nan))
