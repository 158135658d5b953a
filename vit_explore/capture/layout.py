"""Token bookkeeping: prefix tokens, patch grid and read-out rows (docs/methods.md §1.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Readout = Literal["cls", "cls_dist", "avg", "avg_all", "cls_avg", "map"]


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one captured pass sit.

    Attributes:
        num_prefix: ``T``, tokens before the patches (CLS, distillation, registers).
        num_reg: register tokens among the prefix (never read out, never a patch).
        grid: ``(gh, gw)`` patch grid of this input.
        patch_size: ``(ph, pw)`` pixels per patch.
        input_size: ``(H, W)`` of the input tensor.
        readout: which query rows feed the classifier: ``"cls"`` (row 0),
            ``"cls_dist"`` (mean of rows 0 and 1, DeiT distilled), ``"avg"`` (mean of
            the patch rows, global-average-pool models), ``"avg_all"`` (mean of all rows) or
            ``"cls_avg"`` (``0.5 * row 0 + 0.5 * mean of the patch rows``: a classifier on
            ``concat(CLS, mean of patches)``, Hugging Face DINOv2) or ``"map"`` (an attention-pool
            head: the rows weighted by ``readout_query``).
        readout_query: ``"map"`` only: (B, N) weights of the query rows, the pool's latent query
            attention over the tokens, head mean (``capture/attn_pool.py``, docs/methods.md §1.3);
            set by ``capture`` when it records attention. Not compared.
    """

    num_prefix: int
    num_reg: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    input_size: tuple[int, int]
    readout: Readout
    readout_query: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def _query(self, m: torch.Tensor | None = None) -> torch.Tensor:
        """``readout_query`` (B, N), shaped to weight the rows of ``m`` (B, ..., N, N)."""
        p = self.readout_query
        if p is None:
            from ..errors import CaptureError

            raise CaptureError(
                "the read-out row of an attention-pool (MAP) head is the pool's attention over the tokens, "
                "which this pass did not record; capture with Needs(attn=True)"
            )
        if m is None:
            return p
        p = p.to(dtype=m.dtype, device=m.device)
        return p.reshape(p.shape[0], *([1] * (m.ndim - 3)), p.shape[-1], 1)

    @property
    def num_patches(self) -> int:
        """``P = gh * gw``."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """``N = T + P``."""
        return self.num_prefix + self.num_patches

    def readout_weights(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Weights (N,) over query rows whose weighted sum is the read-out row ((B, N) for ``"map"``)."""
        if self.readout == "map":
            return self._query().to(dtype=dtype, device=device)
        w = torch.zeros(self.num_tokens, dtype=dtype, device=device)
        if self.readout == "cls":
            w[0] = 1.0
        elif self.readout == "cls_dist":
            w[:2] = 0.5
        elif self.readout == "avg":
            w[self.num_prefix :] = 1.0 / self.num_patches
        elif self.readout == "cls_avg":
            w[0] = 0.5
            w[self.num_prefix :] = 0.5 / self.num_patches
        else:
            w[:] = 1.0 / self.num_tokens
        return w

    def readout_row(self, m: torch.Tensor) -> torch.Tensor:
        """Read-out row of token-to-token matrices ``(..., N, N) -> (..., N)``."""
        if self.readout == "cls":
            return m[..., 0, :]
        if self.readout == "cls_dist":
            return 0.5 * (m[..., 0, :] + m[..., 1, :])
        if self.readout == "avg":
            return m[..., self.num_prefix :, :].mean(dim=-2)
        if self.readout == "cls_avg":
            return 0.5 * (m[..., 0, :] + m[..., self.num_prefix :, :].mean(dim=-2))
        if self.readout == "map":
            return (self._query(m) * m).sum(dim=-2)
        return m.mean(dim=-2)

    def patch_columns(self, v: torch.Tensor) -> torch.Tensor:
        """Patch entries of token vectors, on the grid: ``(..., N) -> (..., gh, gw)``."""
        if v.shape[-1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens in the last axis, got {v.shape[-1]}")
        return v[..., self.num_prefix :].reshape(*v.shape[:-1], *self.grid)

    def read(self, m: torch.Tensor) -> torch.Tensor:
        """Read-out row of ``(..., N, N)`` matrices, patch columns, on the grid."""
        return self.patch_columns(self.readout_row(m))

    def query_row(self, m: torch.Tensor, patch: int) -> torch.Tensor:
        """Row of patch ``patch`` (row-major index) of ``(..., N, N)``, patch columns, on the grid."""
        if not 0 <= patch < self.num_patches:
            raise ValueError(f"patch index {patch} is outside the {self.grid[0]}x{self.grid[1]} grid")
        return self.patch_columns(m[..., self.num_prefix + patch, :])

    def pool_pixels(self, pixel_map: torch.Tensor, reduce: Literal["sum", "mean"] = "sum") -> torch.Tensor:
        """Aggregate a (B, H, W) pixel map within each patch: (B, gh, gw).

        ``"sum"`` adds the pixels of each patch; ``"mean"`` averages them. Pixels beyond the
        grid (which the patch embedding ignores) are dropped; a padded last row/column of
        patches (``dynamic_img_pad``) uses only its real pixels.
        """
        (gh, gw), (ph, pw) = self.grid, self.patch_size
        if reduce == "mean" and pixel_map.shape[1:] == (gh * ph, gw * pw):  # patch-aligned: one pooling
            return torch.nn.functional.avg_pool2d(pixel_map[:, None], (ph, pw))[:, 0]
        m = pixel_map[:, : gh * ph, : gw * pw]
        pad = (0, gw * pw - m.shape[2], 0, gh * ph - m.shape[1])
        total = torch.nn.functional.pad(m, pad).reshape(m.shape[0], gh, ph, gw, pw).sum(dim=(2, 4))
        if reduce == "sum":
            return total
        if reduce == "mean":
            ones = torch.nn.functional.pad(torch.ones_like(m[:1]), pad)
            count = ones.reshape(1, gh, ph, gw, pw).sum(dim=(2, 4))
            return total / count
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")

    def patch_index(self, row: int, col: int) -> int:
        """Row-major patch index of grid cell ``(row, col)``."""
        gh, gw = self.grid
        if not (0 <= row < gh and 0 <= col < gw):
            raise ValueError(f"grid cell ({row}, {col}) is outside the {gh}x{gw} grid")
        return row * gw + col
