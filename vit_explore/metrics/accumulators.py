"""Stateful twins of the metric functions for datasets: ``update`` per batch, ``compute`` at
the end, ``reset`` to reuse, ``merge`` to combine shards (e.g. from torch.distributed ranks).

Per-image values are kept (float64), so a merged accumulator computes exactly what one
accumulator fed every batch computes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .functional import mass, perturbation, pointing, segmentation


def _np(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().double().cpu().numpy()
    return np.asarray(v, dtype=np.float64).reshape(-1)


def _nanmean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


class Accumulator:
    """Base: lists of per-image arrays under named keys."""

    keys: tuple[str, ...] = ("value",)

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}

    def _add(self, **values) -> None:
        for k, v in values.items():
            self._parts[k].append(_np(v))

    def values(self, key: str | None = None) -> np.ndarray:
        key = key or self.keys[0]
        parts = self._parts[key]
        return np.concatenate(parts) if parts else np.zeros(0)

    def merge(self, other: Accumulator) -> Accumulator:
        if type(other) is not type(self):
            raise InputError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for k in self.keys:
            self._parts[k] += other._parts[k]
        return self

    def __len__(self) -> int:
        return int(self.values().size)

    def compute(self) -> dict[str, Any]:
        return {"mean": _nanmean(self.values()), "n": len(self)}


class PerturbationAUC(Accumulator):
    """Mean AUC and mean curve of one preset and mode (twin of ``perturbation_curves``)."""

    keys = ("auc",)

    def __init__(self, preset: str = "rise", mode: str = "deletion") -> None:
        p = perturbation.get_preset(preset)
        if mode not in p.modes:
            raise InputError(f"preset {preset!r} has modes {list(p.modes)}, not {mode!r}")
        self.preset, self.mode = preset, mode
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._curves: list[np.ndarray] = []
        self.x: np.ndarray | None = None

    def update(self, model, x, saliency, **kw) -> perturbation.PerturbationCurves:
        res = perturbation.perturbation_curves(model, x, saliency, preset=self.preset, mode=self.mode, **kw)
        self.update_result(res)
        return res

    def update_result(self, res: perturbation.PerturbationCurves) -> None:
        self._add(auc=res.auc)
        self._curves.append(res.curves.detach().double().cpu().numpy())
        self.x = res.x.numpy()

    def merge(self, other: Accumulator) -> PerturbationAUC:
        super().merge(other)
        assert isinstance(other, PerturbationAUC)  # super().merge refused any other type
        self._curves += other._curves
        self.x = self.x if self.x is not None else other.x
        return self

    def compute(self) -> dict[str, Any]:
        curves = np.concatenate(self._curves) if self._curves else np.zeros((0, 0))
        return {"auc": _nanmean(self.values()), "curve": curves.mean(0) if len(curves) else np.zeros(0),
                "x": self.x, "n": len(self)}


class PointingGame(Accumulator):
    """Pointing game with class-mean accuracy (twin of ``pointing_game``)."""

    keys = ("hit", "cls")

    def __init__(self, tolerance: float = 15.0, ignore_index: int | None = 255) -> None:
        self.tolerance, self.ignore_index = tolerance, ignore_index
        super().__init__()

    def update(self, saliency, masks, classes) -> torch.Tensor:
        hits = pointing.pointing_game(saliency, masks, tolerance=self.tolerance, ignore_index=self.ignore_index)
        self.update_hits(hits, classes)
        return hits

    def update_hits(self, hits, classes) -> None:
        h, c = _np(hits), _np(classes)
        if h.shape != c.shape:
            raise InputError(f"{h.size} hits but {c.size} classes")
        self._add(hit=h, cls=c)

    def compute(self) -> dict[str, Any]:
        h, c = self.values("hit"), self.values("cls")
        return {"accuracy": pointing.class_mean_accuracy(h, c), "image_accuracy": _nanmean(h),
                "n": int((~np.isnan(h)).sum())}


class EnergyPointingGame(Accumulator):
    """Mean energy-based pointing game (twin of ``energy_pointing_game``)."""

    def __init__(self, ignore_index: int | None = 255, binarize: float | None = None) -> None:
        self.ignore_index, self.binarize = ignore_index, binarize
        super().__init__()

    def update(self, saliency, masks) -> torch.Tensor:
        v = pointing.energy_pointing_game(saliency, masks, ignore_index=self.ignore_index, binarize=self.binarize)
        self._add(value=v)
        return v


class Segmentation(Accumulator):
    """Jaccard, F1, pixel accuracy under one threshold rule: per-image means and, as Chefer's
    ImageNet-segmentation test does, scores of the counts pooled over the dataset."""

    keys = ("tp", "fp", "fn", "tn")

    def __init__(self, rule: str = "mean", ignore_index: int | None = 255) -> None:
        if rule not in segmentation.RULES:
            raise InputError(f"unknown threshold rule {rule!r}; use one of {list(segmentation.RULES)}")
        self.rule, self.ignore_index = rule, ignore_index
        super().__init__()

    def update(self, saliency, masks) -> dict[str, torch.Tensor]:
        s = segmentation.segmentation_scores(saliency, masks, rule=self.rule, ignore_index=self.ignore_index)
        self.update_counts(s["tp"], s["fp"], s["fn"], s["tn"])
        return s

    def update_counts(self, tp, fp, fn, tn) -> None:
        self._add(tp=tp, fp=fp, fn=fn, tn=tn)

    def compute(self) -> dict[str, Any]:
        c = [self.values(k) for k in self.keys]
        per = segmentation.scores_from_counts(*c)
        pooled = segmentation.scores_from_counts(*[v.sum() for v in c])
        out: dict[str, Any] = {k: _nanmean(v.numpy()) for k, v in per.items()}
        out.update({f"{k}_pooled": float(v) for k, v in pooled.items()})
        out["n"] = len(self)
        return out


class RelevanceMass(Accumulator):
    """Mean relevance mass accuracy at ``level`` (twin of ``relevance_mass``)."""

    def __init__(self, level: str = "pixel") -> None:
        self.level = level
        super().__init__()

    def update(self, saliency, masks) -> torch.Tensor:
        v = mass.relevance_mass(saliency, masks, level=self.level)
        self._add(value=v)
        return v


class RelevanceRank(RelevanceMass):
    """Mean relevance rank accuracy at ``level`` (twin of ``relevance_rank``)."""

    def update(self, saliency, masks) -> torch.Tensor:
        v = mass.relevance_rank(saliency, masks, level=self.level)
        self._add(value=v)
        return v


class SpuriousMass(RelevanceMass):
    """Mean share of relevance on the cue (twin of ``spurious_mass``)."""

    def update(self, saliency, cue_masks) -> torch.Tensor:
        v = mass.spurious_mass(saliency, cue_masks, level=self.level)
        self._add(value=v)
        return v
