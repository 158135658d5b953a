"""Tiny seeded timm ViTs in every variant capture supports."""

from __future__ import annotations

import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

#: name -> keyword arguments for the timm constructor.
VARIANTS: dict[str, dict] = {
    "vanilla": {},
    "distilled": {"distilled": True},
    "registers": {"reg_tokens": 2},
    "gap": {"class_token": False, "global_pool": "avg"},
    "nonsquare": {"img_size": (32, 48)},
    "dynamic": {"dynamic_img_size": True},
    "layerscale": {"init_values": 0.5, "no_embed_class": True},
}


def tiny_vit(
    variant: str = "vanilla",
    *,
    seed: int = 0,
    depth: int = 3,
    embed_dim: int = 32,
    num_heads: int = 4,
    num_classes: int = 7,
    sharpen: float = 2.0,
    **overrides,
) -> VisionTransformer:
    """A seeded ViT with 8x8 patches on 32x32 images (4x4 grid), in eval mode.

    Args:
        variant: a key of ``VARIANTS``.
        sharpen: factor applied to the ``qkv`` weights so attention is far from uniform
            (timm's init gives nearly uniform attention, which hides bugs).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    kw = {
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "num_classes": num_classes,
        "mlp_ratio": 2.0,
        **VARIANTS[variant],
        **overrides,
    }
    distilled = kw.pop("distilled", False)
    torch.manual_seed(seed)
    model = (VisionTransformerDistilled if distilled else VisionTransformer)(**kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            # timm initialises tokens and biases to zero and weights to tiny values; give every
            # parameter visible structure so that tokens, heads and classes differ.
            p.add_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.05))
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(sharpen)
    return model.eval()
