"""Images per forward pass for the explainers that forward many perturbed copies of their input
(occlusion, ViT-CX, RISE) when the caller names no batch size (issue 17).

On the CPU a pass whose activations outgrow the cache runs slower per image: ViT-B/16 at 224,
occlusion took 24.8 s an image in passes of 8 against 28.8 s in passes of 64; ViT-S/16 forwards
33 ms an image in passes of 8 to 16 against 44 ms in passes of 50. The MLP's hidden activations
(tokens x 4 x width per image) are a pass's largest tensor, so a pass takes as many images as
keep them within 16 MiB. On an accelerator, or for a model whose tokens are not known here (a
CNN, a hierarchical model), the explainer's own default applies. The pass size changes nothing
but float rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import InputError

if TYPE_CHECKING:
    from .classifier import ModelInfo

CPU_BUDGET_BYTES = 16 << 20


def check_batch_size(batch_size: object) -> None:
    """A caller's ``batch_size``: a positive int, or None for the size chosen here."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or None (chosen for the device), got {batch_size!r}")


def cpu_batch_size(tokens: int, width: int | None, itemsize: int, device: torch.device, default: int) -> int:
    """Images per pass: on the CPU the most whose ``tokens x 4 x width`` activations of ``itemsize``
    bytes fit in ``CPU_BUDGET_BYTES``, between 1 and ``default``; ``default`` elsewhere or when the
    width is unknown."""
    if device.type != "cpu" or width is None or tokens < 1 or width < 1:
        return default
    return max(1, min(default, CPU_BUDGET_BYTES // (tokens * 4 * width * itemsize)))


def token_width(attns: tuple[nn.Module, ...]) -> int | None:
    """A ViT's token width: the input width of the first Linear of its last attention module
    (``qkv``, ``q_proj``, ``query``); None without attention modules."""
    if not attns:
        return None
    for mod in attns[-1].modules():
        if isinstance(mod, nn.Linear):
            return mod.in_features
    return None


def model_batch_size(info: ModelInfo, grid: tuple[int, int], x: torch.Tensor, default: int) -> int:
    """``cpu_batch_size`` for a model described by ``info`` (a ``ViTInfo``, or a ``ClassifierInfo``,
    which has no attention modules and so keeps ``default``) on inputs like ``x`` whose patch grid
    is ``grid``: its prefix tokens plus the grid's cells, at the width of ``token_width``."""
    tokens = info.num_prefix + grid[0] * grid[1]
    return cpu_batch_size(tokens, token_width(info.attns), x.element_size(), x.device, default)
