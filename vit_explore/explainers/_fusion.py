"""Small tensor helpers shared by the attention-propagation explainers."""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import InputError

HeadFusion = Literal["mean", "max", "min"]


def fuse_heads(a: torch.Tensor, how: HeadFusion = "mean") -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N) by mean, max or min over heads."""
    if how == "mean":
        return a.mean(dim=1)
    if how == "max":
        return a.max(dim=1).values
    if how == "min":
        return a.min(dim=1).values
    raise InputError(f"head_fusion must be 'mean', 'max' or 'min', got {how!r}")


def add_identity(a: torch.Tensor) -> torch.Tensor:
    """``a + I`` over the last two axes."""
    return a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)


def row_normalize(a: torch.Tensor) -> torch.Tensor:
    """Divide each row by its sum (keepdim: the correct broadcast)."""
    return a / a.sum(dim=-1, keepdim=True)


def check_start_layer(start_layer: int, num_layers: int) -> int:
    """Validate ``start_layer`` (negative counts from the end) and return it as 0..L-1."""
    if isinstance(start_layer, bool) or not isinstance(start_layer, int):
        raise InputError(f"start_layer must be an int, got {start_layer!r}")
    if not -num_layers <= start_layer < num_layers:
        raise InputError(f"start_layer {start_layer} is out of range: the model has {num_layers} blocks")
    return start_layer % num_layers


def discard_lowest(a: torch.Tensor, ratio: float, keep_first: bool) -> torch.Tensor:
    """Zero the ``int(N*N*ratio)`` smallest entries of each (N, N) matrix of a (..., N, N) batch.

    The entry (0, 0) is kept when ``keep_first`` (the CLS-to-CLS attention), as in
    vit-explain, which drops index 0 from the selected set.
    """
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"discard_ratio must be in [0, 1), got {ratio}")
    n2 = a.shape[-1] * a.shape[-2]
    k = int(n2 * ratio)
    if k == 0:
        return a
    flat = a.reshape(-1, n2)
    idx = flat.topk(k, dim=-1, largest=False).indices
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    if keep_first:
        drop[:, 0] = False
    return flat.masked_fill(drop, 0.0).reshape(a.shape)
