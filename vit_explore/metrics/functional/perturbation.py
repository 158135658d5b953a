"""Perturbation curves: deletion / insertion (Petsiuk et al., RISE, BMVC 2018), the TAM
variant (Yuan et al. 2021), Chefer's positive/negative perturbation test (Chefer et al.,
CVPR 2021) and a ViT-native patch variant, as named presets (docs/evaluation.md §1.1-1.2, §6).

Every preset fixes the substrate, the step, the measured score and the AUC rule; results
under different presets are not comparable and are never mixed.

=====================  ==========  =============================  ==============================
preset                 modes       substrate (deletion/insertion)  score, AUC
=====================  ==========  =============================  ==============================
``rise``               del / ins   0 in normalised space / blur    softmax p(top-1), trapezoid on
                                   (RISE ``gkern(11, 5)``)         [0,1]; step 224 px
``tam``                del / ins   0 / 0                           as ``rise``; step 1792 px
``chefer_perturbation`` pos / neg  black in [0,1] space            top-1 accuracy vs label,
                                                                   ``trapz(acc, 0..0.9) * 100``;
                                                                   one shot per fraction 0.1..0.9
``patch``              del / ins   0 / 0                           as ``rise``; one patch per step
=====================  ==========  =============================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ...errors import InputError
from ...perturb import black_substrate, rise_blur_zero_pad, rise_gkern  # noqa: F401 (rise_gkern: re-exported)

Substrate = Literal["zero", "blur", "black"]


@dataclass(frozen=True)
class PerturbationPreset:
    """A fully specified perturbation protocol.

    Attributes:
        name: preset key.
        modes: the two curve kinds and, for each, whether a lower AUC is better.
        unit: ``"pixel"`` ranks the map bilinearly upsampled to the input; ``"patch"`` ranks patches.
        step: pixels (or patches) replaced per step for cumulative presets; ``n_steps = ceil(N / step)``.
        fractions: one-shot presets: fractions of pixels removed, each from the clean image.
        substrate: per mode, what replaces a pixel.
        score: ``"prob"`` softmax probability of the target class; ``"accuracy"`` top-1 == label.
        auc: ``"unit_trapezoid"`` = (sum - a0/2 - an/2)/(n-1) (RISE ``auc``); ``"trapz100"`` =
            ``np.trapz(y, x) * 100`` (Chefer, issue #31).
    """

    name: str
    modes: dict[str, bool]
    unit: Literal["pixel", "patch"]
    step: int | None
    fractions: tuple[float, ...] | None
    substrate: dict[str, Substrate]
    score: Literal["prob", "accuracy"]
    auc: Literal["unit_trapezoid", "trapz100"]
    reference: str = ""


PRESETS: dict[str, PerturbationPreset] = {
    "rise": PerturbationPreset(
        "rise", {"deletion": True, "insertion": False}, "pixel", 224, None,
        {"deletion": "zero", "insertion": "blur"}, "prob", "unit_trapezoid", "eclique/RISE evaluation.py",
    ),
    "tam": PerturbationPreset(
        "tam", {"deletion": True, "insertion": False}, "pixel", 224 * 8, None,
        {"deletion": "zero", "insertion": "zero"}, "prob", "unit_trapezoid", "XianrenYty/Transition_Attention_Maps del_ins.py",
    ),
    "chefer_perturbation": PerturbationPreset(
        "chefer_perturbation", {"positive": True, "negative": False}, "pixel", None,
        tuple(i / 10 for i in range(10)), {"positive": "black", "negative": "black"}, "accuracy", "trapz100",
        "hila-chefer/Transformer-Explainability pertubation_eval_from_hdf5.py",
    ),
    "patch": PerturbationPreset(
        "patch", {"deletion": True, "insertion": False}, "patch", 1, None,
        {"deletion": "zero", "insertion": "zero"}, "prob", "unit_trapezoid", "vit_explore (ViT-native variant)",
    ),
}
"""The named presets (docs/evaluation.md §6)."""


@dataclass(frozen=True)
class PerturbationCurves:
    """One curve per image and its AUC under the preset's rule.

    Attributes:
        curves: (B, T) score after each step (index 0: nothing perturbed yet).
        x: (T,) fraction of the image perturbed at each point.
        auc: (B,) float64 per-image AUC. The rules are linear in the curve, so the AUC of the
            mean curve equals the mean of these (TAM's batch-mean convention gives the same value).
        target: (B,) class scored (top-1 of the clean image unless given).
        preset, mode: what was run; ``lower_is_better`` for this mode.
    """

    curves: torch.Tensor
    x: torch.Tensor
    auc: torch.Tensor
    target: torch.Tensor
    preset: str
    mode: str
    lower_is_better: bool
    extras: dict = field(default_factory=dict)


def unit_trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """RISE ``auc(arr) = (arr.sum() - arr[0]/2 - arr[-1]/2) / (len(arr) - 1)`` on the last axis."""
    c = curves.double()
    n = c.shape[-1]
    if n < 2:
        raise InputError("an AUC needs at least two points on the curve")
    return (c.sum(-1) - c[..., 0] / 2 - c[..., -1] / 2) / (n - 1)


def trapz100_auc(curves: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Chefer: ``np.trapz(y, x) * 100`` over the given x (0, 0.1, ..., 0.9)."""
    return torch.trapezoid(curves.double(), x.double().to(curves.device), dim=-1) * 100.0


def preset_auc(curves: torch.Tensor, x: torch.Tensor, preset: str | PerturbationPreset) -> torch.Tensor:
    """AUC of (B, T) curves exactly as ``preset`` defines it."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return unit_trapezoid_auc(curves) if p.auc == "unit_trapezoid" else trapz100_auc(curves, x)


def get_preset(name: str) -> PerturbationPreset:
    if name not in PRESETS:
        raise InputError(f"unknown perturbation preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]


rise_blur = rise_blur_zero_pad
"""RISE's insertion substrate, ``perturb.rise_blur_zero_pad`` (zero padding; not ``vx.intervene``'s blur)."""


def _norm_stats(model: nn.Module, mean, std, C: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if mean is None or std is None:
        from ...inputs import data_config

        cfg = data_config(model)
        mean = cfg["mean"] if mean is None else mean
        std = cfg["std"] if std is None else std
    m = torch.as_tensor(mean, dtype=like.dtype, device=like.device).reshape(-1, 1, 1).expand(C, 1, 1)
    s = torch.as_tensor(std, dtype=like.dtype, device=like.device).reshape(-1, 1, 1).expand(C, 1, 1)
    return m, s


def substrate_for(kind: Substrate, x: torch.Tensor, model: nn.Module, mean=None, std=None) -> torch.Tensor:
    """The replacement image for every input of ``x`` (normalised space)."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "blur":
        return rise_blur_zero_pad(x)
    if kind == "black":  # 0 in [0, 1] space, then normalised: -mean/std
        m, s = _norm_stats(model, mean, std, x.shape[1], x)
        return black_substrate(x, m, s)
    raise InputError(f"unknown substrate {kind!r}; use 'zero', 'blur' or 'black'")


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def perturbation_curves(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor | np.ndarray,
    *,
    preset: str = "rise",
    mode: str = "deletion",
    target: torch.Tensor | int | None = None,
    labels: torch.Tensor | None = None,
    step: int | None = None,
    batch_size: int = 64,
    patch_size: int | tuple[int, int] | None = None,
    mean=None,
    std=None,
) -> PerturbationCurves:
    """Run one preset's perturbation curve for every image of a batch.

    Args:
        model: a classifier returning logits (B, C); called in ``no_grad``, never modified.
        x: (B, C, H, W) normalised inputs.
        saliency: (B, h, w) maps, any resolution (upsampled bilinearly to H x W for pixel
            presets; mean-pooled to the patch grid for ``patch``). Ties are ranked in raster order.
        preset: a key of :data:`PRESETS`; mode: one of that preset's modes.
        target: class scored for ``prob`` presets (default: top-1 of the clean image).
        labels: (B,) ground truth for ``accuracy`` presets (``chefer_perturbation``; required).
        step: override the preset's step (pixels, or patches for ``patch``).
        batch_size: perturbed images per forward pass.
        patch_size: for ``patch`` when the map is at pixel resolution (default: read from the model).
        mean, std: normalisation of ``x`` for the ``black`` substrate (default: model's data config).

    Returns:
        :class:`PerturbationCurves` with (B, T) curves and (B,) AUCs.
    """
    from .perturbation_batch import perturbation_curves_many

    p = get_preset(preset)
    if mode not in p.modes:
        raise InputError(f"preset {preset!r} has modes {list(p.modes)}, not {mode!r}")
    runs = perturbation_curves_many(model, x, {"map": saliency}, [(preset, mode)], target=target, labels=labels,
                                    step=step, batch_size=batch_size, patch_size=patch_size, mean=mean, std=std)
    return runs["map"][(preset, mode)]


def deletion(model: nn.Module, x: torch.Tensor, saliency, *, preset: str = "rise", **kw) -> PerturbationCurves:
    """Deletion curve (``chefer_perturbation``: the positive test). Lower AUC is better."""
    return perturbation_curves(model, x, saliency, preset=preset,
                               mode="positive" if preset == "chefer_perturbation" else "deletion", **kw)


def insertion(model: nn.Module, x: torch.Tensor, saliency, *, preset: str = "rise", **kw) -> PerturbationCurves:
    """Insertion curve (``chefer_perturbation``: the negative test). Higher AUC is better."""
    return perturbation_curves(model, x, saliency, preset=preset,
                               mode="negative" if preset == "chefer_perturbation" else "insertion", **kw)


def _patch_size(model, sal, H, W, patch_size) -> tuple[int, int]:
    if patch_size is not None:
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    elif tuple(sal.shape[-2:]) != (H, W) and H % sal.shape[-2] == 0 and W % sal.shape[-1] == 0:
        ph, pw = H // sal.shape[-2], W // sal.shape[-1]
    else:
        from ...capture.adapters import inspect_vit

        ph, pw = inspect_vit(model).patch_size
    if H % ph or W % pw:
        raise InputError(f"input {H}x{W} is not a multiple of the patch size {ph}x{pw}")
    return int(ph), int(pw)
