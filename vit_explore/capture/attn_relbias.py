"""Attention with a relative position bias added to the scores: BEiT / BEiT v2 (``beit.Attention``,
per-block ``relative_position_bias_table`` or the model's shared one) and ``vit_relpos_*`` /
``vit_srelpos_*`` (``RelPosAttention``, ``rel_pos.get_bias()`` or a shared bias).

Scores ``(q·scale) kᵀ + B`` with B (H, N, N) covering the prefix rows and columns too. No
``attn_mask`` keyword. BEiT with a qkv bias calls ``F.linear`` (its ``qkv`` module is not called).
"""

from __future__ import annotations

from torch import nn

from .attn_base import AttentionAdapter, forward_params


class RelativeBiasAttention(AttentionAdapter):
    family = "relative position bias (BEiT / relpos)"
    score_terms = "(q·scale) kᵀ + relative position bias"
    takes_attn_mask = False
    score_bias = True
    keeps_positions = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        params = forward_params(attn)
        return "shared_rel_pos_bias" in params or "shared_rel_pos" in params
