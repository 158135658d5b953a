"""Gated positional self-attention: ConViT's first ``local_up_to_layer`` blocks (``timm.models.convit.GPSA``).

``A = (1-σ(g_h))·softmax((q·scale) kᵀ) + σ(g_h)·softmax(pos_proj(rel_indices))``, renormalised
row by row, then ``attn_drop`` and ``A @ v``: a gated mix of a content and a positional softmax
per head. The trace records the mix the model used (the output of ``attn_drop``; its rows are
probabilities) and its gradient. There is no single score tensor S with ``A = softmax(S)``, so
the methods that read pre-softmax scores (AG-CAM) are not defined, and ``chefer_lrp`` has no
relevance rule for the gated mix. These blocks run over the patch tokens only: ConViT adds the
class token before its first ``MHSA`` block (laid out on all tokens by ``attn_class.to_tokens``).
"""

from __future__ import annotations

from torch import nn

from .attn_base import AttentionAdapter


class GatedPositionalAttention(AttentionAdapter):
    family = "gated positional self-attention (ConViT GPSA)"
    score_terms = "(1-σ(g))·softmax((q·scale) kᵀ) + σ(g)·softmax(positional scores), renormalised"
    single_softmax = False
    not_single_softmax = (
        "use gated positional self-attention (ConViT's GPSA): the attention is a gated mix of a content softmax "
        "and a positional softmax, renormalised, so no single pre-softmax score tensor S gives A = softmax(S)"
    )
    lrp_rule = False

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return (
            hasattr(attn, "gating_param")
            and all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("qk", "v", "pos_proj", "proj"))
            and isinstance(getattr(attn, "attn_drop", None), nn.Module)
        )
