"""Perturb: the only code that runs the model on altered inputs.

Between ``capture`` (model plumbing) and ``explainers``: patch regions (``regions``),
substrates, every blur and noise once (``substrates``), and the forward engine whose caches
belong to the ``ForwardEngine`` the caller holds (``engine``).
"""

from .engine import MODES, ForwardEngine, Setup, check_mode, model_fingerprint, nothing_left, scan
from .regions import PatchesLike, blend, index_cells, parse_patches, pixel_region, pixels_to_grid
from .substrates import (
    PIXEL_MODES,
    SUBSTRATE_PARAMS,
    black_substrate,
    cached_noise,
    gaussian_blur_reflect,
    rise_blur_zero_pad,
    rise_gkern,
    seeded_noise,
    substrate,
)

__all__ = [
    "MODES",
    "PIXEL_MODES",
    "SUBSTRATE_PARAMS",
    "ForwardEngine",
    "PatchesLike",
    "Setup",
    "black_substrate",
    "blend",
    "cached_noise",
    "check_mode",
    "gaussian_blur_reflect",
    "index_cells",
    "model_fingerprint",
    "nothing_left",
    "parse_patches",
    "pixel_region",
    "pixels_to_grid",
    "rise_blur_zero_pad",
    "rise_gkern",
    "scan",
    "seeded_noise",
    "substrate",
]
