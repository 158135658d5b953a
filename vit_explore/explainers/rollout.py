"""Attention rollout (Abnar & Zuidema, ACL 2020, arXiv:2005.00928; docs/methods.md §3)."""

from __future__ import annotations

from typing import Literal

import torch

from ..capture.attn_class import check_composable
from ..capture.session import Needs, Trace
from ..errors import InputError
from ._fusion import HeadFusion, add_identity, check_start_layer, discard_lowest, fuse_heads, row_normalize
from ._registry import register_explainer


@register_explainer(
    "rollout",
    needs=Needs(attn=True),
    class_specific=False,
    paper="Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020",
    reference="samiraabnar/attention_flow; hila-chefer/Transformer-Explainability (generate_rollout); "
    "jacobgil/vit-explain (compat='vit_explain')",
)
def rollout(
    trace: Trace,
    *,
    start_layer: int = 0,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    head_fusion_stage: Literal["before", "after"] = "before",
    compat: Literal["vit_explain"] | None = None,
) -> torch.Tensor:
    """Multiply residual-augmented, row-normalised attention across blocks.

    ``J = Â_{L-1} ... Â_start`` with ``Â_l = rownorm(fuse_h(A_l) + I)``; the map is the
    read-out row of ``J`` over patch columns (§3.2). ``head_fusion_stage="after"`` rolls out
    each head and fuses at the end (TAM's deletion/insertion baseline, §3.3).
    ``compat="vit_explain"`` reproduces jacobgil/vit-explain exactly, quirks included (§3.4):
    ``(F+I)/2`` divided column-wise by row sums (its broadcast bug), and the map divided
    by its maximum.

    Args:
        trace: uses ``trace.attn`` (L x (B, H, N, N)).
        start_layer: first block included (Chefer's evaluation uses 1).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        discard_ratio: fraction of the smallest fused entries set to zero before adding
            the identity (the CLS-to-CLS entry is kept).

    Returns:
        (B, gh, gw), unnormalised (compat: divided by the maximum, as the reference).
    """
    start = check_start_layer(start_layer, trace.num_layers)
    check_composable("rollout", trace.notes, trace.below, start)
    layout = trace.layout
    keep_first = layout.num_prefix > 0
    attns = [trace.attn_at(i) for i in range(start, trace.num_layers)]
    if compat == "vit_explain":
        result = None
        for a in attns:
            f = discard_lowest(fuse_heads(a, head_fusion), discard_ratio, keep_first)
            a_hat = add_identity(f) / 2
            a_hat = a_hat / a_hat.sum(dim=-1)[:, None, :]  # the reference's broadcast, kept on purpose
            result = a_hat if result is None else a_hat @ result
        assert result is not None  # a ViT has at least one block
        m = layout.read(result)
        return m / m.flatten(1).max(dim=1).values[:, None, None]
    if compat is not None:
        raise InputError(f"compat must be None or 'vit_explain', got {compat!r}")
    joint = joint_attention(attns, head_fusion, discard_ratio, keep_first, head_fusion_stage)
    return layout.read(joint)


def joint_attention(
    attns: list[torch.Tensor],
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    keep_first: bool = True,
    head_fusion_stage: Literal["before", "after"] = "before",
) -> torch.Tensor:
    """Rolled-out attention ``J`` (B, N, N) of a list of (B, H, N, N) blocks, first block first.

    Its rows are stochastic: each factor ``rownorm(Ā + I)`` is.
    """
    if head_fusion_stage not in ("before", "after"):
        raise InputError(f"head_fusion_stage must be 'before' or 'after', got {head_fusion_stage!r}")
    joint = None
    for a in attns:
        fused = fuse_heads(a, head_fusion) if head_fusion_stage == "before" else a
        a_hat = row_normalize(add_identity(discard_lowest(fused, discard_ratio, keep_first)))
        joint = a_hat if joint is None else a_hat @ joint
    assert joint is not None  # a ViT has at least one block
    return joint if head_fusion_stage == "before" else fuse_heads(joint, head_fusion)
