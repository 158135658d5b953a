"""Tiny seeded classifiers that are not ViTs capture reads: a CNN, a ConvNeXt, a Swin, a SigLIP-style MAP ViT."""

from __future__ import annotations

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet

from vit_explore.testing import tiny_vit


def _seeded(fn, seed=0):
    torch.manual_seed(seed)
    m = fn()
    with torch.no_grad():  # visible structure in every parameter (timm zero-inits some)
        g = torch.Generator().manual_seed(seed + 1)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


BUILDERS = {
    # name: (builder, input size, analysis cell in pixels)
    "resnet": (lambda: ResNet(BasicBlock, [1, 1, 1, 1], channels=(8, 16, 24, 32), stem_width=8, num_classes=5), (96, 64), 32),
    "convnext": (lambda: timm.create_model("convnext_atto", num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), (64, 64), 32),
    "swin": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", num_classes=5, img_size=64, window_size=4, depths=(1, 1, 1, 1),
            embed_dim=24, num_heads=(1, 2, 2, 4),
        ),
        (64, 64),
        32,
    ),
    "vit_map": (lambda: tiny_vit(global_pool="map", num_classes=5), (32, 32), 8),
    "vit_max": (lambda: tiny_vit(global_pool="max", num_classes=5), (32, 32), 8),
}


def agnostic_model(name: str, seed: int = 0) -> torch.nn.Module:
    return _seeded(BUILDERS[name][0], seed)


def agnostic_input(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *BUILDERS[name][1], generator=g)


def full_state(model: torch.nn.Module):
    """Training flags, hooks and ``requires_grad`` of every module / parameter."""
    return (
        [(m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks))
         for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )
