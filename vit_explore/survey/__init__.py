"""Dataset-wide explanation survey: every image explained into an on-disk store, Spectral Relevance
Analysis per class (Lapuschkin et al. 2019) and the causal check of a cluster (``Survey.confirm``).

The package is also callable: ``vx.survey(model, data, ...)`` is ``survey.dataset.survey``, so
``vx.survey`` names both this package and the function, and ``import vit_explore.survey.store``
works alongside the call (as for ``vx.capture``).
"""

import inspect
import sys
import types
from typing import Any

from .dataset import Survey, survey
from .spray import ClassAnalysis, analyse
from .store import MapStore, weights_fingerprint

__all__ = ["ClassAnalysis", "MapStore", "Survey", "analyse", "survey", "weights_fingerprint"]


class _CallablePackage(types.ModuleType):
    """This package's module type: calling it calls ``dataset.survey``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Survey:
        return survey(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(survey)  # what help() and inspect.signature show for vx.survey(...)
