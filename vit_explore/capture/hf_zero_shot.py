"""The image side of ``vx.zero_shot`` / ``vx.image_features`` over a ``transformers`` ``CLIPModel``
(``vx.image_features`` also over a ``CLIPVisionModelWithProjection``),
for the attention methods (read by ``hf_parts.parts_of`` and ``hf.HFViT``).

CLIP's vision tower is ``embeddings -> pre_layrnorm -> layers -> post_layernorm(h[:, 0]) ->
visual_projection`` (Radford et al., ICML 2021). Seen as a timm ViT: a class token, ``norm_pre``,
the final ``norm`` (``post_layernorm``, a LayerNorm, so normalising the whole sequence and reading
the CLS row equals normalising the CLS row alone) and a CLS read-out, with ``head`` = ``ZeroShotHead``:

    ``ZeroShot``:      logits = exp(logit_scale) · normalize(P h) · Tᵀ (+ logit_bias)   (B, D) -> (B, K)
    ``ImageFeatures``: embedding = P h                                                 (B, D) -> (B, E)

(h the normed CLS token, P ``visual_projection``, T the labels' normalised text embeddings). The
gradient methods differentiate through it as the wrapper computes it (Chefer et al. explain the image
side of CLIP's similarity this way, ICCV 2021). Chefer's LRP has no rule for the L2 normalisation
and refuses the head (``lrp_refusal``); AttnLRP gives it the identity rule of every normalisation
(``UnitNorm``: the norm taken as a constant, as LXT does for LayerNorm / RMSNorm).

SigLIP's vision tower (``SiglipModel``; ``vx.image_features`` also over a ``SiglipVisionModel``) has no class token and reads out with an attention-pool (MAP)
head: ``post_layernorm`` on the sequence, then a probe attending over all tokens, a LayerNorm and an
MLP, the pooled vector being the image embedding (no projection; ``ZeroShotHead`` with an identity
``proj``). Its read-out row is the probe's attention, as for timm's MAP (``hf_pool.py``, ``attn_pool.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UnitNorm", "ZeroShotHead", "is_wrapper", "unsupported_reason"]

WRAPPERS = ("ZeroShot", "ImageFeatures")


class UnitNorm(nn.Module):
    """``x / ||x||₂`` over the last dimension (..., D) -> (..., D), as CLIP normalises its embeddings.

    ``rules.lrp_rules`` (AttnLRP) gives it the identity rule: the norm is held constant in the
    backward pass, as for LayerNorm's standard deviation (Achtibat et al., ICML 2024)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(p=2, dim=-1, keepdim=True)


def is_wrapper(model: object) -> bool:
    """True for a ``vx.zero_shot`` / ``vx.image_features`` wrapper (recognised without importing it)."""
    return type(model).__name__ in WRAPPERS and type(model).__module__ == "vit_explore.zero_shot"


def unsupported_reason(wrapper: nn.Module) -> str | None:
    """Why the attention methods cannot read ``wrapper``'s vision tower, or None where they can."""
    hf = wrapper.model
    kind = type(hf).__name__
    if kind == "CLIPModel" or (kind == "CLIPVisionModelWithProjection" and type(wrapper).__name__ == "ImageFeatures"):
        return None
    head = getattr(getattr(hf, "vision_model", hf), "head", None)  # a SiglipVisionModel is the tower itself
    siglip = kind == "SiglipModel" or (kind == "SiglipVisionModel" and type(wrapper).__name__ == "ImageFeatures")
    if siglip and type(head).__name__ == "SiglipMultiheadAttentionPoolingHead":
        return None
    if siglip or type(head).__name__.endswith("AttentionPoolingHead"):
        return (
            f"the attention methods read a SiglipModel's (or SiglipVisionModel's) vision tower through its attention-pool (MAP) head "
            f"(SiglipMultiheadAttentionPoolingHead, vision_use_head=True); {kind}'s vision tower has "
            f"{'none' if head is None else 'a ' + type(head).__name__}"
        )
    return (
        f"the attention methods read the vision tower of a transformers CLIPModel or SiglipModel inside "
        f"vx.zero_shot / vx.image_features (or a CLIPVisionModelWithProjection / SiglipVisionModel inside "
        f"vx.image_features), not of "
        f"{type(hf).__module__}.{kind}"
    )


class ZeroShotHead(nn.Module):
    """The read-out of a ``ZeroShot`` / ``ImageFeatures`` wrapper on the normed CLS token (see the
    module docstring): ``proj`` (``visual_projection``), then, for ``ZeroShot``, the wrapper's own
    ``similarity`` (``UnitNorm``, text matmul, scale, bias). (..., D) -> (..., K) or (..., E).

    ``out_features``: K (the labels), or 0 for an embedding (explained with a callable target)."""

    lrp_refusal = (
        "the zero-shot head L2-normalises the projected CLS embedding before the text matmul "
        "(logits = exp(logit_scale) · normalize(P h) · Tᵀ): not a Linear head, and chefer_lrp's relevance pass "
        "(Chefer et al., CVPR 2021) starts from a Linear head's alpha=1/beta=0 rule, with no rule for that "
        "normalisation. Use chefer_generic (the rule Chefer et al. apply to CLIP, ICCV 2021), attn_lrp (identity "
        "rule for the normalisation) or the gradient methods"
    )

    def __init__(self, proj: nn.Module, wrapper: nn.Module | None) -> None:
        super().__init__()
        self.proj = proj
        self._wrapper = (wrapper,)  # a tuple: not a child (the wrapper holds the whole model)
        if wrapper is not None:
            self.unit_norm = wrapper.unit_norm  # the wrapper's own module: attn_lrp's rule finds it here
        self.out_features = int(getattr(wrapper, "num_classes", 0) or 0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        e = self.proj(h)
        wrapper = self._wrapper[0]
        return e if wrapper is None else getattr(wrapper, "similarity")(e)  # noqa: B009 - ZeroShot.similarity
