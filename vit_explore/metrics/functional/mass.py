"""Ground-truth agreement without a threshold: relevance mass accuracy and relevance rank
accuracy (Arras, Osman & Samek, CLEVR-XAI, Information Fusion 2022), at pixel and patch
level, and the spurious-mass fraction (the share of relevance on a planted cue).

Only positive relevance counts (negative values are set to 0), as in CLEVR-XAI.
"""

from __future__ import annotations

import math

import torch

from ...errors import InputError
from ._common import as_maps, as_masks, check_batch, descending_order, pool_to_grid, upsample


def _prepare(saliency, masks, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    maps, m = as_maps(saliency), as_masks(masks)
    check_batch(maps, m)
    m = m.to(maps.device)
    if not (m.dtype == torch.bool or m.dtype.is_floating_point):  # integer label mask: > 0 and not void (255)
        m = (m > 0) & (m != 255)
    if level == "pixel":
        maps = upsample(maps, (m.shape[-2], m.shape[-1]))
    elif level == "patch":
        if m.shape[-2:] != maps.shape[-2:]:  # a pixel mask: fraction of each patch covered
            gh, gw = maps.shape[-2:]
            if m.shape[-2] % gh == 0 and m.shape[-1] % gw == 0:
                m = pool_to_grid(m.float(), (gh, gw))
            else:  # a mask that does not tile the grid (e.g. a VOC image): area-weighted fractions
                m = torch.nn.functional.adaptive_avg_pool2d(m.float()[:, None], (gh, gw))[:, 0]
    else:
        raise InputError(f"level must be 'pixel' or 'patch', got {level!r}")
    return maps.double().clamp_min(0), m.double()


def relevance_mass(saliency, masks, *, level: str = "pixel") -> torch.Tensor:
    """Relevance mass accuracy (B,) float64: sum of positive relevance inside the mask / total.

    Args:
        saliency: (B, h, w) maps.
        masks: (B, H, W) bool ground truth. ``level="pixel"`` upsamples the map bilinearly to
            the mask; ``level="patch"`` keeps the map on its grid and weights each patch by the
            fraction of it the mask covers (a bool patch-grid mask gives the plain definition).
    Returns:
        NaN where the map has no positive relevance.
    """
    a, w = _prepare(saliency, masks, level)
    total = a.flatten(1).sum(1)
    inside = (a * w).flatten(1).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(total, math.nan))


def relevance_rank(saliency, masks, *, level: str = "pixel") -> torch.Tensor:
    """Relevance rank accuracy (B,) float64: of the K = |GT| highest-relevance positions
    (ties in raster order), the fraction inside the mask. NaN for an empty mask.
    At patch level a pixel mask is turned into patches covered at least half."""
    a, w = _prepare(saliency, masks, level)
    gt = w >= 0.5 if level == "patch" else w > 0
    flat_gt = gt.flatten(1)
    K = flat_gt.sum(1)
    order = descending_order(a.flatten(1))
    inside = flat_gt.gather(1, order).double()
    topk = torch.arange(order.shape[1], device=a.device)[None, :] < K[:, None]
    hits = (inside * topk).sum(1)
    return torch.where(K > 0, hits / K.clamp_min(1).double(), torch.full_like(hits, math.nan))


def spurious_mass(saliency, cue_masks, *, level: str = "pixel") -> torch.Tensor:
    """Spurious-mass fraction (B,): the share of positive relevance on the cue's pixels (or
    patches). Compare with the cue's area share (:func:`area_share`), the value of a uniform map."""
    return relevance_mass(saliency, cue_masks, level=level)


def area_share(masks) -> torch.Tensor:
    """Fraction (B,) of the image a mask covers."""
    m = as_masks(masks)
    return m.double().flatten(1).mean(1)
