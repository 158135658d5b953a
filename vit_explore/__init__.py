"""vit_explore: see what a Vision Transformer looks at, and why.

Public surface: ``explain``, ``Explanation``, ``list_methods``, ``preprocess``, ``capture``,
``Needs``, ``Trace``, ``attention_maps``.
"""

from __future__ import annotations

from ._version import __version__
from .api import attention_maps, explain
from .capture.layout import TokenLayout
from .capture.session import Needs, Trace, capture
from .errors import (
    CaptureError,
    InputError,
    UnknownMethodError,
    UnsupportedModelError,
    VitExploreError,
    WeightsError,
)
from .explainers import get_explainer, list_methods
from .explanation import Explanation
from .inputs import preprocess

__all__ = [
    "CaptureError",
    "Explanation",
    "InputError",
    "Needs",
    "TokenLayout",
    "Trace",
    "UnknownMethodError",
    "UnsupportedModelError",
    "VitExploreError",
    "WeightsError",
    "__version__",
    "attention_maps",
    "capture",
    "explain",
    "get_explainer",
    "list_methods",
    "preprocess",
]
