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
