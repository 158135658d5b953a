"""Rotary attention of ``timm.models.eva`` / ``timm.layers``: ``EvaAttention`` (EVA, EVA-02,
DINOv3) and ``AttentionRope`` (``vit_*_rope_*``).

The model passes the rotary tensor as ``forward(x, rope=...)``; q and k are rotated after
``q_norm`` / ``k_norm`` on the patch tokens only (the prefix tokens skip it). Scores
``(q_rot·scale) k_rotᵀ`` plus the optional ``attn_mask``. With a qkv bias, ``EvaAttention``
calls ``F.linear`` on ``qkv.weight`` with ``cat(q_bias, 0, v_bias)``: its ``qkv`` module is not
called (``qkv_called`` is False), so nothing may rely on a hook there.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .attn_base import AttentionAdapter, forward_params


class RotaryAttention(AttentionAdapter):
    family = "rotary (EVA / RoPE)"
    score_terms = "(rope(q)·scale) rope(k)ᵀ (+ attn_mask)"
    takes_attn_mask = True
    keeps_positions = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return "rope" in forward_params(attn)

    @staticmethod
    def rope_map(attn: nn.Module, rope: torch.Tensor | None) -> torch.Tensor | None:
        """(..., P, D, D) with ``apply_rot_embed_cat(q)[p] = q[p] @ M[p]``: the function the module's
        forward calls (looked up in its own module), applied to the D basis vectors."""
        if rope is None:
            return None
        fn = getattr(sys.modules[type(attn).__module__], "apply_rot_embed_cat", None)
        if fn is None:
            from timm.layers import apply_rot_embed_cat as fn
        D = rope.shape[-1] // 2
        basis = torch.eye(D, dtype=rope.dtype, device=rope.device).reshape(D, *([1] * (rope.ndim - 1)), D)
        out = fn(basis, rope, half=bool(getattr(attn, "rotate_half", False)))  # (D_in, ..., P, D_out)
        return out.movedim(0, -2)
