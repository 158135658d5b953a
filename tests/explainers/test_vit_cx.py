"""ViT-CX against a plain replica of docs/methods.md §10 (pixel-level, float64 masks)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import AgglomerativeClustering

import vit_explore as vx
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit

from ..conftest import input_for


def replica_masks(fm, size, threshold=0.1):
    """§10 steps 3-6 of (C, gh, gw) float64 features, plainly: labels, masks (K, H, W), distances."""
    H, W = size
    up = F.interpolate(fm[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    m = up.reshape(up.shape[0], -1)
    m = (m - m.min(1, keepdim=True).values) / (m.max(1, keepdim=True).values - m.min(1, keepdim=True).values)
    num = m @ m.T
    den = torch.linalg.norm(m, dim=1)[:, None] * torch.linalg.norm(m, dim=1)[None, :]
    sim = num / den
    sim[torch.isnan(sim)] = 0
    dist = (1 - sim).numpy()
    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="complete"
    ).fit(dist).labels_
    K = len(set(labels))
    merged = torch.zeros(K, H * W, dtype=torch.float64)
    for i in range(len(m)):
        merged[labels[i]] += torch.nan_to_num(m[i])  # a constant map's NaN mask adds nothing
    merged = (merged - merged.min(1, keepdim=True).values) / (
        merged.max(1, keepdim=True).values - merged.min(1, keepdim=True).values
    )
    return labels, torch.nan_to_num(merged).reshape(K, H, W), dist  # a cluster of constant maps: zero


def replica_vit_cx(model, x1, seed=0, threshold=0.1, sigma=0.1):
    """§10 for one image (1, 3, H, W), written plainly: returns sal (H, W), K, masks, deltas."""
    T = model.num_prefix_tokens
    feats = []
    h = model.blocks[-1].norm1.register_forward_hook(lambda m, a, o: feats.append(o.detach()))
    try:
        with torch.no_grad():
            p = model(x1).softmax(-1)[0]
    finally:
        h.remove()
    c = int(p.argmax())
    p_c = float(p[c])
    H, W = x1.shape[-2:]
    ph, pw = model.patch_embed.patch_size
    gh, gw = H // ph, W // pw
    f = feats[0][0, T:].double()  # (P, C)
    labels, masks, dist = replica_masks(f.T.reshape(-1, gh, gw), (H, W), threshold)
    K = len(masks)
    eps = torch.randn(K, 3, H, W, generator=torch.Generator().manual_seed(seed)) * sigma
    deltas = []
    for k in range(K):
        Mk = masks[k].float()
        xk = x1[0] * Mk + eps[k] * (1 - Mk)
        xr = x1[0] + eps[k] * (1 - Mk)
        with torch.no_grad():
            pk = model(xk[None]).softmax(-1)[0, c]
            pr = model(xr[None]).softmax(-1)[0, c]
        deltas.append(float(pk) - float(pr) + p_c)
    total = masks.sum(0)
    sal = torch.zeros(H, W, dtype=torch.float64)
    for k in range(K):
        sal += deltas[k] * masks[k] / total
    return sal / K, K, masks, torch.tensor(deltas), labels, dist


@pytest.mark.parametrize("variant", ["vanilla", "registers", "gap", "nonsquare"])
def test_matches_replica(variant):
    model = tiny_vit(variant)
    x = input_for(model, batch=2, seed=1)
    ex = vx.explain(model, x, "vit_cx", seed=4, batch_size=7)
    for b in range(2):
        sal, K, masks, deltas, labels, _dist = replica_vit_cx(model, x[b : b + 1], seed=4)
        assert ex.extras["K"][b] == K
        assert np.array_equal(ex.extras["labels"][b], labels)
        assert torch.allclose(ex.extras["masks"][b].double(), masks, atol=1e-6)
        assert ex.extras["masks"][b].min() >= 0 and ex.extras["masks"][b].max() <= 1
        assert torch.allclose(ex.extras["mask_scores"][b].double(), deltas.double(), atol=2e-6)
        assert torch.allclose(ex.extras["pixel_map"][b].double(), sal, atol=1e-6, rtol=1e-5)
        ph, pw = model.patch_embed.patch_size
        pm = F.avg_pool2d(sal[None, None], (ph, pw))[0, 0]
        assert torch.allclose(ex.patch_map[b].double(), pm, atol=1e-6, rtol=1e-5)


def test_deterministic_and_seeded():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=2, seed=2)
    a = vx.explain(model, x, "vit_cx", seed=1)
    b = vx.explain(model, x, "vit_cx", seed=1)
    c = vx.explain(model, x, "vit_cx", seed=2)
    assert torch.equal(a.patch_map, b.patch_map)
    assert not torch.allclose(a.patch_map, c.patch_map)
    one = vx.explain(model, x[1:], "vit_cx", seed=1)  # independent of the batch
    assert torch.allclose(one.patch_map[0], a.patch_map[1], atol=1e-6)


def test_no_backward_and_model_left_as_found():
    model = tiny_vit("distilled")
    model.train()
    flags = [m.training for m in model.modules()]
    rg = [p.requires_grad for p in model.parameters()]
    x = input_for(model, batch=1)
    ex = vx.explain(model, x, "vit_cx")
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == rg
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert ex.patch_map.shape == (1, 4, 4)


def test_constant_feature_maps_give_zero_masks():
    from vit_explore.explainers.vit_cx import cluster_masks

    feat = torch.randn(5, 4, 4, dtype=torch.float64)
    feat[2] = 3.0
    labels, M = cluster_masks(feat, (32, 32), 0.1)
    assert M.shape[0] == len(set(labels.tolist()))
    assert torch.isfinite(M).all()


@pytest.mark.parametrize(
    "grid,size",
    [((12, 12), (96, 96)), ((3, 5), (20, 33)), ((1, 4), (9, 40)), ((4, 4), (4, 4)), ((6, 2), (48, 7))],
)
def test_cluster_masks_equal_the_dense_float64_steps(grid, size):
    """The compiled kernels (stencils, extremes on the interval ends, bidiagonal R-space
    cosines) against upsampling every channel to the full size in float64: the same labels,
    masks within float32 rounding; grids of one row, non-square grids and sizes, no upsampling."""
    from vit_explore.explainers.vit_cx import cluster_masks

    gen = torch.Generator().manual_seed(sum(grid) + sum(size))
    base = torch.randn(4, *grid, generator=gen, dtype=torch.float64)
    # channels near one of four patterns, so that clusters of several channels form
    feat = base[torch.arange(40) % 4] + 0.05 * torch.randn(40, *grid, generator=gen, dtype=torch.float64)
    for threshold in (0.02, 0.1, 0.5):
        want_labels, want_masks, _ = replica_masks(feat, size, threshold)
        labels, M = cluster_masks(feat, size, threshold)
        assert np.array_equal(labels, want_labels)
        assert M.dtype == torch.float32 and M.shape == (len(set(want_labels)), *size)
        assert torch.allclose(M.double(), want_masks, atol=3e-7)


@pytest.mark.parametrize("out_size,in_size", [(96, 12), (20, 14), (7, 7), (8, 1), (224, 14), (5, 3), (33, 5)])
def test_upsampling_stencils_and_bidiagonal_factor(out_size, in_size):
    """What the kernels take of each axis: the stencils rebuild PyTorch's interpolation matrix
    exactly, the extreme rows are ``_extreme_rows``', and ``R`` (d, s) is a Cholesky factor of
    ``U^T U``."""
    from vit_explore.explainers import vit_cx as V

    U = V.interp_matrix(out_size, in_size)
    ax = V._axis(out_size, in_size)

    def dense(idx, w):
        D = torch.zeros(len(idx), in_size, dtype=torch.float64)
        for r, (i, v) in enumerate(zip(idx.tolist(), w.tolist())):
            D[r, i[0]] += v[0]
            if i[1] != i[0] or v[1]:
                D[r, i[1]] += v[1]
        return D

    assert torch.equal(dense(ax.full_idx, ax.full_w), U)
    assert torch.equal(dense(ax.ext_idx, ax.ext_w), U[V._extreme_rows(U)])
    R = torch.diag(torch.from_numpy(ax.d)) + torch.diag(torch.from_numpy(ax.s[:-1]), 1)
    assert ax.s[-1] == 0
    assert torch.allclose(R.T @ R, U.T @ U, atol=1e-12)


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    """Where numba finds no place to cache machine code (read-only install and home), plain
    ``njit(cache=True)`` fails at decoration; the kernels' decorator compiles uncached instead."""
    import numba
    from numba.core import config

    from vit_explore.explainers._vit_cx_kernels import _compiled

    def plus_one(a):
        return a + 1

    monkeypatch.setattr(config, "CACHE_LOCATOR_CLASSES", "ZipCacheLocator")  # never applies to a .py file
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(plus_one)
    assert _compiled()(plus_one)(np.arange(3)).tolist() == [1, 2, 3]


def test_scratch_inputs_are_never_shared():
    """The 2K-input buffer is reused between calls, never lent to two at once; the pool is bounded."""
    from vit_explore.explainers import vit_cx as V

    like = torch.zeros(1)
    with V._scratch((3, 2), like) as a, V._scratch((3, 2), like) as b:
        assert a.data_ptr() != b.data_ptr()  # a second, concurrent user gets its own
    with V._scratch((3, 2), like) as c:
        assert c.data_ptr() in (a.data_ptr(), b.data_ptr())  # returned to the pool, reused
    with V._scratch((3, 2), like.double()) as d:
        assert d.dtype == torch.float64 and d.data_ptr() not in (a.data_ptr(), b.data_ptr())
    for n in range(10):
        with V._scratch((n + 5,), like):
            pass
    assert len(V._SCRATCH) <= V._SCRATCH.entries
    big = V._SCRATCH.max_bytes // 4 + 1
    with V._scratch((big,), like) as e:
        ptr = e.data_ptr()
    assert all(t.data_ptr() != ptr for t in V._SCRATCH.values())  # too large to keep


def _sklearn_labels(dist, threshold):
    return AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="complete"
    ).fit(dist).labels_


def _random_distances(rng, n, ties):
    pts = rng.normal(size=(n, 3))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    if ties:  # few distinct values: many equal merge heights
        d = np.round(d * 2) / 2
    return d


@pytest.mark.parametrize("ties", [False, True])
def test_complete_linkage_labels_equal_sklearn(ties):
    """Label for label (cluster numbering included) what AgglomerativeClustering returns, on
    random matrices with and without tied distances, at thresholds from none merged to all."""
    from vit_explore.explainers.vit_cx import complete_linkage_labels

    rng = np.random.default_rng(5)
    for n in (2, 3, 7, 40, 90):
        d = _random_distances(rng, n, ties)
        for t in (1e-9, 0.5, 1.0, 2.0, float(d.max()) + 1):
            ours = complete_linkage_labels(d, t)
            assert ours.dtype == np.intp and np.array_equal(ours, _sklearn_labels(d, t)), (n, t)
    assert complete_linkage_labels(np.zeros((1, 1)), 0.1).tolist() == [0]
    from vit_explore.errors import InputError

    with pytest.raises(InputError, match="square"):
        complete_linkage_labels(np.zeros((3, 4)), 0.1)
    bad = _random_distances(rng, 5, ties=False)
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        complete_linkage_labels(bad, 0.1)


def test_complete_linkage_labels_equal_sklearn_on_vit_features():
    """The distances ViT-CX clusters (cosines of min-max masks), from a real model's features."""
    from vit_explore import zoo
    from vit_explore.explainers.vit_cx import complete_linkage_labels

    model = zoo.load_model("toy-shapes")
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    ex = vx.explain(model, x, "vit_cx")
    for b in range(3):
        _sal, K, _m, _d, labels, dist = replica_vit_cx(model, x[b : b + 1])
        assert np.array_equal(complete_linkage_labels(dist, 0.1), labels)
        assert ex.extras["K"][b] == K and np.array_equal(ex.extras["labels"][b], labels)


@pytest.mark.parametrize("ties", [False, True])
def test_complete_linkage_equals_scipy(ties):
    """The compiled nearest-neighbour chain gives scipy's linkage matrix exactly (children,
    heights, sizes, merge order), tied heights included."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    from vit_explore.explainers._vit_cx_kernels import complete_linkage

    rng = np.random.default_rng(11)
    for n in (2, 3, 4, 9, 31, 64, 90):
        for _ in range(6):
            y = squareform(_random_distances(rng, n, ties), checks=False)
            assert np.array_equal(complete_linkage(y, n), linkage(y, method="complete")), n


def test_nan_input_and_nan_model_get_their_own_errors():
    """vit_cx skips explain's up-front NaN scan and checks its first output instead: a NaN
    pixel still gets the input's error; a model whose weights are NaN gets its own."""
    from vit_explore.errors import InputError
    from vit_explore.explainers.vit_cx import cluster_masks

    model = tiny_vit("vanilla")
    x = input_for(model, batch=2, seed=3)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 2, 5, 7] = bad
        with pytest.raises(InputError, match="NaN or infinite values"):
            vx.explain(model, y, "vit_cx")
    broken = tiny_vit("vanilla")
    with torch.no_grad():
        broken.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="model's output is not finite"):
        vx.explain(broken, x, "vit_cx")
    feat = torch.randn(6, 4, 4)
    feat[3, 1, 2] = float("nan")
    with pytest.raises(InputError, match="not finite"):
        cluster_masks(feat, (32, 32), 0.1)


def test_checks_finite_is_for_model_level_explainers():
    from vit_explore.explainers import register_explainer

    with pytest.raises(ValueError, match="checks_finite is for model-level"):
        register_explainer("never_registered", class_specific=False, paper="", reference="", checks_finite=True)(
            lambda trace: None
        )


def test_default_batch_size_changes_nothing():
    """batch_size=None (capture/chunks.py picks the pass size on the CPU): the saliency of any
    explicit batch size, up to float rounding."""
    model = tiny_vit("vanilla")
    x = input_for(model, batch=2, seed=8)
    auto = vx.explain(model, x, "vit_cx", seed=1)
    for bs in (1, 50):
        ex = vx.explain(model, x, "vit_cx", seed=1, batch_size=bs)
        torch.testing.assert_close(auto.extras["pixel_map"], ex.extras["pixel_map"], rtol=1e-5, atol=1e-6)
    for bad in (0, -3, 2.5, "8"):
        with pytest.raises(InputError, match="batch_size"):
            vx.explain(model, x, "vit_cx", batch_size=bad)
