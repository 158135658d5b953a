"""Capture: the only code that touches ``nn.Module`` internals."""

from .adapters import ViTInfo, inspect_vit
from .layout import TokenLayout
from .session import Needs, Trace, capture

__all__ = ["Needs", "TokenLayout", "Trace", "ViTInfo", "capture", "inspect_vit"]
