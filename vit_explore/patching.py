"""Activation patching: run one image with some activations taken from another.

Meng et al. 2022 (causal tracing, "Locating and Editing Factual Associations in GPT");
for ViTs as in ViT Prisma (Joseph et al. 2023): copy the residual stream at the input of a
block (or one head's output) at chosen patch positions from a source image into the pass of
a target image, and read the new prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .capture.ablation import forward_logits
from .capture.adapters import inspect_vit, layout_for
from .capture.hf import as_vit
from .capture.layout import TokenLayout
from .capture.residual import record_stream, replace_head, replace_tokens
from .errors import InputError
from .inputs import check_tensor
from .lens import check_layer

__all__ = ["patch_activations"]

PositionsLike = int | Sequence[int] | torch.Tensor | np.ndarray | None


def _token_indices(positions: PositionsLike, layout: TokenLayout) -> torch.Tensor | None:
    """Patch positions -> token indices (the prefix tokens come first); None stays None (every token)."""
    if positions is None:
        return None
    gh, gw = layout.grid
    P = layout.num_patches
    arr = np.asarray(positions.detach().cpu() if isinstance(positions, torch.Tensor) else positions)
    if arr.dtype == bool:
        if arr.shape != (gh, gw):
            raise InputError(f"a boolean position mask must be the {gh}x{gw} patch grid, got shape {arr.shape}")
        idx = np.flatnonzero(arr.reshape(-1))
    else:
        if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InputError(
                f"positions must be patch indices (ints), a ({gh}, {gw}) bool mask or None, got {positions!r}"
            )
        idx = arr.reshape(-1).astype(np.int64)
        bad = idx[(idx < 0) | (idx >= P)]
        if bad.size:
            raise InputError(f"position {int(bad[0])} is outside the {gh}x{gw} patch grid (0..{P - 1})")
    return torch.as_tensor(np.unique(idx) + layout.num_prefix, dtype=torch.long)


def _parse_site(site: str, num_heads: int) -> int | None:
    if site == "residual":
        return None
    if isinstance(site, str) and site.startswith("head:"):
        try:
            h = int(site[5:])
        except ValueError:
            h = None
        if h is None or not -num_heads <= h < num_heads:
            raise InputError(f"site {site!r}: the block has {num_heads} heads; use 'head:0' .. 'head:{num_heads - 1}'")
        return h % num_heads
    raise InputError(f"site must be 'residual' or 'head:<h>', got {site!r}")


def patch_activations(
    model: nn.Module,
    source: torch.Tensor,
    target_image: torch.Tensor,
    layer: int,
    positions: PositionsLike = None,
    site: str = "residual",
) -> torch.Tensor:
    """Probabilities (B, C) of ``target_image`` run with activations copied from ``source``.

    Args:
        model: a timm ViT.
        source: (1 or B, 3, H, W) images whose activations are copied (one is used for every target).
        target_image: (B, 3, H, W) images that are run; same size as ``source``.
        layer: the block (negative counts from the end).
        positions: patch indices (row-major), a (gh, gw) bool mask, or None for every token
            (the prefix tokens too).
        site: ``"residual"`` (the input of block ``layer``) or ``"head:h"`` (head ``h``'s
            output in block ``layer``, before ``attn.proj``).

    At block 0 with every position, the result is the source's prediction (the prefix tokens
    enter block 0 the same for every image, unless ``positions`` leaves patches out).
    """
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    info = inspect_vit(model)
    src = check_tensor(info, source, model)
    tgt = check_tensor(info, target_image, model)
    if src.shape[-2:] != tgt.shape[-2:]:
        raise InputError(
            f"source is {src.shape[-2]}x{src.shape[-1]} but target_image is {tgt.shape[-2]}x{tgt.shape[-1]}; "
            "the images must have the same size so their tokens line up"
        )
    if src.shape[0] not in (1, tgt.shape[0]):
        raise InputError(f"source has {src.shape[0]} images for {tgt.shape[0]} targets; give 1 or {tgt.shape[0]}")
    li = check_layer(layer, info.num_layers)
    head = _parse_site(site, int(info.attns[li].num_heads))
    layout = layout_for(info, tgt.shape[-2], tgt.shape[-1])
    tokens = _token_indices(positions, layout)
    st = record_stream(model, src, heads=head is not None, info=info)
    if head is None:
        ctx = replace_tokens(model, li, st.resid[li], tokens)
    else:
        ctx = replace_head(model, li, head, st.heads[li], tokens)
    with ctx:
        logits = forward_logits(model, tgt)
    return logits.softmax(-1)
