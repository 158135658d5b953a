"""Shared helpers: map resizing, pooling and stable ranking (no model access)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError


def as_maps(saliency, name: str = "saliency") -> torch.Tensor:
    """A (B, h, w) float tensor from a tensor/array of shape (B, h, w) or (h, w)."""
    if isinstance(saliency, np.ndarray):
        saliency = torch.from_numpy(saliency)
    if not isinstance(saliency, torch.Tensor):
        raise InputError(f"{name} must be a tensor or array of shape (B, h, w), got {type(saliency).__name__}")
    if saliency.ndim == 2:
        saliency = saliency[None]
    if saliency.ndim != 3:
        raise InputError(f"{name} must have shape (B, h, w), got {tuple(saliency.shape)}")
    if not saliency.dtype.is_floating_point:
        saliency = saliency.float()
    if not bool(torch.isfinite(saliency).all()):
        raise InputError(f"{name} has NaN or infinite values")
    return saliency


def as_masks(mask, name: str = "mask") -> torch.Tensor:
    """A (B, H, W) tensor (bool, or integer with 255 = ignore) from a tensor or array."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name} must be a tensor or array of shape (B, H, W), got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise InputError(f"{name} must have shape (B, H, W), got {tuple(mask.shape)}")
    return mask


def check_batch(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape[0] != masks.shape[0]:
        raise InputError(f"{maps.shape[0]} maps but {masks.shape[0]} masks; pass one mask per map")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` (``align_corners=False``); identity if equal."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def pool_to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean over each cell of a (B, H, W) map on a (gh, gw) grid (H, W multiples of the grid)."""
    gh, gw = int(grid[0]), int(grid[1])
    B, H, W = maps.shape
    if (H, W) == (gh, gw):
        return maps.float()
    if H % gh or W % gw:
        raise InputError(f"a {H}x{W} map does not tile a {gh}x{gw} patch grid")
    return maps.float().reshape(B, gh, H // gh, gw, W // gw).mean(dim=(2, 4))


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def descending_order(flat: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of (B, N) by decreasing value; ties keep raster order (stable)."""
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def ranks(flat: torch.Tensor) -> torch.Tensor:
    """Rank (0 = most salient) of every position of (B, N), with stable tie-breaking."""
    order = descending_order(flat)
    r = torch.empty_like(order)
    r.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return r
