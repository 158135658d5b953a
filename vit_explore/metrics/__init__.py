"""Evaluation metrics for explanation maps (definitions: docs/evaluation.md §1).

``vit_explore.metrics.functional`` holds the pure functions; the classes here are their
stateful twins for whole datasets.
"""

from . import functional
from .accumulators import (
    Accumulator,
    EnergyPointingGame,
    PerturbationAUC,
    PointingGame,
    RelevanceMass,
    RelevanceRank,
    Segmentation,
    SpuriousMass,
)
from .functional import (
    BASELINES,
    PRESETS,
    RULES,
    baseline_maps,
    centre_gaussian,
    class_mean_accuracy,
    deletion,
    edge_map,
    energy_pointing_game,
    insertion,
    model_randomisation,
    perturbation_curves,
    pointing_game,
    random_map,
    relevance_mass,
    relevance_rank,
    segmentation_scores,
    spurious_mass,
)

__all__ = [
    "BASELINES", "PRESETS", "RULES", "Accumulator", "EnergyPointingGame", "PerturbationAUC", "PointingGame",
    "RelevanceMass", "RelevanceRank", "Segmentation", "SpuriousMass", "baseline_maps", "centre_gaussian",
    "class_mean_accuracy", "deletion", "edge_map", "energy_pointing_game", "functional", "insertion",
    "model_randomisation", "perturbation_curves", "pointing_game", "random_map", "relevance_mass",
    "relevance_rank", "segmentation_scores", "spurious_mass",
]
