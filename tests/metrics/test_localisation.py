"""Pointing game, energy pointing game, segmentation and mass metrics on hand-computed 4x4 cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vit_explore.metrics import functional as MF

MAP = torch.tensor([[0.0, 1.0, 2.0, 0.0],
                    [1.0, 3.0, 8.0, 1.0],
                    [0.0, 2.0, 4.0, 0.0],
                    [0.0, 0.0, 1.0, 0.0]])[None]  # max 8 at (1, 2)


def mask_at(*cells, size=4, value=1, dtype=torch.uint8):
    m = torch.zeros(1, size, size, dtype=dtype)
    for r, c in cells:
        m[0, r, c] = value
    return m


def test_pointing_tolerance_is_a_strict_disk():
    m = mask_at((1, 3))  # distance 1 from the max
    assert MF.pointing_game(MAP, m, tolerance=0).item() == 0.0
    assert MF.pointing_game(MAP, m, tolerance=1).item() == 0.0  # d^2 < 1 is false (TorchRay)
    assert MF.pointing_game(MAP, m, tolerance=1.01).item() == 1.0
    assert MF.pointing_game(MAP, mask_at((1, 2)), tolerance=0).item() == 1.0
    far = mask_at((3, 0))  # d^2 = 4 + 4 = 8
    assert MF.pointing_game(MAP, far, tolerance=2.8).item() == 0.0  # 7.84 < 8
    assert MF.pointing_game(MAP, far, tolerance=2.9).item() == 1.0


def test_pointing_ignores_void_and_skips_empty():
    assert math.isnan(MF.pointing_game(MAP, mask_at()).item())
    assert math.isnan(MF.pointing_game(MAP, mask_at((1, 2), value=255)).item())  # void only
    assert MF.pointing_game(MAP, mask_at((1, 2), value=7), tolerance=0).item() == 1.0  # any class id > 0


def test_pointing_first_maximum_and_upsampling():
    flat = torch.ones(1, 4, 4)
    assert MF.argmax_points(flat).tolist() == [[0, 0]]
    small = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    # bilinear 2x2 -> 8x8 (align_corners=False): the top-right 2x2 block holds the maximum, first at (0, 6)
    assert MF.argmax_points(small, (8, 8)).tolist() == [[0, 6]]


def test_class_mean_accuracy():
    hits = [1, 0, 1, math.nan, 1]
    cls = [0, 0, 1, 1, 2]
    assert MF.class_mean_accuracy(hits, cls) == pytest.approx((0.5 + 1 + 1) / 3)


def test_centre_point_baseline_is_the_centre_gaussian():
    for size in [(4, 4), (5, 7), (96, 96)]:
        g = MF.centre_gaussian(1, size)
        assert MF.argmax_points(g).tolist() == MF.centre_points(1, size).tolist() == [[size[0] // 2, size[1] // 2]]


def test_energy_pointing_game_by_hand():
    sal = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    m = torch.tensor([[[0, 1], [0, 1]]], dtype=torch.uint8)
    # min-max: [0, 1/3, 2/3, 1]; inside = 1/3 + 1; total = 2
    assert MF.energy_pointing_game(sal, m).item() == pytest.approx((1 / 3 + 1) / 2)
    void = torch.tensor([[[255, 1], [0, 1]]], dtype=torch.uint8)  # void pixel has value 0 anyway
    assert MF.energy_pointing_game(sal, void).item() == pytest.approx((1 / 3 + 1) / 2)
    void2 = torch.tensor([[[0, 1], [255, 1]]], dtype=torch.uint8)  # 2/3 excluded from the total
    assert MF.energy_pointing_game(sal, void2).item() == pytest.approx(1.0)
    # TAM variant: binarised at 0.3 * max -> [0, 1, 1, 1]
    assert MF.energy_pointing_game(sal, m, binarize=0.3).item() == pytest.approx(2 / 3)
    assert math.isnan(MF.energy_pointing_game(torch.ones(1, 2, 2), m).item())


def test_segmentation_mean_rule_by_hand():
    # min-max of MAP: /8; mean of normalised = 23/8/16; foreground = values > 23/16 -> 2, 3, 8, 2, 4 (and not 1)
    gt = torch.zeros(1, 4, 4, dtype=torch.uint8)
    gt[0, 1, 1] = gt[0, 1, 2] = gt[0, 2, 2] = gt[0, 3, 2] = 1
    gt[0, 0, 0] = 255
    s = MF.segmentation_scores(MAP, gt, rule="mean")
    # pred fg: (0,2) (1,1) (1,2) (2,1) (2,2); gt fg: (1,1) (1,2) (2,2) (3,2); void (0,0)
    tp, fp, fn = 3, 2, 1
    tn = 15 - tp - fp - fn
    assert (s["tp"].item(), s["fp"].item(), s["fn"].item(), s["tn"].item()) == (tp, fp, fn, tn)
    assert s["jaccard"].item() == pytest.approx(tp / (tp + fp + fn))
    assert s["f1"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["pixel_accuracy"].item() == pytest.approx((tp + tn) / 15)
    s05 = MF.segmentation_scores(MAP, gt, rule="0.5")  # > 0.5 * 8 = 4: only the 8
    assert (s05["tp"].item(), s05["fp"].item()) == (1, 0)


def test_otsu_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    maps = torch.cat([torch.rand(2, 9, 9, generator=g), torch.rand(1, 9, 9, generator=g) ** 4])
    from vit_explore.metrics.functional._common import minmax

    q = np.round(minmax(maps).double().numpy() * 255).astype(int)
    for b in range(3):
        v = q[b].reshape(-1)
        best, best_t = -1.0, None
        for t in range(256):
            lo, hi = v[v <= t], v[v > t]
            if len(lo) == 0 or len(hi) == 0:
                continue
            w0, w1 = len(lo) / len(v), len(hi) / len(v)
            var = w0 * w1 * (lo.mean() - hi.mean()) ** 2
            if var > best + 1e-12:
                best, best_t = var, t
        t = int(MF.otsu_levels(minmax(maps)[b : b + 1]).item())
        lo, hi = v[v <= t], v[v > t]
        var_t = len(lo) / len(v) * len(hi) / len(v) * (lo.mean() - hi.mean()) ** 2
        assert var_t == pytest.approx(best, rel=1e-9)  # same between-class variance (ties: any t in a gap)
        pred = MF.binarize(maps[b : b + 1], (9, 9), "otsu")[0].numpy().reshape(-1)
        np.testing.assert_array_equal(pred, v > best_t)


def test_relevance_mass_and_rank_by_hand():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, 1, 2] = gt[0, 2, 2] = gt[0, 0, 0] = True
    total = MAP.sum().item()  # 23
    assert MF.relevance_mass(MAP, gt).item() == pytest.approx((8 + 4 + 0) / total)
    # top-3 positions: 8, 4, 3 -> two inside
    assert MF.relevance_rank(MAP, gt).item() == pytest.approx(2 / 3)
    neg = MAP.clone()
    neg[0, 3, 3] = -100.0  # negative relevance is ignored
    assert MF.relevance_mass(neg, gt).item() == pytest.approx(12 / total)
    assert math.isnan(MF.relevance_mass(torch.zeros(1, 4, 4), gt).item())
    assert MF.spurious_mass(MAP, gt).item() == MF.relevance_mass(MAP, gt).item()


def test_patch_level_mass_and_rank():
    grid = torch.tensor([[[1.0, 3.0], [0.0, 4.0]]])
    gmask = torch.tensor([[[False, True], [False, False]]])
    assert MF.relevance_mass(grid, gmask, level="patch").item() == pytest.approx(3 / 8)
    assert MF.relevance_rank(grid, gmask, level="patch").item() == 0.0  # top-1 is the 4
    # a pixel mask covering half of patch (0,1) and all of patch (1,1): fractions 0.5 and 1
    pm = torch.zeros(1, 4, 4, dtype=torch.bool)
    pm[0, 0:1, 2:4] = True
    pm[0, 2:4, 2:4] = True
    assert MF.relevance_mass(grid, pm, level="patch").item() == pytest.approx((0.5 * 3 + 4) / 8)
    assert MF.relevance_rank(grid, pm, level="patch").item() == pytest.approx(1.0)  # K=2: {4, 3}
    assert MF.area_share(pm).item() == pytest.approx(6 / 16)
