"""Tiny seeded timm ViTs for tests, notebooks and examples (no downloads)."""

from .models import VARIANTS, tiny_vit

__all__ = ["VARIANTS", "tiny_vit"]
