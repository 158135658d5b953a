"""Dataset-wide explanation survey: every image explained into an on-disk store, Spectral Relevance
Analysis per class (Lapuschkin et al. 2019) and the causal check of a cluster (``Survey.confirm``)."""

from .spray import ClassAnalysis, analyse
from .store import MapStore, weights_fingerprint
from .survey import Survey, survey

__all__ = ["ClassAnalysis", "MapStore", "Survey", "analyse", "survey", "weights_fingerprint"]
