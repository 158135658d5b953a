"""Substrates: what replaces a perturbed pixel. Every blur and noise of the package, once.

Two Gaussian blurs that give different images, named for how they differ:

* ``gaussian_blur_reflect`` (size, sigma): separable, reflect padding (replicate when the
  image is not larger than the radius); ``vx.intervene``'s ``blur`` mode and occlusion.
* ``rise_blur_zero_pad`` (klen, nsig): RISE's insertion substrate (Petsiuk et al., BMVC 2018,
  ``eclique/RISE`` ``gkern``): a scipy-reflect kernel (``rise_gkern``) convolved with ZERO
  padding, so the border darkens towards 0; the ``rise`` perturbation preset.

Noise: ``seeded_noise`` (``N(0, sigma^2)``, drawn on the CPU from a seeded generator, the same
on every device) and ``cached_noise`` (the same values, memoised by key). ``substrate``
dispatches ``vx.intervene``'s pixel modes; ``black_substrate`` is 0 in [0, 1] space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._recent import RecentTensors
from ..errors import InputError

__all__ = [
    "PIXEL_MODES",
    "SUBSTRATE_PARAMS",
    "black_substrate",
    "cached_noise",
    "gaussian_blur_reflect",
    "rise_blur_zero_pad",
    "rise_gkern",
    "seeded_noise",
    "substrate",
]

PIXEL_MODES: tuple[str, ...] = ("blur", "mean", "zero", "noise")
"""``vx.intervene``'s modes that replace pixels (``drop`` removes tokens instead)."""

SUBSTRATE_PARAMS: dict[str, tuple[str, ...]] = {
    "blur": ("blur_size", "blur_sigma"), "mean": (), "zero": (), "noise": ("seed", "sigma"),
}
"""The keyword parameters each pixel mode's substrate depends on (the rest do not change it)."""


def gaussian_blur_reflect(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Depthwise separable Gaussian blur of (B, C, H, W) -> (B, C, H, W), reflect padding
    (replicate when ``size // 2`` is not smaller than H or W). Kernel: ``exp(-t^2 / 2 sigma^2)``
    on ``t = -size//2 .. size//2``, normalised to sum 1 (float64, then cast to x's dtype)."""
    if size < 1 or size % 2 == 0:
        raise InputError(f"blur_size must be a positive odd number of pixels, got {size}")
    if sigma <= 0:
        raise InputError(f"blur_sigma must be > 0, got {sigma}")
    r = size // 2
    t = torch.arange(size, dtype=torch.float64) - r
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(device=x.device, dtype=x.dtype)
    C = x.shape[1]
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    y = F.pad(x, (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.reshape(1, 1, 1, size).expand(C, 1, 1, size), groups=C)
    return F.conv2d(y, k.reshape(1, 1, size, 1).expand(C, 1, size, 1), groups=C)


def rise_gkern(klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's blur kernel: ``scipy.ndimage.gaussian_filter`` of a centred delta on a klen x klen
    grid (reflect boundary, as in ``eclique/RISE`` ``gkern``), shape (klen, klen) float32."""
    from scipy.ndimage import gaussian_filter

    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return torch.from_numpy(gaussian_filter(inp, nsig).astype("float32"))


def rise_blur_zero_pad(x: torch.Tensor, klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's insertion substrate (B, C, H, W) -> (B, C, H, W): per-channel conv with
    ``rise_gkern`` and ZERO padding ``klen // 2`` (unlike ``gaussian_blur_reflect``)."""
    k = rise_gkern(klen, nsig).to(x.device, x.dtype)
    C = x.shape[1]
    return F.conv2d(x, k.expand(C, 1, klen, klen).contiguous(), padding=klen // 2, groups=C)


def black_substrate(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """0 in [0, 1] pixel space, normalised: ``(0 - mean) / std`` per channel, shaped like x.
    ``mean``, ``std``: (C, 1, 1) on x's device and dtype."""
    return ((0.0 - mean) / std).expand_as(x).clone()


def seeded_noise(shape: Sequence[int], seed: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``N(0, sigma^2)`` noise of ``shape`` drawn on the CPU from ``torch.Generator().manual_seed(seed)``,
    then moved to ``like``'s device and dtype. Drawing on the CPU makes it the same on every device."""
    g = torch.Generator().manual_seed(int(seed))
    # normal_(0, sigma) draws the same values as randn(...) * sigma, in one pass
    return torch.empty(tuple(shape)).normal_(0.0, float(sigma), generator=g).to(device=like.device, dtype=like.dtype)


# A memo of a pure function (the value is fixed by its key), bounded; not state about any
# model or image, so it is shared like functools.lru_cache.
_NOISE = RecentTensors(entries=4, max_bytes=32 * 2**20)


def cached_noise(shape: Sequence[int], seed: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``seeded_noise``, kept for the last few (shape, seed, sigma, dtype, device): ViT-CX
    draws the same noise for every image that has as many masks (the noise does not depend
    on the image). Read-only: callers must not write to the result. Draws over 32 MB are not kept.
    """
    key = (tuple(int(n) for n in shape), int(seed), float(sigma), like.dtype, like.device)
    eps = _NOISE.get(key)
    if eps is None:
        eps = seeded_noise(shape, seed, sigma, like)
        _NOISE.put(key, eps)
    return eps


def substrate(
    x: torch.Tensor, mode: str, *, seed: int = 0, sigma: float = 0.1, blur_size: int = 11, blur_sigma: float = 5.0
) -> torch.Tensor:
    """The replacement image (B, C, H, W) of ``x`` for one of ``PIXEL_MODES``: ``blur``
    (``gaussian_blur_reflect``), ``mean`` (per-image, per-channel mean), ``zero`` (0 in
    normalised space) or ``noise`` (``seeded_noise`` of x's shape)."""
    if mode == "blur":
        return gaussian_blur_reflect(x, blur_size, blur_sigma)
    if mode == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "noise":
        return seeded_noise(x.shape, seed, sigma, x)
    raise InputError(f"{mode!r} is not a pixel substrate (use one of {', '.join(PIXEL_MODES)})")
