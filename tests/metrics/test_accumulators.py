"""Accumulators: update/compute/reset/merge equal the functions on the whole set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vit_explore.metrics import (
    EnergyPointingGame,
    PointingGame,
    RelevanceMass,
    RelevanceRank,
    Segmentation,
    SpuriousMass,
)
from vit_explore.metrics import functional as MF


def _data(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 4, 4, generator=g)
    masks = torch.rand(n, 16, 16, generator=g) > 0.6
    return maps, masks


@pytest.mark.parametrize("cls,fn", [(RelevanceMass, MF.relevance_mass), (RelevanceRank, MF.relevance_rank),
                                    (SpuriousMass, MF.spurious_mass), (EnergyPointingGame, MF.energy_pointing_game)])
def test_mean_accumulators_split_and_merge(cls, fn):
    maps, masks = _data()
    whole = float(fn(maps, masks).mean())
    a, b = cls(), cls()
    a.update(maps[:2], masks[:2])
    b.update(maps[2:], masks[2:])
    assert a.merge(b).compute()["mean"] == pytest.approx(whole)
    a.reset()
    assert len(a) == 0 and math.isnan(a.compute()["mean"])


def test_pointing_accumulator_class_mean():
    maps, masks = _data(1)
    cls = [0, 0, 1, 1, 1, 2]
    acc = PointingGame(tolerance=2)
    acc.update(maps[:3], masks[:3], cls[:3])
    acc.update(maps[3:], masks[3:], cls[3:])
    hits = MF.pointing_game(maps, masks, tolerance=2).numpy()
    ref = np.mean([hits[[0, 1]].mean(), hits[[2, 3, 4]].mean(), hits[[5]].mean()])
    assert acc.compute()["accuracy"] == pytest.approx(ref)


def test_segmentation_accumulator_pooled_and_per_image():
    maps, masks = _data(2)
    acc = Segmentation("otsu")
    for i in range(0, 6, 4):
        acc.update(maps[i : i + 4], masks[i : i + 4])
    s = MF.segmentation_scores(maps, masks, rule="otsu")
    out = acc.compute()
    assert out["jaccard"] == pytest.approx(float(s["jaccard"].mean()))
    tp, fp, fn = (float(s[k].sum()) for k in ("tp", "fp", "fn"))
    assert out["jaccard_pooled"] == pytest.approx(tp / (tp + fp + fn))
    with pytest.raises(Exception, match="threshold rule"):
        Segmentation("median")
