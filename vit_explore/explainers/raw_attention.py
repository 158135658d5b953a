"""Raw attention of one block (the baseline of Chefer et al. CVPR'21 and TAM; docs/methods.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch

from ..capture.layout import TokenLayout
from ..capture.session import Needs, Trace
from ..errors import InputError
from ._registry import register_explainer

QueryLike = int | tuple[int, int] | None


def _needs(p: Mapping[str, Any]) -> Needs:
    return Needs(attn=True, layers=(p["layer"],))


def query_index(layout: TokenLayout, query: QueryLike) -> int | None:
    """Row-major patch index from an int or a ``(row, col)`` grid cell."""
    if query is None:
        return None
    if isinstance(query, tuple):
        return layout.patch_index(*query)
    if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < layout.num_patches:
        raise InputError(f"query must be a patch index in 0..{layout.num_patches - 1} or a (row, col) cell, got {query!r}")
    return query


def _select_head(a: torch.Tensor, head: int | None) -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N): one head, or the mean of heads."""
    if head is None:
        return a.mean(dim=1)
    num_heads = a.shape[1]
    if isinstance(head, bool) or not isinstance(head, int) or not -num_heads <= head < num_heads:
        raise InputError(f"head {head!r} is out of range: the block has {num_heads} heads (0..{num_heads - 1})")
    return a[:, head]


@register_explainer(
    "raw_attention",
    needs=_needs,
    class_specific=False,
    paper="Chefer et al., CVPR 2021 (baseline); Abnar & Zuidema, ACL 2020",
    reference="hila-chefer/Transformer-Explainability (method='last_layer_attn')",
)
def raw_attention(trace: Trace, *, layer: int = -1, head: int | None = None, query: QueryLike = None) -> torch.Tensor:
    """Attention of one block as a map.

    Args:
        trace: uses ``trace.attn[layer]`` (B, H, N, N).
        layer: block (default the last).
        head: one head, or None for the mean of heads.
        query: None for the read-out row (CLS; distilled: mean of the two prefix rows;
            average-pool models: mean of the patch rows), or a patch (index or (row, col))
            whose attention row to show.

    Returns:
        (B, gh, gw) attention to each patch.
    """
    a = _select_head(trace.attn_at(layer), head)
    q = query_index(trace.layout, query)
    return trace.layout.read(a) if q is None else trace.layout.query_row(a, q)


def attention_stack(trace: Trace, query: QueryLike = None) -> torch.Tensor:
    """Every block's and head's map from one pass: (B, L, H, gh, gw).

    Args:
        trace: a trace with the attention of every block.
        query: as in ``raw_attention``.
    """
    if trace.attn is None or any(a is None for a in trace.attn):
        raise InputError("attention_stack needs the attention of every block; capture with Needs(attn=True)")
    a = torch.stack(cast(tuple[torch.Tensor, ...], trace.attn), dim=1)  # (B, L, H, N, N); none is None (above)
    q = query_index(trace.layout, query)
    return trace.layout.read(a) if q is None else trace.layout.query_row(a, q)
