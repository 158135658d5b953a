"""Datasets: synthetic shapes generated in code, and a loader for an existing Pascal VOC folder (nothing downloaded)."""

from .synthetic import (
    CLASS_NAMES,
    CUE_COLORS,
    PRESETS,
    TEST_SEED,
    ShapesConfig,
    ShapesData,
    ShapesDataset,
    make_preset,
    make_shapes,
    patch_fraction,
    to_tensor,
)
from .voc import SEED_REPORT, VOC_CLASSES, VOCSegmentation

__all__ = [
    "CLASS_NAMES",
    "CUE_COLORS",
    "PRESETS",
    "SEED_REPORT",
    "TEST_SEED",
    "VOC_CLASSES",
    "ShapesConfig",
    "ShapesData",
    "ShapesDataset",
    "VOCSegmentation",
    "make_preset",
    "make_shapes",
    "patch_fraction",
    "to_tensor",
]
