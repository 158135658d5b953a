"""Metrics as pure functions over batches (maps, masks, a model for perturbation curves)."""

from .baselines import BASELINES, baseline_maps, centre_gaussian, edge_map, random_map
from .mass import area_share, relevance_mass, relevance_rank, spurious_mass
from .perturbation import (
    PRESETS,
    PerturbationCurves,
    PerturbationPreset,
    deletion,
    insertion,
    perturbation_curves,
    preset_auc,
    rise_blur,
    rise_gkern,
    trapz100_auc,
    unit_trapezoid_auc,
)
from .perturbation_batch import perturbation_curves_many
from .pointing import (
    argmax_points,
    centre_points,
    class_mean_accuracy,
    energy_pointing_game,
    point_hits,
    pointing_game,
)
from .sanity import SIMILARITIES, SanityResult, cascade_stages, cosine, model_randomisation, spearman, ssim
from .segmentation import RULES, binarize, confusion, otsu_levels, scores_from_counts, segmentation_scores

__all__ = [
    "BASELINES", "PRESETS", "RULES", "SIMILARITIES", "PerturbationCurves", "PerturbationPreset", "SanityResult",
    "area_share", "argmax_points", "baseline_maps", "binarize", "cascade_stages", "centre_gaussian", "centre_points",
    "class_mean_accuracy", "confusion", "cosine", "deletion", "edge_map", "energy_pointing_game", "insertion",
    "model_randomisation", "otsu_levels", "perturbation_curves", "perturbation_curves_many", "point_hits", "pointing_game", "preset_auc",
    "random_map", "relevance_mass", "relevance_rank", "rise_blur", "rise_gkern", "scores_from_counts",
    "segmentation_scores", "spearman", "spurious_mass", "ssim", "trapz100_auc", "unit_trapezoid_auc",
]
