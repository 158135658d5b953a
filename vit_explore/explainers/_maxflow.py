"""Max-flow kernel for attention flow (Abnar & Zuidema 2020; docs/methods.md §6).

The network for layer-wise attention ``ahat`` (``L`` blocks, ``N`` tokens) has nodes
``(i, t)``, ``i = 0..L``, and edges ``(i, f) -> (i-1, g)`` with capacity ``ahat[i-1, f, g]``;
a super source ``s`` feeds ``(L, i)`` with capacity ``source_weights[i]``. We need the
max-flow value from ``s`` to every input node ``(0, t)``.

Exact reductions used (they do not change any max-flow value):

* Sink reduction: for sink ``(0, t)`` the other input nodes are dead ends, so layer 0 only
  contributes the ``N`` edges ``(1, f) -> T`` with capacity ``ahat[0, f, t]``. All sinks
  therefore share one CSR structure; only those ``N`` capacities change between sinks.
* Top-layer nodes with zero source weight are unreachable; their out-edges are dropped
  (for a CLS source this removes ``N² - N`` edges).
* Edges whose scaled capacity is 0 are dropped.

Speed: ``scipy.sparse.csgraph.maximum_flow`` spends most of its time (~80% for ViT-B) in
per-call O(E) preprocessing (two CSR transposes), not in Dinic itself, and does not release
the GIL. So each sink is first solved on cheaper subnetworks whose flows are flows of the
full network (lower bounds):

* A: only the bottom ``_TRUNCATE_DEPTH`` layers, fed by a deliverable supply (the
  rollout-like preflow into that layer);
* B: all layers, but per layer only the diagonal, column ``t`` and the largest
  ``_SPARSE_TOPK`` capacities of each row and column.

If such a value equals a cheap cut of the full scaled network (source cut, or per
layer-1 node the smaller of its sink edge and its in-capacity), it is the exact max flow of
the full scaled network; otherwise the next candidate, finally the full network, is
solved. A subnetwork that certifies fewer than a quarter of the first sinks it sees is
switched off. The answer is therefore always the max-flow value of the full network with
capacities rounded down to multiples of ``1/scale``; the subnetworks only change the time.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_flow

__all__ = ["layered_max_flow"]

_INT32_MAX = 2**31 - 1
DEFAULT_SCALE = float(2**30)
# Cheap subnetworks tried before the full one (see _solve_sinks).
_TRUNCATE_DEPTH = 3
_SPARSE_TOPK = 4


class _Network:
    """One CSR structure for all sinks: s, layers L..1, super sink T (the chosen ``(0, t)``)."""

    def __init__(self, caps: np.ndarray, w_int: np.ndarray, keep: list[np.ndarray] | None):
        L, N, _ = caps.shape
        self.L, self.N = L, N
        self.n_nodes = 2 + L * N
        sink = self.n_nodes - 1

        def node(layer: int, tok: np.ndarray) -> np.ndarray:
            return 1 + (L - layer) * N + tok

        active = w_int > 0
        src_tok = np.flatnonzero(active)
        counts = [np.array([src_tok.size])]
        indices = [node(L, src_tok)]
        data = [w_int[src_tok]]
        for i in range(L, 1, -1):  # edges (i, f) -> (i-1, g), capacity caps[i-1, f, g]
            m = caps[i - 1] > 0
            if keep is not None:
                m &= keep[i - 1]
            if i == L:
                m &= active[:, None]
            f, g = np.nonzero(m)  # row-major: sorted by f, then g
            counts.append(np.bincount(f, minlength=N))
            indices.append(node(i - 1, g))
            data.append(caps[i - 1][f, g])
        counts.append(np.ones(N, dtype=np.int64))  # (1, f) -> T
        indices.append(np.full(N, sink))
        data.append(np.zeros(N, dtype=np.int64))
        counts.append(np.zeros(1, dtype=np.int64))  # T
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
        self.graph = sp.csr_matrix(
            (
                np.concatenate(data).astype(np.int32),
                np.concatenate(indices).astype(np.int32),
                indptr.astype(np.int32),
            ),
            shape=(self.n_nodes, self.n_nodes),
        )
        self.graph.has_sorted_indices = True
        self.sink = sink
        self.sink_slice = slice(self.graph.nnz - N, self.graph.nnz)

    @property
    def nnz(self) -> int:
        return int(self.graph.nnz)

    def solve(self, sink_caps: np.ndarray) -> int:
        self.graph.data[self.sink_slice] = sink_caps
        return int(maximum_flow(self.graph, 0, self.sink, method="dinic").flow_value)


def _topk_mask(caps: np.ndarray, k: int) -> list[np.ndarray]:
    """Per layer, keep the diagonal and the ``k`` largest capacities of every row and column."""
    N = caps.shape[-1]
    out = []
    for c in caps:
        if k >= N:
            out.append(np.ones((N, N), dtype=bool))
            continue
        m = np.eye(N, dtype=bool)
        rows = np.argpartition(c, N - k, axis=1)[:, N - k :]
        m[np.arange(N)[:, None], rows] = True
        cols = np.argpartition(c, N - k, axis=0)[N - k :, :]
        m[cols, np.arange(N)[None, :]] = True
        out.append(m)
    return out


def _rollout_supply(caps: np.ndarray, w_int: np.ndarray, k: int) -> np.ndarray:
    """Inflow into layer ``k`` of a preflow that splits every node's inflow along its row.

    Each node forwards ``min(inflow, row capacity)`` proportionally (rounded down), so every
    edge stays within capacity and no node sends more than it receives. Returning the
    excess of the nodes above layer ``k`` to the source leaves a valid flow, so this
    vector is deliverable to layer ``k`` and a flow of the truncated network fed by it is a
    flow of the full network.
    """
    x = w_int.astype(np.int64)
    for i in range(caps.shape[0], k, -1):
        c = caps[i - 1]
        rs = c.sum(axis=1)
        out = np.minimum(x, rs)
        x = ((out[:, None] * c) // np.maximum(rs, 1)[:, None]).sum(axis=0)
    return np.minimum(x, _INT32_MAX)


class _Tier:
    """A cheaper subnetwork whose max flow lower-bounds the full one; switched off if it rarely certifies."""

    def __init__(self, solve, probe: int = 12, min_rate: float = 0.25):
        self.solve, self.tried, self.hits = solve, 0, 0
        self.probe, self.min_rate = probe, min_rate

    @property
    def active(self) -> bool:
        return self.tried < self.probe or self.hits >= self.min_rate * self.tried

    def __call__(self, t: int, upper: int) -> bool | int:
        self.tried += 1
        v = self.solve(t)
        if v == upper:
            self.hits += 1
            return v
        return False


def _solve_chunk(args):
    return _solve_sinks(*args)


def _solve_sinks(caps: np.ndarray, w_int: np.ndarray, sinks: np.ndarray) -> np.ndarray:
    L, N, _ = caps.shape
    sink_caps = caps[0]  # column t: capacities (1, f) -> (0, t)
    # Cheap cuts of the full scaled network (integers, so certification is exact): the
    # source cut, and per layer-1 node the smaller of its sink edge and its in-capacity.
    if L >= 2:
        rows = w_int > 0 if L == 2 else np.ones(N, dtype=bool)
        in_cap = caps[1][rows].sum(axis=0)
        upper = np.minimum(sink_caps[:, sinks], in_cap[:, None]).sum(axis=0)
    else:
        upper = np.minimum(sink_caps[:, sinks], w_int[:, None]).sum(axis=0)
    upper = np.minimum(upper, w_int.sum())

    tiers: list[_Tier] = []
    if L > _TRUNCATE_DEPTH:
        # Tier A: bottom layers only, fed by a deliverable (rollout-like) supply.
        k = _TRUNCATE_DEPTH
        trunc = _Network(caps[:k], _rollout_supply(caps, w_int, k), None)
        tiers.append(_Tier(lambda t: trunc.solve(sink_caps[:, t])))
    if L >= 2 and N > _SPARSE_TOPK + 1:
        # Tier B: all layers, sink-specific sparse edges (diagonal, column t, top-k).
        base = _topk_mask(caps[1:], _SPARSE_TOPK)

        def sparse(t: int) -> int:
            keep = [None]
            for b in base:
                b = b.copy()
                b[:, t] = True
                keep.append(b)
            return _Network(caps, w_int, keep).solve(sink_caps[:, t])

        tiers.append(_Tier(sparse))

    full: _Network | None = None
    out = np.empty(len(sinks), dtype=np.int64)
    for j, t in enumerate(sinks):
        for tier in tiers:
            if tier.active and (v := tier(t, upper[j])) is not False:
                out[j] = v
                break
        else:
            if full is None:
                full = _Network(caps, w_int, None)
            out[j] = full.solve(sink_caps[:, t])
    return out


def layered_max_flow(
    ahat: np.ndarray,
    source_weights: np.ndarray,
    *,
    sinks: np.ndarray | None = None,
    scale: float = DEFAULT_SCALE,
    workers: int | None = None,
) -> np.ndarray:
    """Max-flow values from a weighted super source to the input nodes ``(0, t)``.

    Parameters
    ----------
    ahat:
        ``(L, N, N)`` non-negative capacities, layer 0 first: ``ahat[i-1, f, g]`` is the
        capacity of edge ``(i, f) -> (i-1, g)`` (residual-augmented, row-normalised
        head-mean attention in attention flow).
    source_weights:
        ``(N,)`` non-negative; edge ``s -> (L, i)`` has capacity ``source_weights[i]``
        (CLS: ``e_0``, which equals the reference's max flow from ``(L, 0)`` when row sums
        are 1; DeiT-distilled: ``(e_0 + e_1)/2``; pooled models: uniform over patches).
    sinks:
        Token indices ``t`` to compute (default: all ``N``).
    scale:
        Capacities are rounded down to multiples of ``1/scale`` (scipy's solver needs
        integers). ``scale * max capacity`` must stay below ``2**31``.
    workers:
        Processes used to split the sinks (``None`` or ``1``: none). Only worth it when
        cores are free; start-up costs about 0.1 s.

    Returns
    -------
    ``(len(sinks),)`` float64 (``(N,)`` by default), unnormalised, in the order of ``sinks``.

    Error bound
    -----------
    The value returned for sink ``t`` is exactly the max flow ``F'`` of the same network
    with every capacity ``c`` replaced by ``floor(scale*c)/scale``. Since ``F'`` is a
    feasible flow of the true network and the true min cut is at most the rounded min cut
    ``C'`` plus ``|C'|/scale``::

        0 <= F_exact - F_returned <= |C'| / scale <= E_t / scale

    where ``|C'|`` is the number of edges (with positive true capacity) of a minimum cut
    of the rounded network and ``E_t <= N + (L-1) N² + N`` is the number of edges of the
    sink-reduced network (for ViT-B/16, ``E_t/scale <= 4e-4`` with the default scale; in
    practice the minimum cut is mostly the ``N`` sink edges, giving ``<= N/scale ≈ 2e-7``).
    """
    ahat = np.asarray(ahat, dtype=np.float64)
    w = np.asarray(source_weights, dtype=np.float64)
    if ahat.ndim != 3 or ahat.shape[1] != ahat.shape[2]:
        raise ValueError(f"ahat must be (L, N, N), got {ahat.shape}")
    L, N, _ = ahat.shape
    if L < 1:
        raise ValueError("ahat needs at least one layer")
    if w.shape != (N,):
        raise ValueError(f"source_weights must be ({N},), got {w.shape}")
    if not (np.isfinite(ahat).all() and np.isfinite(w).all()):
        raise ValueError("ahat and source_weights must be finite")
    if (ahat < 0).any() or (w < 0).any():
        raise ValueError("ahat and source_weights must be non-negative")
    if not scale > 0:
        raise ValueError("scale must be positive")
    cmax = max(float(ahat.max(initial=0.0)), float(w.max(initial=0.0)))
    if np.floor(cmax * scale) > _INT32_MAX:
        raise ValueError(f"scale {scale} too large: capacities up to {cmax} overflow int32")
    sinks = np.arange(N) if sinks is None else np.asarray(sinks, dtype=np.int64).reshape(-1)
    if sinks.size and (sinks.min() < 0 or sinks.max() >= N):
        raise ValueError("sinks out of range")

    caps = np.floor(ahat * scale).astype(np.int64)
    w_int = np.floor(w * scale).astype(np.int64)

    workers = 1 if workers is None else int(workers)
    if workers > 1 and sinks.size > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in mp.get_all_start_methods() and os.name == "posix" else None
        ctx = mp.get_context(method)
        chunks = [c for c in np.array_split(sinks, workers) if c.size]
        with ProcessPoolExecutor(len(chunks), mp_context=ctx) as ex:
            parts = list(ex.map(_solve_chunk, [(caps, w_int, c) for c in chunks]))
        values = np.concatenate(parts)
    else:
        values = _solve_sinks(caps, w_int, sinks)
    return values.astype(np.float64) / scale
