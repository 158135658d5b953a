"""Perturbation curves against a float64 replica on a linear model, and the preset AUC rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vit_explore.errors import InputError
from vit_explore.metrics import functional as MF


class Linear(nn.Module):
    """logits = [s, -s, 0] with s = sum(mean_c(x) * w): p(class 0) is a known function of x."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.float())

    def forward(self, x):
        s = (x.mean(1) * self.w).sum((1, 2))
        return torch.stack([s, -s, torch.zeros_like(s)], 1)


def p0(x: np.ndarray, w: np.ndarray) -> float:
    s = float((x.mean(0) * w).sum())
    e = np.exp([s, -s, 0.0])
    return float(e[0] / e.sum())


def replica_cumulative(x, w, sal, step, start_sub, finish_is_sub):
    """RISE CausalMetric in plain numpy: rank pixels by decreasing saliency (stable), copy
    `step` pixels per step from the finish image into the current one."""
    C, H, W = x.shape
    order = np.argsort(-sal.reshape(-1), kind="stable")
    n = math.ceil(H * W / step)
    start, finish = (x.copy(), start_sub) if finish_is_sub else (start_sub.copy(), x)
    cur = start.copy().reshape(C, -1)
    fin = finish.reshape(C, -1)
    ys = [p0(cur.reshape(C, H, W), w)]
    for i in range(n):
        idx = order[i * step : (i + 1) * step]
        cur[:, idx] = fin[:, idx]
        ys.append(p0(cur.reshape(C, H, W), w))
    return np.array(ys)


def test_unit_trapezoid_and_trapz100_by_hand():
    c = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    assert MF.unit_trapezoid_auc(c).tolist() == pytest.approx([0.5, 0.2])
    # RISE formula: (sum - a0/2 - an/2) / (n - 1)
    y = torch.tensor([[0.8, 0.6, 0.4, 0.3]])
    assert float(MF.unit_trapezoid_auc(y)) == pytest.approx((2.1 - 0.4 - 0.15) / 3)
    x = torch.arange(10, dtype=torch.float64) / 10
    assert float(MF.trapz100_auc(torch.ones(1, 10), x)) == pytest.approx(90.0)  # the maximum is 90
    acc = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0.0]])
    assert float(MF.trapz100_auc(acc, x)) == pytest.approx(np.trapezoid(acc[0].numpy(), x.numpy()) * 100)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_rise_curve_matches_replica(mode):
    g = torch.Generator().manual_seed(0)
    H = W = 16
    w = torch.randn(H, W, generator=g) * 0.2
    x = torch.randn(2, 3, H, W, generator=g)
    sal = torch.rand(2, H, W, generator=g)
    model = Linear(w)
    res = MF.perturbation_curves(model, x, sal, preset="rise", mode=mode, target=0, batch_size=5)
    assert res.curves.shape == (2, 3)  # 256 px, step 224: ceil(256/224) = 2 steps + 1
    for b in range(2):
        sub = np.zeros((3, H, W)) if mode == "deletion" else MF.rise_blur(x[b : b + 1].double()).numpy()[0]
        ref = replica_cumulative(x[b].double().numpy(), w.double().numpy(), sal[b].numpy(), 224, sub, mode == "deletion")
        np.testing.assert_allclose(res.curves[b].numpy(), ref, atol=1e-5)
        auc = (ref.sum() - ref[0] / 2 - ref[-1] / 2) / (len(ref) - 1)
        assert float(res.auc[b]) == pytest.approx(auc, abs=1e-5)
    assert res.lower_is_better == (mode == "deletion")


def test_step_override_and_ties_in_raster_order():
    H = W = 4
    w = torch.arange(16.0).reshape(4, 4) / 10
    x = torch.ones(1, 3, H, W)
    sal = torch.zeros(1, 4, 4)  # all ties: raster order
    res = MF.perturbation_curves(Linear(w), x, sal, preset="tam", mode="deletion", step=4, target=0)
    ref = replica_cumulative(x[0].double().numpy(), w.double().numpy(), sal[0].numpy(), 4, np.zeros((3, 4, 4)), True)
    np.testing.assert_allclose(res.curves[0].numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(res.x.numpy(), [0, 0.25, 0.5, 0.75, 1.0])


def test_saliency_is_upsampled_bilinearly():
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    sal = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(5))
    up = torch.nn.functional.interpolate(sal[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    a = MF.perturbation_curves(Linear(w), x, sal, preset="tam", step=8)
    b = MF.perturbation_curves(Linear(w), x, up, preset="tam", step=8)
    torch.testing.assert_close(a.curves, b.curves)


def test_rise_blur_kernel_is_scipy_reflect_gaussian():
    # independent replica: 1-d Gaussian truncated at 4 sigma, 'reflect' boundary (d c b a | a b c d)
    klen, sig = 11, 5.0
    r = int(4 * sig + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2)
    k /= k.sum()

    def refl(i):
        period = 2 * klen
        i = i % period
        return i if i < klen else period - 1 - i

    delta = np.zeros(klen)
    delta[klen // 2] = 1
    one = np.array([sum(k[j + r] * delta[refl(i + j)] for j in range(-r, r + 1)) for i in range(klen)])
    np.testing.assert_allclose(MF.rise_gkern(klen, sig).numpy(), np.outer(one, one), atol=1e-7)


def test_chefer_black_substrate_accuracy_and_auc():
    H = W = 10
    g = torch.Generator().manual_seed(1)
    w = torch.randn(H, W, generator=g)
    x = torch.randn(3, 3, H, W, generator=g)
    sal = torch.rand(3, H, W, generator=g)
    labels = torch.tensor([0, 1, 0])
    model = Linear(w)
    for mode in ("positive", "negative"):
        res = MF.perturbation_curves(model, x, sal, preset="chefer_perturbation", mode=mode, labels=labels,
                                     mean=0.5, std=0.5)
        assert res.curves.shape == (3, 10)
        for b in range(3):
            v = sal[b].numpy().reshape(-1) * (1 if mode == "positive" else -1)
            order = np.argsort(-v, kind="stable")
            ys = []
            for f in np.arange(10) / 10:
                xi = x[b].double().numpy().reshape(3, -1).copy()
                xi[:, order[: int(H * W * f)]] = (0 - 0.5) / 0.5  # black in [0,1] space, normalised
                s = (xi.reshape(3, H, W).mean(0) * w.double().numpy()).sum()
                ys.append(float(np.argmax([s, -s, 0.0]) == int(labels[b])))
            np.testing.assert_array_equal(res.curves[b].numpy(), ys)
            assert float(res.auc[b]) == pytest.approx(np.trapezoid(ys, np.arange(10) / 10) * 100)
    with pytest.raises(InputError, match="labels"):
        MF.perturbation_curves(model, x, sal, preset="chefer_perturbation", mode="positive")


def test_patch_preset_one_patch_per_step():
    H = W = 8
    g = torch.Generator().manual_seed(2)
    w = torch.randn(H, W, generator=g)
    x = torch.randn(1, 3, H, W, generator=g)
    sal = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    res = MF.perturbation_curves(Linear(w), x, sal, preset="patch", mode="deletion", target=0)
    cur = x[0].double().numpy().copy()
    ys = [p0(cur, w.double().numpy())]
    for (r, c) in [(0, 1), (1, 0), (1, 1), (0, 0)]:  # decreasing relevance
        cur[:, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = 0
        ys.append(p0(cur, w.double().numpy()))
    np.testing.assert_allclose(res.curves[0].numpy(), ys, atol=1e-6)


def test_bad_arguments():
    m = Linear(torch.ones(4, 4))
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(InputError, match="preset"):
        MF.perturbation_curves(m, x, torch.zeros(1, 4, 4), preset="nope")
    with pytest.raises(InputError, match="modes"):
        MF.perturbation_curves(m, x, torch.zeros(1, 4, 4), preset="rise", mode="positive")
    with pytest.raises(InputError, match="one map per image"):
        MF.perturbation_curves(m, x, torch.zeros(2, 4, 4))
