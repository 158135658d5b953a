"""Talking-heads attention: CaiT's patch blocks (``timm.models.cait.TalkingHeadAttn``).

Scores ``proj_l((q·scale) kᵀ)``: a Linear over the head axis mixes the heads **before** the
softmax; after it ``proj_w`` (a Linear with bias over the head axis) mixes them again, and that
mixture, at the output of ``attn_drop``, is what multiplies v. The trace records it (the token
mixing the model used) as the attention, and the tensor the softmax received as the scores:
``proj_w(softmax(scores)) = attn``, so the rows of ``attn`` are not probabilities. The module is
always on its explicit path (it has no ``fused_attn``). The patch blocks run over the patch tokens
only: the class token is added before the class-attention blocks (``attn_class.py``).
"""

from __future__ import annotations

from torch import nn

from .attn_base import AttentionAdapter


class TalkingHeadsAttention(AttentionAdapter):
    family = "talking heads (CaiT)"
    score_terms = "proj_l((q·scale) kᵀ), heads mixed before the softmax; proj_w mixes them after it"
    probabilities = False
    lrp_rule = False
    not_probabilities = (
        "use talking-heads attention (CaiT's TalkingHeadAttn): proj_w mixes the heads after the softmax, so "
        "the attention that multiplies v is not a row-stochastic matrix and its heads are not the softmax's heads"
    )

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        h = getattr(attn, "num_heads", None)
        return (
            isinstance(getattr(attn, "qkv", None), nn.Linear)
            and all(isinstance(getattr(attn, n, None), nn.Linear) and getattr(attn, n).in_features == h
                    for n in ("proj_l", "proj_w"))
            and isinstance(getattr(attn, "attn_drop", None), nn.Module)
        )
