"""timm's ``Attention`` (``layers/attention.py``): ViT, DeiT, DINOv2, CLIP, SigLIP encoders.

Scores ``(q·scale) kᵀ`` after ``q_norm`` / ``k_norm``, plus the optional additive ``attn_mask``.
"""

from __future__ import annotations

from torch import nn

from .attn_base import AttentionAdapter, forward_params


class TimmAttention(AttentionAdapter):
    family = "timm Attention"
    score_terms = "(q·scale) kᵀ (+ attn_mask)"
    takes_attn_mask = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        params = forward_params(attn)
        return "attn_mask" in params and "rope" not in params and isinstance(getattr(attn, "qkv", None), nn.Linear)
