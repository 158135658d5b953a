"""vit_explore: see what a Vision Transformer looks at, and why.

Public surface: ``explain``, ``Explanation``, ``list_methods``, ``preprocess``, ``capture``,
``Needs``, ``Trace``, ``attention_maps``.
"""

from __future__ import annotations

from . import capture, metrics  # capture: the package, callable (capture.session.capture)
from ._version import __version__
from .api import attention_maps, explain
from .attribution import HeadAttribution, head_attribution
from .capture.layout import TokenLayout
from .capture.session import Needs, Trace
from .counterfactual_search import Counterfactual, counterfactual
from .errors import (
    CaptureError,
    InputError,
    UnknownMethodError,
    UnsupportedModelError,
    VitExploreError,
    WeightsError,
)
from .evaluation import BenchResult, make_dataset, run_benchmark
from .explainers import get_explainer, list_methods
from .explanation import Explanation
from .inputs import preprocess
from .interventions import (
    Intervention,
    TopK,
    ablate_heads,
    block_tokens,
    causal_score,
    intervene,
)
from .lens import LogitLens, logit_lens, token_similarity
from .patching import patch_activations
from .survey import Survey, survey
from .widget import Atlas, Explorer
from .zoo import EMBEDDED_MODELS, class_names, load_model, save_model

__all__ = [
    "EMBEDDED_MODELS",
    "Atlas",
    "BenchResult",
    "CaptureError",
    "Counterfactual",
    "Explanation",
    "Explorer",
    "HeadAttribution",
    "InputError",
    "Intervention",
    "LogitLens",
    "Needs",
    "Survey",
    "TokenLayout",
    "TopK",
    "Trace",
    "UnknownMethodError",
    "UnsupportedModelError",
    "VitExploreError",
    "WeightsError",
    "__version__",
    "ablate_heads",
    "attention_maps",
    "block_tokens",
    "capture",
    "causal_score",
    "class_names",
    "counterfactual",
    "explain",
    "get_explainer",
    "head_attribution",
    "intervene",
    "list_methods",
    "load_model",
    "logit_lens",
    "make_dataset",
    "metrics",
    "patch_activations",
    "preprocess",
    "run_benchmark",
    "save_model",
    "survey",
    "token_similarity",
]
