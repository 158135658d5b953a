"""SpRAy's steps against restatements: planted groups of maps are found with the right number of
clusters, the Laplacian spectrum equals a dense float64 one, hot/cold masks match hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import laplacian
from sklearn.metrics import adjusted_rand_score

from vit_explore.errors import InputError
from vit_explore.survey import spray


def _planted(n_per=40, groups=3, seed=0):
    """Maps (n, 6, 6): a bright 2x2 spot in a group-specific corner over noise."""
    rng = np.random.default_rng(seed)
    spots = [(0, 0), (0, 4), (4, 0), (4, 4)][:groups]
    maps, truth = [], []
    for g, (r, c) in enumerate(spots):
        m = rng.uniform(0, 0.2, size=(n_per, 6, 6))
        m[:, r:r + 2, c:c + 2] += rng.uniform(0.8, 1.2, size=(n_per, 2, 2))
        maps.append(m * rng.uniform(0.5, 3.0, size=(n_per, 1, 1)))  # scale must not matter
        truth += [g] * n_per
    return np.concatenate(maps), np.array(truth)


@pytest.mark.parametrize("clustering", spray.CLUSTERINGS)
@pytest.mark.parametrize("groups", [2, 3, 4])
def test_planted_groups_are_found(groups, clustering):
    maps, truth = _planted(groups=groups)
    a = spray.analyse(maps, clustering=clustering, embedding="tsne")
    assert a.suggested_k == groups
    assert adjusted_rand_score(truth, a.labels) == 1.0
    assert a.embedding.shape == (len(maps), 2) and np.isfinite(a.embedding).all()
    # labels are numbered by decreasing size
    sizes = np.bincount(a.labels)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_spectrum_equals_dense_laplacian():
    maps, _ = _planted(n_per=30)
    X = spray.normalise(maps)
    A = spray.knn_affinity(X, 10)
    w, V = spray.spectral(A, 5)
    L = laplacian(A.toarray().astype(np.float64), normed=True)
    ref = np.linalg.eigvalsh(L)[:5]
    np.testing.assert_allclose(w, ref, atol=1e-9)
    for j in range(5):  # each returned vector is an eigenvector of L with its eigenvalue
        np.testing.assert_allclose(L @ V[:, j], w[j] * V[:, j], atol=1e-8)


def test_sparse_solver_agrees_with_dense():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (800, 5)), rng.normal(6, 1, (800, 5))])
    A = spray.knn_affinity(X, 10)
    w, _ = spray.spectral(A, 4)  # n = 1600 takes the sparse (eigsh) path
    ref = np.linalg.eigvalsh(laplacian(A.toarray(), normed=True))[:4]
    np.testing.assert_allclose(w, ref, atol=1e-6)


def test_normalise_and_downsample():
    m = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4) - 5
    X = spray.normalise(m, downsample=2)
    scaled = m / np.abs(m).reshape(2, -1).max(1)[:, None, None]
    ref = scaled.reshape(2, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(2, -1)
    np.testing.assert_allclose(X, ref)
    with pytest.raises(InputError, match="divide"):
        spray.normalise(m, downsample=3)


def test_hot_and_cold_masks_by_hand():
    mm = np.array([[0.5, 0.2], [0.2, -1.0]])
    # positive mass 0.9: 0.5 alone holds 0.56 >= 0.5
    np.testing.assert_array_equal(spray.hot_mask(mm, 0.5), [[True, False], [False, False]])
    # 0.7 of the mass: 0.5 + the first 0.2 (stable order) = 0.7/0.9 = 0.78
    np.testing.assert_array_equal(spray.hot_mask(mm, 0.7), [[True, True], [False, False]])
    np.testing.assert_array_equal(spray.hot_mask(mm, 1.0), [[True, True], [True, False]])
    assert not spray.hot_mask(-np.abs(mm), 0.5).any()
    np.testing.assert_array_equal(spray.cold_mask(mm, 2), [[False, True], [False, True]])
    with pytest.raises(InputError, match="mass"):
        spray.hot_mask(mm, 0.0)


def test_each_normalisation_by_hand():
    m = np.array([[[2.0, -1.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(spray.normalise(m, norm="max")[0], [1.0, -0.5, 0.0, 0.5])
    np.testing.assert_allclose(spray.normalise(m, norm="sum")[0], [0.5, -0.25, 0.0, 0.25])  # |.| sums to 4
    np.testing.assert_array_equal(spray.normalise(m, norm="none"), m.reshape(2, -1))
    for norm in spray.NORMS:  # an all-zero map stays zero, never NaN
        np.testing.assert_array_equal(spray.normalise(m, norm=norm)[1], 0.0)
    with pytest.raises(InputError, match="normalisation"):
        spray.normalise(m, norm="l2")


def _same_shape_two_sizes(n_per=60, seed=0):
    """Occlusion-like maps (n, 6, 6): every map drops most at the corner patch (0, 0) and less on an
    object in the middle, in the same proportions; group 1's drops are three times group 0's (the
    images that rely on the corner enough to flip), so only the size tells the groups apart."""
    rng = np.random.default_rng(seed)
    base = np.zeros((6, 6))
    base[0, 0], base[2:4, 2:4] = 0.3, 0.15
    maps, truth = [], []
    for g, size in enumerate((1.0, 3.0)):
        m = base * size + rng.normal(0, 0.02, size=(n_per, 6, 6))
        maps.append(m)
        truth += [g] * n_per
    return np.concatenate(maps), np.array(truth)


def test_unscaled_maps_separate_groups_that_differ_only_in_size():
    maps, truth = _same_shape_two_sizes()
    a = spray.analyse(maps, norm="none", embedding="tsne")
    assert a.suggested_k == 2
    assert adjusted_rand_score(truth, a.labels) == 1.0
    np.testing.assert_array_equal(a.features, maps.reshape(len(maps), -1))
    # dividing by the largest value makes the two groups the same shape: the size, the evidence, is gone
    X = spray.normalise(maps, norm="max")
    gap = np.linalg.norm(X[truth == 0].mean(0) - X[truth == 1].mean(0))
    spread = np.linalg.norm(X - X.mean(0), axis=1).mean()
    assert gap < spread
    assert adjusted_rand_score(truth, spray.analyse(maps, norm="max", embedding="tsne").labels) < 0.5


def test_auto_norm_keeps_probability_drops_and_scales_relevance():
    assert spray.auto_norm("occlusion", {"score": "prob", "window": 1}) == "none"
    assert spray.auto_norm("occlusion", {"score": "logit"}) == "max"  # logits differ in scale between images
    assert spray.auto_norm("chefer_lrp", {"start_layer": 0}) == "max"
    assert spray.auto_norm("rollout", {}) == "max"
