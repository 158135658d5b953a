"""vit_explore: see what a Vision Transformer looks at, and why.

The top level holds what a user calls (the README and the notebooks use these names): explain
(``explain``, ``attention_maps``, ``list_methods``, ``get_explainer``), inputs and models
(``preprocess``, ``load_model``, ``class_names``), the trace (``capture``, ``Needs``),
interventions (``intervene``, ``causal_score``, ``counterfactual``, ``ablate_heads``,
``block_tokens``), the residual stream (``logit_lens``, ``token_similarity``,
``head_attribution``, ``patch_activations``), the widgets (``Explorer``, ``Atlas``),
evaluation (``metrics``, ``make_dataset``, ``run_benchmark``), ``survey``, targets beyond a class
(``targets.similarity``, ``zero_shot``, ``image_features``) and the base error
``VitExploreError``. Result types and the other errors live in their modules (the README's
"What moved where").
"""

from __future__ import annotations

from . import capture, metrics, survey, targets  # capture, survey: packages, callable (their functions)
from ._version import __version__
from .api import attention_maps, explain
from .attribution import head_attribution
from .capture.session import Needs
from .counterfactual_search import counterfactual
from .errors import VitExploreError
from .evaluation import make_dataset, run_benchmark
from .explainers import get_explainer, list_methods
from .inputs import preprocess
from .interventions import ablate_heads, block_tokens, causal_score, intervene
from .lens import logit_lens, token_similarity
from .patching import patch_activations
from .widget import Atlas, Explorer
from .zero_shot import ImageFeatures, ZeroShot, image_features, zero_shot
from .zoo import class_names, load_model

__all__ = [
    "Atlas",
    "Explorer",
    "ImageFeatures",
    "Needs",
    "VitExploreError",
    "ZeroShot",
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
    "image_features",
    "intervene",
    "list_methods",
    "load_model",
    "logit_lens",
    "make_dataset",
    "metrics",
    "patch_activations",
    "preprocess",
    "run_benchmark",
    "survey",
    "targets",
    "token_similarity",
    "zero_shot",
]
