"""Rotary attention of ``timm.models.eva`` / ``timm.layers``: ``EvaAttention`` (EVA, EVA-02,
DINOv3) and ``AttentionRope`` (``vit_*_rope_*``).

The model passes the rotary tensor as ``forward(x, rope=...)``; q and k are rotated after
``q_norm`` / ``k_norm`` on the patch tokens only (the prefix tokens skip it). Scores
``(q_rot·scale) k_rotᵀ`` plus the optional ``attn_mask``. With a qkv bias, ``EvaAttention``
calls ``F.linear`` on ``qkv.weight`` with ``cat(q_bias, 0, v_bias)``: its ``qkv`` module is not
called (``qkv_called`` is False), so nothing may rely on a hook there.
"""

from __future__ import annotations

from torch import nn

from .attn_base import AttentionAdapter, forward_params


class RotaryAttention(AttentionAdapter):
    family = "rotary (EVA / RoPE)"
    score_terms = "(rope(q)·scale) rope(k)ᵀ (+ attn_mask)"
    takes_attn_mask = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return "rope" in forward_params(attn)
