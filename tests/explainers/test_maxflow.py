"""layered_max_flow against a plain networkx float max-flow (docs/methods.md §6)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from vit_explore.explainers._maxflow import DEFAULT_SCALE, layered_max_flow


def nx_flow(ahat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reference: full layered DAG with float capacities, super source, one max flow per sink."""
    L, N, _ = ahat.shape
    g = nx.DiGraph()
    for i in range(N):
        g.add_edge("s", (L, i), capacity=float(w[i]))
    for i in range(1, L + 1):
        for f in range(N):
            for t in range(N):
                g.add_edge((i, f), (i - 1, t), capacity=float(ahat[i - 1, f, t]))
    return np.array([nx.maximum_flow_value(g, "s", (0, t)) for t in range(N)])


def random_ahat(L: int, N: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((L, N, N)) / temperature
    a = np.exp(z - z.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    a = a + np.eye(N)
    return a / a.sum(-1, keepdims=True)


def bound(L: int, N: int) -> float:
    """Documented bound E_t / scale, E_t = N + (L-1) N^2 + N edges of a sink-reduced network."""
    return (2 * N + (L - 1) * N * N) / DEFAULT_SCALE


def sources(N: int) -> dict[str, np.ndarray]:
    cls = np.zeros(N)
    cls[0] = 1
    two = np.zeros(N)
    two[:2] = 0.5
    uni = np.r_[0.0, np.full(N - 1, 1 / (N - 1))]
    return {"cls": cls, "two": two, "uniform": uni}


@pytest.mark.parametrize("L,N", [(3, 6), (4, 10)])
@pytest.mark.parametrize("seed,temperature", [(0, 1.0), (1, 0.3), (2, 0.1)])
@pytest.mark.parametrize("src", ["cls", "two", "uniform"])
def test_matches_networkx(L, N, seed, temperature, src):
    ahat = random_ahat(L, N, seed, temperature)
    w = sources(N)[src]
    ref = nx_flow(ahat, w)
    got = layered_max_flow(ahat, w)
    assert got.shape == (N,) and got.dtype == np.float64
    # rounded-down capacities: never above the exact value, at most E_t/scale below it
    assert np.all(got <= ref + 1e-12)
    assert np.all(ref - got <= bound(L, N))


def test_matches_networkx_deep_truncation_path():
    # L > 3 and N > 5 exercise both cheap subnetworks and the full fallback
    ahat = random_ahat(6, 12, seed=5, temperature=0.5)
    w = sources(12)["cls"]
    ref = nx_flow(ahat, w)
    got = layered_max_flow(ahat, w)
    assert np.all(got <= ref + 1e-12) and np.all(ref - got <= bound(6, 12))


def test_sinks_subset_and_workers():
    ahat = random_ahat(4, 10, seed=3, temperature=0.3)
    w = sources(10)["two"]
    full = layered_max_flow(ahat, w)
    sub = layered_max_flow(ahat, w, sinks=np.array([7, 2]))
    np.testing.assert_array_equal(sub, full[[7, 2]])
    np.testing.assert_array_equal(layered_max_flow(ahat, w, workers=2), full)


def test_hand_computed():
    # L=2, N=2, source (2,0) with weight 1.
    #   layer 2 -> 1 (ahat[1]): (2,0)->(1,0) 0.6, (2,0)->(1,1) 0.4
    #   layer 1 -> 0 (ahat[0]): (1,0)->(0,0) 0.9, (1,0)->(0,1) 0.1,
    #                           (1,1)->(0,0) 0.3, (1,1)->(0,1) 0.7
    # sink (0,0): paths via (1,0): min(0.6, 0.9)=0.6, via (1,1): min(0.4, 0.3)=0.3 -> 0.9
    # sink (0,1): via (1,0): min(0.6, 0.1)=0.1, via (1,1): min(0.4, 0.7)=0.4 -> 0.5
    # (the two paths share no edge, so the max flow is the sum)
    ahat = np.array([[[0.9, 0.1], [0.3, 0.7]], [[0.6, 0.4], [0.5, 0.5]]])
    got = layered_max_flow(ahat, np.array([1.0, 0.0]))
    np.testing.assert_allclose(got, [0.9, 0.5], atol=bound(2, 2))
    # L=1: s -> (1,f) with w_f, (1,f) -> (0,t) with ahat[0,f,t]: flow = sum_f min(w_f, ahat[0,f,t])
    a1 = np.array([[[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]]])
    w = np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(layered_max_flow(a1, w), [0.2 + 0.1 + 0.25, 0.5 + 0.1 + 0.2, 0.3 + 0.25 + 0.2], atol=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_invariant_cut_bounds(temperature):
    # max flow <= min(total source capacity, column sum of layer 0 into the sink)
    ahat = random_ahat(8, 30, seed=7, temperature=temperature)
    w = sources(30)["uniform"]
    got = layered_max_flow(ahat, w)
    assert np.all(got >= 0)
    assert np.all(got <= np.minimum(w.sum(), ahat[0].sum(axis=0)) + 1e-12)


def test_rejects_bad_input():
    a = random_ahat(2, 4, seed=0)
    with pytest.raises(ValueError):
        layered_max_flow(-a, np.ones(4) / 4)
    with pytest.raises(ValueError):
        layered_max_flow(a, np.ones(3))
    with pytest.raises(ValueError):
        layered_max_flow(a, np.ones(4) / 4, scale=2.0**40)


def scipy_int_flow(caps: np.ndarray, w_int: np.ndarray, t: int) -> int:
    """Independent exact integer reference: scipy's Dinic on the whole (L+1)N-node network."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import maximum_flow

    L, N, _ = caps.shape
    n = 1 + (L + 1) * N  # 0 = source; (i, f) -> 1 + i N + f
    rows, cols, data = [np.zeros(N, int)], [1 + L * N + np.arange(N)], [w_int]
    f, g = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    for i in range(1, L + 1):
        rows.append((1 + i * N + f).ravel())
        cols.append((1 + (i - 1) * N + g).ravel())
        data.append(caps[i - 1].ravel())
    graph = sp.csr_matrix((np.concatenate(data).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, n))
    return int(maximum_flow(graph, 0, 1 + t, method="dinic").flow_value)


@pytest.mark.parametrize("L,N,seed,temperature,src", [
    (1, 7, 0, 1.0, "uniform"), (2, 9, 1, 0.05, "cls"), (5, 16, 2, 1.0, "cls"), (5, 16, 3, 0.05, "two"),
    (7, 20, 4, 0.2, "uniform"), (12, 24, 5, 0.1, "cls"),
])
@pytest.mark.parametrize("k_init", [0, 1, 2, 30])
def test_kernel_equals_integer_max_flow(L, N, seed, temperature, src, k_init):
    # The compiled kernel's integer values equal scipy's integer max flow of the full network
    # exactly, whatever the initial active set (k_init=0: nearly every edge is found by the cut
    # check; 30 > N: all active from the start); zeroed edges exercise the capacity-0 rule.
    from vit_explore.explainers._maxflow_kernel import solve_sinks

    rng = np.random.default_rng(seed)
    ahat = random_ahat(L, N, seed, temperature)
    ahat[rng.random(ahat.shape) < 0.2] = 0.0
    caps = np.floor(ahat * DEFAULT_SCALE).astype(np.int64)
    w_int = np.floor(sources(N)[src] * DEFAULT_SCALE).astype(np.int64)
    sinks = rng.permutation(N)
    got = solve_sinks(caps, w_int, sinks, k_init)
    ref = np.array([scipy_int_flow(caps, w_int, int(t)) for t in sinks])
    np.testing.assert_array_equal(got, ref)


def test_kernel_peaky_against_networkx():
    # trained-like peaky attention, deep network: float networkx max flow within the bound
    ahat = random_ahat(10, 14, seed=11, temperature=0.02)
    for w in sources(14).values():
        ref = nx_flow(ahat, w)
        got = layered_max_flow(ahat, w)
        assert np.all(got <= ref + 1e-12) and np.all(ref - got <= bound(10, 14))
