"""Segmentation scores of a thresholded map against a mask: Jaccard, F1 (Dice), true pixel
accuracy, with the threshold rule named (docs/evaluation.md §1.6, §2.8, §6.4).

Rules (all on the map upsampled bilinearly to the mask and min-max normalised per image):

* ``"mean"`` - foreground where the map > its own mean (Chefer, ImageNet-segmentation).
* ``"0.5"`` - foreground where the map > 0.5 (AG-CAM's ``--threshold 0.5``).
* ``"otsu"`` - Otsu's threshold on the map quantised to 256 levels, foreground where the level
  > the threshold (OpenCV ``THRESH_OTSU`` semantics, as VitMix).
* ``"0.3max"`` - foreground where the map > 0.3 (TAM; after min-max this is 0.3 of the range).

Pixel accuracy is (TP + TN) / valid pixels - not recall. Mask value ``ignore_index`` (VOC's 255
border) is excluded from every count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import InputError
from ._common import as_maps, as_masks, check_batch, minmax, upsample

RULES = ("mean", "0.5", "otsu", "0.3max")


def otsu_levels(maps01: torch.Tensor) -> torch.Tensor:
    """Otsu threshold (B,) on 256 levels of maps in [0, 1] (levels = round(255 * v)); the
    threshold t maximises the between-class variance of {<= t} vs {> t}; the first best t wins."""
    B = maps01.shape[0]
    q = torch.round(maps01.reshape(B, -1).double() * 255).long().clamp(0, 255)
    hist = torch.zeros(B, 256, dtype=torch.float64, device=q.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float64))
    p = hist / hist.sum(1, keepdim=True)
    lv = torch.arange(256, dtype=torch.float64, device=q.device)
    w0 = p.cumsum(1)
    mu = (p * lv).cumsum(1)
    mu_t = mu[:, -1:]
    w1 = 1 - w0
    denom = w0 * w1
    between = torch.where(denom > 1e-12, (mu_t * w0 - mu) ** 2 / torch.where(denom > 1e-12, denom, torch.ones_like(denom)),
                          torch.zeros_like(denom))
    return between.argmax(1)


def binarize(saliency, size: tuple[int, int], rule: str = "mean") -> torch.Tensor:
    """Foreground (B, H, W) bool of maps resized to ``size`` under a named threshold rule."""
    if rule not in RULES:
        raise InputError(f"unknown threshold rule {rule!r}; use one of {list(RULES)}")
    maps = minmax(upsample(as_maps(saliency), size))
    if rule == "mean":
        return maps > maps.flatten(1).mean(1)[:, None, None]
    if rule == "0.5":
        return maps > 0.5
    if rule == "0.3max":
        return maps > 0.3
    t = otsu_levels(maps)
    q = torch.round(maps.double() * 255).clamp(0, 255)
    return q > t[:, None, None].double()


@dataclass(frozen=True)
class Confusion:
    """Per-image pixel counts (B,) over valid pixels: tp, fp, fn, tn (float64)."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def scores(self) -> dict[str, torch.Tensor]:
        """Jaccard, F1, pixel accuracy, precision, recall per image (NaN when undefined)."""
        return scores_from_counts(self.tp, self.fp, self.fn, self.tn)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.full_like(a, math.nan))


def scores_from_counts(tp, fp, fn, tn) -> dict[str, torch.Tensor]:
    tp, fp, fn, tn = (torch.as_tensor(v, dtype=torch.float64) for v in (tp, fp, fn, tn))
    return {
        "jaccard": _div(tp, tp + fp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "pixel_accuracy": _div(tp + tn, tp + fp + fn + tn),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
    }


def confusion(pred: torch.Tensor, masks, *, ignore_index: int | None = 255) -> Confusion:
    """Counts of a predicted bool foreground against a mask (bool, or integer: > 0 foreground,
    ``ignore_index`` excluded)."""
    m = as_masks(masks).to(pred.device)
    if pred.shape != m.shape:
        raise InputError(f"prediction {tuple(pred.shape)} and mask {tuple(m.shape)} differ in shape")
    if m.dtype == torch.bool:
        gt, valid = m, torch.ones_like(m)
    else:
        valid = m != ignore_index if ignore_index is not None else torch.ones_like(m, dtype=torch.bool)
        gt = (m > 0) & valid
    p = pred.bool() & valid

    def count(a):
        return a.flatten(1).sum(1).double()

    return Confusion(count(p & gt), count(p & ~gt & valid), count(~p & gt), count(~p & ~gt & valid))


def segmentation_scores(saliency, masks, *, rule: str = "mean", ignore_index: int | None = 255) -> dict[str, torch.Tensor]:
    """Per-image Jaccard, F1, pixel accuracy, precision and recall (B,) float64 of a map
    thresholded by ``rule`` against ``masks`` (B, H, W), plus the raw counts
    (``tp``, ``fp``, ``fn``, ``tn``) for dataset pooling."""
    m = as_masks(masks)
    maps = as_maps(saliency)
    check_batch(maps, m)
    pred = binarize(maps.to(m.device), (m.shape[-2], m.shape[-1]), rule)
    c = confusion(pred, m, ignore_index=ignore_index)
    return {**c.scores(), "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}
