"""``Survey.confirm`` against its definition restated with ``vx.intervene`` image by image, the
Wilson interval against a hand computation, and the Survey's per-class API against the store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vit_explore as vx
from tests.conftest import model_state
from vit_explore.errors import InputError
from vit_explore.survey import survey
from vit_explore.survey.confirm import mean_interval, wilson
from vit_explore.testing import tiny_vit


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory):
    model = tiny_vit("vanilla", depth=2, num_classes=3)
    x = torch.randn(60, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    s = survey(model, x, method="rollout", batch_size=16, store=tmp_path_factory.mktemp("s"), progress=False,
               n_neighbors=5, embedding="tsne")
    return model, x, s


def test_class_api_shapes_and_consistency(surveyed):
    model, x, s = surveyed
    pred = model(x).argmax(-1).numpy()
    assert s.classes.tolist() == sorted(set(pred.tolist()))
    assert sum(len(s.indices(c)) for c in s.classes) == len(x)
    for c in s.classes:
        idx = s.indices(c)
        lab = s.clusters(c)
        assert lab.shape == idx.shape and s.embedding(c).shape == (len(idx), 2)
        k = s.n_clusters(c)
        assert set(lab.tolist()) == set(range(k))
        assert s.eigengap(c).shape == (len(s.eigenvalues(c)) - 1,)
        for j in range(k):
            mem = s.members(c, j)
            maps = np.asarray(s.store.maps[mem], np.float64)
            ref = (maps / np.abs(maps).reshape(len(mem), -1).max(1)[:, None, None]).mean(0)
            np.testing.assert_allclose(s.mean_map(c, j), ref, rtol=1e-12)
            assert s.hot_patches(c, j).shape == s.grid
        assert set(s.outliers(c).tolist()) <= set(idx.tolist())
    with pytest.raises(InputError, match="no images"):
        s.indices(99)


def test_confirm_equals_intervene_image_by_image(surveyed):
    model, x, s = surveyed
    c = int(s.classes[np.argmax([len(s.indices(c)) for c in s.classes])])
    before = model_state(model)
    r = s.confirm(c, 0, mode="mean", mass=0.2)
    assert (r["patches"] == s.hot_patches(c, 0, 0.2)).all() and r["patches"].sum() < 8
    assert model_state(model) == before
    hot, cold = r["patches"], r["control_patches"]
    assert hot.sum() == cold.sum() and not (hot & cold).any()
    mm = s.mean_map(c, 0)
    assert mm[cold].max() <= mm[~hot & ~cold].min()  # the coldest cells outside the hot set
    for prefix, idx in (("", s.members(c, 0)), ("rest_", np.setdiff1d(s.indices(c), s.members(c, 0)))):
        for tag, grid in (("", hot), ("control_", cold)):
            fl, dp = [], []
            for i in idx:
                xi = x[i:i + 1]
                p0 = model(xi).softmax(-1)[0].detach()
                out = vx.intervene(model, xi, torch.as_tensor(grid), mode="mean")
                p1 = out.probs[0].detach()
                fl.append(int(p1.argmax()) != int(p0.argmax()))
                dp.append(float(p1[c] - p0[c]))
            assert r[f"{prefix}n"] == len(idx)
            assert r[f"{prefix}{tag}flip_rate"] == pytest.approx(np.mean(fl))
            assert r[f"{prefix}{tag}delta_p"] == pytest.approx(np.mean(dp), abs=1e-6)
            lo, hi = r[f"{prefix}{tag}flip_rate_ci"]
            assert lo <= np.mean(fl) <= hi


def test_wilson_and_t_intervals_by_hand():
    # k=8, n=10: p=0.8, z=1.96
    z = 1.959963984540054
    p = 0.8  # n = 10
    mid = (p + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(p * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert wilson(8, 10) == pytest.approx((mid - half, mid + half))
    assert wilson(0, 0)[0] != wilson(0, 0)[0]  # nan
    v = np.array([1.0, 2.0, 3.0, 4.0])
    half_t = 3.182446305284263 * v.std(ddof=1) / 2.0  # t(0.975, 3)
    assert mean_interval(v) == pytest.approx((2.5 - half_t, 2.5 + half_t))


def test_confirm_rejects_bad_patches(surveyed):
    _, _, s = surveyed
    c = int(s.classes[0])
    with pytest.raises(InputError, match="patch"):
        s.confirm(c, 0, patches=[99])
    with pytest.raises(InputError, match="every patch"):
        s.confirm(c, 0, patches=np.ones(s.grid, bool))


def test_contrast_map_and_its_hot_patches_restated(surveyed):
    _, _, s = surveyed
    for c in s.classes:
        idx = s.indices(c)
        maps = np.asarray(s.store.maps[idx], np.float64)
        norm = maps / np.abs(maps).reshape(len(idx), -1).max(1)[:, None, None]
        np.testing.assert_allclose(s.class_mean_map(c), norm.mean(0), rtol=1e-12)
        lab = s.clusters(c)
        for k in range(s.n_clusters(c)):
            ref = norm[lab == k].mean(0) - norm.mean(0)
            np.testing.assert_allclose(s.contrast_map(c, k), ref, rtol=1e-12, atol=1e-15)
            # hot patches of the contrast map, restated: the fewest top cells holding half its positive mass
            pos = np.clip(ref, 0, None).ravel()
            hot = s.hot_patches(c, k, 0.5, contrast=True).ravel()
            if pos.sum() == 0:
                assert not hot.any()
                continue
            order = np.argsort(-pos, kind="stable")
            need = int(np.flatnonzero(np.cumsum(pos[order]) >= 0.5 * pos.sum() * (1 - 1e-12))[0]) + 1
            assert set(np.flatnonzero(hot)) == set(order[:need].tolist())


def test_scan_is_confirm_of_every_cluster_sorted(surveyed):
    _, _, s = surveyed
    c = int(s.classes[np.argmax([len(s.indices(c)) for c in s.classes])])
    rows = s.scan(classes=[c], mass=0.3)
    expect = [k for k in range(s.n_clusters(c)) if s.hot_patches(c, k, 0.3, contrast=True).any()]
    assert sorted(r["cluster"] for r in rows) == expect
    for r in rows:
        ref = s.confirm(c, r["cluster"], mass=0.3, contrast=True)
        assert (r["patches"] == ref["patches"]).all() and r["flip_rate"] == ref["flip_rate"]
        assert (r["control_patches"] == ref["control_patches"]).all()
        assert r["control_flip_rate"] == ref["control_flip_rate"]
    gaps = [r["flip_rate"] - r["control_flip_rate"] for r in rows]
    assert gaps == sorted(gaps, reverse=True)
    with pytest.raises(InputError, match="no images"):
        s.scan(classes=[99])
