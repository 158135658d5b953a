"""Trivial baselines: determinism, the centre Gaussian, the Sobel edge map."""

from __future__ import annotations

import numpy as np
import torch

from vit_explore.metrics import functional as MF


def test_random_map_depends_only_on_seed_and_index():
    a = MF.random_map([3, 4, 5], (4, 4), seed=1)
    b = MF.random_map([5], (4, 4), seed=1)
    torch.testing.assert_close(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(MF.random_map([3], (4, 4), seed=2)[0], a[0])
    assert float(a.min()) >= 0 and float(a.max()) < 1


def test_centre_gaussian_values():
    g = MF.centre_gaussian(2, (5, 5), sigma=0.2)
    s = 0.2 * 5
    yy, xx = np.mgrid[:5, :5]
    ref = np.exp(-((yy - 2) ** 2 + (xx - 2) ** 2) / (2 * s * s))
    np.testing.assert_allclose(g[1].numpy(), ref, rtol=1e-6)


def test_edge_map_on_a_vertical_step():
    x = torch.zeros(1, 3, 6, 6)
    x[..., 3:] = 1.0
    e = MF.edge_map(x)[0].numpy()
    # Sobel-x on a unit step: columns 2 and 3 get 1 + 2 + 1 = 4, elsewhere 0
    ref = np.zeros((6, 6))
    ref[:, 2:4] = 4.0
    np.testing.assert_allclose(e, ref, atol=1e-6)


def test_baseline_maps_shapes():
    x = torch.randn(2, 3, 16, 16)
    assert MF.baseline_maps("random", x, [0, 1], (4, 4)).shape == (2, 4, 4)
    assert MF.baseline_maps("centre", x, [0, 1], (4, 4)).shape == (2, 16, 16)
    assert MF.baseline_maps("edge", x, [0, 1], (4, 4)).shape == (2, 16, 16)
