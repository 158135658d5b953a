"""Trivial "explainers" every table reports next to the real ones (docs/evaluation.md §6.3):
a random map, a centre Gaussian and a Sobel edge map. They go through the same metric code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...errors import InputError

BASELINES = ("random", "centre", "edge")


def random_map(indices: Sequence[int] | int, grid: tuple[int, int], *, seed: int = 0, device=None) -> torch.Tensor:
    """Uniform random maps (B, gh, gw); image ``i``'s map depends only on (seed, i), so a
    sharded run draws the same maps as a single process."""
    idx = range(indices) if isinstance(indices, int) else indices
    out = []
    for i in idx:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i))
        out.append(torch.rand(grid, generator=g))
    return torch.stack(out).to(device) if out else torch.empty(0, *grid, device=device)


def centre_gaussian(batch: int, size: tuple[int, int], *, sigma: float = 0.25, device=None) -> torch.Tensor:
    """Isotropic Gaussian centred on the image, (B, h, w); ``sigma`` as a fraction of the
    shorter side. Its maximum is the centre pixel (H // 2, W // 2) for odd and even sizes
    (the centre is placed there so the pointing game's centre-point baseline is this map)."""
    h, w = size
    if sigma <= 0:
        raise InputError(f"sigma must be positive, got {sigma}")
    s = sigma * min(h, w)
    yy = torch.arange(h, dtype=torch.float64)[:, None] - h // 2
    xx = torch.arange(w, dtype=torch.float64)[None, :] - w // 2
    g = torch.exp(-(yy**2 + xx**2) / (2 * s * s)).float()
    return g.expand(batch, h, w).clone().to(device)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the channel-mean image (B, H, W), replicate padding.

    A model-free map: it shows how much of a score comes from image structure alone.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    g = x.float().mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    k = torch.stack([kx, kx.t()])[:, None]
    d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    return d.pow(2).sum(1).sqrt()


def baseline_maps(
    name: str, x: torch.Tensor, indices: Sequence[int], grid: tuple[int, int], *, seed: int = 0
) -> torch.Tensor:
    """The named baseline's maps for a batch: ``random`` on the patch grid (like the
    explainers), ``centre`` and ``edge`` at pixel resolution."""
    if name == "random":
        return random_map(indices, grid, seed=seed, device=x.device)
    if name == "centre":
        return centre_gaussian(x.shape[0], (x.shape[-2], x.shape[-1]), device=x.device)
    if name == "edge":
        return edge_map(x)
    raise InputError(f"unknown baseline {name!r}; use one of {list(BASELINES)}")
