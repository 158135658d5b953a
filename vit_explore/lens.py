"""Reading the residual stream: the logit lens and token similarity.

* ``logit_lens``: the model's own final norm and classifier applied to the stream after
  every block (nostalgebraist 2020, "interpreting GPT: the logit lens"; for ViTs as in
  ViT Prisma, Joseph et al. 2023, and ViT-Explainer 2026).
* ``token_similarity``: cosine similarity of patch tokens at one block (EL-VIT, Zhou et al.,
  IEEE VIS 2023).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from .capture.adapters import ViTInfo, inspect_vit, layout_for
from .capture.hf import as_vit
from .capture.layout import TokenLayout
from .capture.residual import readout_logits, record_stream, token_logits
from .errors import InputError
from .inputs import check_tensor

__all__ = ["LogitLens", "check_layer", "logit_lens", "patch_index", "token_similarity"]


def check_layer(layer: object, num_layers: int, what: str = "layer") -> int:
    """``layer`` as an index ``0..L-1`` (negative counts from the end), or ``InputError``."""
    if isinstance(layer, bool) or not isinstance(layer, (numbers.Integral, np.integer)):
        raise InputError(f"{what} must be an int block index, got {type(layer).__name__} {layer!r}")
    if not -num_layers <= int(layer) < num_layers:
        raise InputError(f"{what} {layer} is out of range: the model has {num_layers} blocks (0..{num_layers - 1})")
    return int(layer) % num_layers


def patch_index(query: object, layout: TokenLayout) -> int:
    """A patch given as a row-major index or a ``(row, col)`` cell, checked against the grid."""
    gh, gw = layout.grid
    if isinstance(query, (tuple, list)) and len(query) == 2:
        r, c = query
        if not all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool) for v in (r, c)):
            raise InputError(f"a grid cell is (row, col) of ints, got {query!r}")
        if not (0 <= int(r) < gh and 0 <= int(c) < gw):
            raise InputError(f"grid cell ({r}, {c}) is outside the {gh}x{gw} patch grid")
        return int(r) * gw + int(c)
    if isinstance(query, bool) or not isinstance(query, (numbers.Integral, np.integer)):
        raise InputError(f"a patch is a row-major index or a (row, col) cell, got {query!r}")
    if not 0 <= int(query) < gh * gw:
        raise InputError(f"patch {query} is outside the {gh}x{gw} patch grid (0..{gh * gw - 1})")
    return int(query)


@dataclass(frozen=True)
class LogitLens:
    """The logit lens of a batch.

    Attributes:
        readout: (B, L, C) logits read out after block ``l`` exactly as the model reads out
            its last block (CLS token, the mean of CLS and distillation heads, or the
            global average pool and ``fc_norm``). ``readout[:, -1]`` equals ``logits``.
        logits: (B, C), the model's output.
        layout: token layout of the input.
        patches: (B, L, gh, gw, C) every patch token read out on its own (``tokens="all"``),
            else None.
    """

    readout: torch.Tensor
    logits: torch.Tensor
    layout: TokenLayout
    patches: torch.Tensor | None = None

    @property
    def probs(self) -> torch.Tensor:
        """(B, L, C) softmax of ``readout``."""
        return self.readout.softmax(-1)


def _prepare(model: nn.Module, x: torch.Tensor) -> tuple[ViTInfo, torch.Tensor, TokenLayout]:
    info = inspect_vit(model)
    x = check_tensor(info, x, model)
    return info, x, layout_for(info, x.shape[-2], x.shape[-1])


def logit_lens(model: nn.Module, x: torch.Tensor, tokens: Literal["readout", "all"] = "readout") -> LogitLens:
    """Apply the model's own final norm and head to the residual stream after every block.

    Args:
        model: a timm ViT (CLS, distilled, registers, global average pool).
        x: (B, 3, H, W) preprocessed images.
        tokens: ``"readout"`` (the read-out token(s), pooled as the model pools them) or
            ``"all"`` (also every patch token on its own: ``.patches``).

    Returns:
        ``LogitLens``; one forward pass plus L read-outs, no gradient.
    """
    if tokens not in ("readout", "all"):
        raise InputError(f"tokens must be 'readout' or 'all', got {tokens!r}")
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    info, x, layout = _prepare(model, x)
    st = record_stream(model, x, info=info)
    B, L = x.shape[0], info.num_layers
    outs = torch.stack(st.resid[1:], dim=1)  # (B, L, N, D)
    flat = outs.reshape(B * L, *outs.shape[2:])
    readout = readout_logits(model, flat).reshape(B, L, -1)
    patches = None
    if tokens == "all":
        T = layout.num_prefix
        per = token_logits(model, flat[:, T:], info)  # (B*L, P, C)
        patches = per.reshape(B, L, *layout.grid, per.shape[-1])
    return LogitLens(readout=readout, logits=st.logits, layout=layout, patches=patches)


def token_similarity(
    model: nn.Module,
    x: torch.Tensor,
    layer: int,
    query: int | Sequence[int] | None = None,
    *,
    matrix: bool = False,
) -> torch.Tensor:
    """Cosine similarity between tokens at the output of block ``layer``.

    Args:
        query: the patch (row-major index or ``(row, col)``) whose similarity to every patch is
            returned as a (B, gh, gw) map.
        matrix: instead return the whole (B, N, N) matrix over all N tokens (prefix tokens
            first, then the patches row-major; ``query`` is then ignored).
    """
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    info, x, layout = _prepare(model, x)
    li = check_layer(layer, info.num_layers)
    if not matrix:
        if query is None:
            raise InputError("give query= (a patch index or (row, col)), or matrix=True for the whole matrix")
        q = patch_index(query, layout)
    st = record_stream(model, x, info=info)
    h = torch.nn.functional.normalize(st.resid[li + 1], dim=-1)  # (B, N, D)
    if matrix:
        return h @ h.transpose(-1, -2)
    T = layout.num_prefix
    sim = torch.einsum("bd,bnd->bn", h[:, T + q], h[:, T:])
    return sim.reshape(x.shape[0], *layout.grid)
