"""Patch regions: patch sets as given by a caller -> (K, gh, gw) bool grids, and blending a
substrate into the acted-on patches.

A patch set is a bool (gh, gw) grid, a bool (H, W) pixel mask (a patch counts if ANY of
its pixels is set), or a flat list of row-major patch indices; ``parse_patches`` reads one
set, a stack of sets, or a list of sets (see there).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import as_tensor
from ..errors import InputError

__all__ = ["PatchesLike", "blend", "index_cells", "index_out_of_range", "parse_patches", "pixel_region", "pixels_to_grid"]

PatchesLike = torch.Tensor | np.ndarray | Sequence[Any]


def index_out_of_range(index: int, grid: tuple[int, int]) -> InputError:
    """The error for a patch index outside the ``grid``."""
    gh, gw = grid
    P = gh * gw
    return InputError(f"patch index {index} is out of range: the {gh}x{gw} grid has {P} patches (0..{P - 1}, row-major)")


def _one_set(p: Any, grid: tuple[int, int], hw: tuple[int, int], ps: tuple[int, int]) -> torch.Tensor:
    """One patch set -> (gh, gw) bool: a bool grid, a bool pixel mask or a list of indices."""
    gh, gw = grid
    t = torch.zeros(0, dtype=torch.long) if isinstance(p, (list, tuple)) and len(p) == 0 else as_tensor("patches", p)
    if t.dtype == torch.bool:
        if tuple(t.shape) == grid:
            return t.clone()
        if tuple(t.shape) == hw:
            return pixels_to_grid(t[None], grid, ps)[0]
        raise InputError(
            f"a patch grid must have shape {grid} (or a pixel mask {hw}), got {tuple(t.shape)}"
        )
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise InputError(f"patches must be a bool mask or integer patch indices, got dtype {t.dtype}")
    if t.ndim > 1:
        raise InputError(f"patch indices must be a flat list, got shape {tuple(t.shape)}")
    idx = t.reshape(-1).long()
    P = gh * gw
    bad = (idx < 0) | (idx >= P)
    if bool(bad.any()):
        raise index_out_of_range(int(idx[bad][0]), grid)
    g = torch.zeros(P, dtype=torch.bool)
    g[idx] = True
    return g.reshape(gh, gw)


def pixels_to_grid(m: torch.Tensor, grid: tuple[int, int], ps: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) bool pixel masks -> (K, gh, gw): a patch counts if ANY of its pixels is set."""
    gh, gw = grid
    ph, pw = ps
    H, W = m.shape[-2:]
    f = F.pad(m.float()[:, None], (0, gw * pw - W, 0, gh * ph - H))
    return F.max_pool2d(f, (ph, pw))[:, 0] > 0


def index_cells(patches: Any, grid: tuple[int, int]) -> list[bool] | None:
    """A flat list of Python ints (a brush's patch list) as row-major bools, checked in
    Python (no tensor operation); None for every other kind of ``patches``."""
    if not (isinstance(patches, (list, tuple)) and patches and all(type(p) is int for p in patches)):
        return None
    P = grid[0] * grid[1]
    lo, hi = min(patches), max(patches)
    if lo < 0 or hi >= P:
        raise index_out_of_range(lo if lo < 0 else hi, grid)
    cells = [False] * P
    for p in patches:
        cells[p] = True
    return cells


def parse_patches(
    patches: PatchesLike, B: int, grid: tuple[int, int], hw: tuple[int, int], ps: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> regions (K, gh, gw) bool and image index (K,) long (both on CPU), for a batch of
    ``B`` images of ``hw`` pixels on a ``grid`` of ``ps`` patches.

    Accepted: a bool (gh, gw) grid or (H, W) pixel mask (applied to every image); a bool
    (B, gh, gw) / (B, H, W) stack (one per image; for a single image, a (K, gh, gw) stack
    is K sets); a flat list of patch indices (applied to every image); or a list of patch
    sets (each any of the single-set forms) for ONE image.
    """
    cells = index_cells(patches, grid)
    if cells is not None:  # the common case (a brush's patch list): one tensor operation
        return torch.tensor([cells] * B, dtype=torch.bool).reshape(B, *grid), torch.arange(B)
    if isinstance(patches, (list, tuple)):
        if len(patches) == 0:
            raise InputError(
                "the intervention list is empty; give patch indices, a bool grid, or a list of patch sets "
                "(for 'no patches', pass a bool grid of all False)"
            )
        if all(isinstance(p, (bool, np.bool_)) for p in patches):
            raise InputError(
                f"patches is a flat list of {len(patches)} bools; give a bool grid of shape {grid} "
                "(torch.tensor(...).reshape(gh, gw)) or a list of patch indices"
            )
        if all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in patches):
            one = _one_set(list(patches), grid, hw, ps)
            return one[None].expand(B, *grid).clone(), torch.arange(B)
        if B != 1:
            raise InputError(
                f"a list of {len(patches)} patch sets is for ONE image, but the batch has {B}; "
                "pass a (B, gh, gw) bool grid for one set per image"
            )
        regions = torch.stack([_one_set(p, grid, hw, ps) for p in patches])
        return regions, torch.zeros(len(patches), dtype=torch.long)
    if not isinstance(patches, (torch.Tensor, np.ndarray)):
        raise InputError(
            f"patches must be a bool grid, a pixel mask, a list of indices or a list of patch sets; "
            f"got {type(patches).__name__}"
        )
    t = as_tensor("patches", patches)
    if t.dtype != torch.bool:
        one = _one_set(t, grid, hw, ps)
        return one[None].expand(B, *grid).clone(), torch.arange(B)
    if t.ndim == 2:
        one = _one_set(t, grid, hw, ps)
        return one[None].expand(B, *grid).clone(), torch.arange(B)
    if t.ndim == 3:
        if tuple(t.shape[1:]) == grid:
            regions = t.clone()
        elif tuple(t.shape[1:]) == hw:
            regions = pixels_to_grid(t, grid, ps)
        else:
            raise InputError(
                f"a patch grid stack must have shape (K, {grid[0]}, {grid[1]}) (or pixel masks (K, {hw[0]}, {hw[1]})), "
                f"got {tuple(t.shape)}"
            )
        K = regions.shape[0]
        if K == 0:
            raise InputError("the intervention list is empty (0 patch sets)")
        if K == B:
            return regions, torch.arange(B)
        if B == 1:
            return regions, torch.zeros(K, dtype=torch.long)
        raise InputError(f"{K} patch grids for a batch of {B} images; give one per image, or use one image")
    raise InputError(
        f"a patch grid must have shape {grid} or (B, {grid[0]}, {grid[1]}), got {tuple(t.shape)}"
    )


def pixel_region(regions: torch.Tensor, ps: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(K, gh, gw) bool -> (K, 1, H, W) float (``like``'s H, W, device, dtype), 1 on the
    pixels of the acted-on patches."""
    ph, pw = ps
    H, W = like.shape[-2:]
    r = regions.to(like.device, like.dtype)
    r = r.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)[:, :H, :W]
    return r[:, None]


def blend(
    x: torch.Tensor, regions: torch.Tensor, img_idx: torch.Tensor, S: torch.Tensor,
    grid: tuple[int, int], ps: tuple[int, int],
) -> torch.Tensor:
    """Images ``img_idx`` (K,) of ``x`` (B, C, H, W) with the patches of ``regions`` (K, gh, gw)
    taken from the substrate ``S`` (B, C, H, W): (K, C, H, W). Exact copies of either source,
    no arithmetic."""
    K, (gh, gw), (ph, pw) = len(img_idx), grid, ps
    C, H, W = x.shape[1:]
    idx = img_idx.to(x.device)
    xi, Si = (x, S) if K == x.shape[0] == 1 else (x[idx], S[idx])
    if (H, W) == (gh * ph, gw * pw):  # patch-aligned: select per patch on a 6-d view
        m = regions.to(x.device).reshape(K, 1, gh, 1, gw, 1)
        shape6 = (K, C, gh, ph, gw, pw)
        return torch.where(m, Si.reshape(shape6), xi.reshape(shape6)).reshape(K, C, H, W)
    return torch.where(pixel_region(regions, ps, x).bool(), Si, xi)
