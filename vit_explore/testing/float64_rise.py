"""Float64 restatement of RISE (Petsiuk, Das & Saenko, BMVC 2018, arXiv:1806.07421; docs/methods.md),
for tests and ``bench/family_table.py``.

The masks are generated again here, independently of ``vit_explore.explainers.rise``, as the
reference ``eclique/RISE`` (``explanations.py``) generates them after ``np.random.seed(seed)``:
N binary ``s x s`` grids ``rand(N, s, s) < p1``, then per mask a row and a column shift
``randint(0, cell)``, ``cell = ceil(size / s)``; each grid upsampled to ``(s + 1) * cell`` with
skimage's ``resize(order=1, mode='reflect', anti_aliasing=False)``, which is
``scipy.ndimage.zoom(order=1, mode='mirror', grid_mode=True)`` (called here; skimage is not a
dependency), and cropped at the shift. The saliency ``Σ_i p_c(x ⊙ M_i) M_i / (N p1)`` with the
float64 model's softmax probabilities; the map is its mean within each patch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .float64_model import model64, patch_size64


def rise_masks64(n: int, s: int, p1: float, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """The reference's N masks (N, H, W), float64."""
    rs = np.random.RandomState(seed)
    grid = (rs.rand(n, s, s) < p1).astype("float32")
    H, W = size
    cell = (math.ceil(H / s), math.ceil(W / s))
    up = ((s + 1) * cell[0], (s + 1) * cell[1])
    masks = np.empty((n, H, W))
    for i in range(n):
        dx, dy = rs.randint(0, cell[0]), rs.randint(0, cell[1])
        big = ndimage.zoom(grid[i].astype(np.float64), (up[0] / s, up[1] / s), order=1, mode="mirror",
                           grid_mode=True)
        masks[i] = np.clip(big, 0, 1)[dx : dx + H, dy : dy + W]
    return torch.from_numpy(masks)


def rise_pixels64(model: nn.Module, x: torch.Tensor, target: torch.Tensor, n_masks: int, s: int = 8,
                  p1: float = 0.1, seed: int = 0) -> torch.Tensor:
    """RISE's pixel saliency (B, H, W) of the target class in float64 (any classifier)."""
    m64 = model64(model)
    B, _, H, W = x.shape
    masks = rise_masks64(n_masks, s, p1, (H, W), seed)
    out = []
    for b in range(B):
        with torch.no_grad():
            p = m64(x[b : b + 1].double() * masks[:, None]).softmax(-1)[:, int(target[b])]  # (N,)
        out.append((p[:, None, None] * masks).sum(0) / (n_masks * p1))
    return torch.stack(out)


def rise64(model: nn.Module, x: torch.Tensor, target: torch.Tensor, n_masks: int, s: int = 8, p1: float = 0.1,
           seed: int = 0) -> torch.Tensor:
    """RISE (B, gh, gw) in float64: the pixel saliency of the target class averaged within each patch."""
    sal = rise_pixels64(model, x, target, n_masks, s, p1, seed)
    B, H, W = sal.shape
    ph, pw = patch_size64(model)
    gh, gw = H // ph, W // pw
    return sal[:, : gh * ph, : gw * pw].reshape(B, gh, ph, gw, pw).mean(dim=(2, 4))
