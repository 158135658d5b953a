"""Max-flow values of attention flow's layered networks (Abnar & Zuidema 2020; docs/methods.md §6).

The network for layer-wise attention ``ahat`` (``L`` blocks, ``N`` tokens) has nodes
``(i, t)``, ``i = 0..L``, and edges ``(i, f) -> (i-1, g)`` with capacity ``ahat[i-1, f, g]``;
a super source ``s`` feeds ``(L, i)`` with capacity ``source_weights[i]``. We need the
max-flow value from ``s`` to every input node ``(0, t)``.

Exact reductions used (they do not change any max-flow value):

* Sink reduction: for sink ``(0, t)`` the other input nodes are dead ends, so layer 0 only
  contributes the ``N`` edges ``(1, f) -> T`` with capacity ``ahat[0, f, t]``. All sinks
  share the rest of the network; only those ``N`` capacities change between sinks.
* Top-layer nodes with zero source weight are unreachable; their out-edges are dropped
  (for a CLS source this removes ``N² - N`` edges).
* Edges whose scaled capacity is 0 are dropped.

The max flows are solved in integers by ``_maxflow_kernel.solve_sinks`` (numba): Dinic's
algorithm on a sparse active subset of the edges, grown until a minimum cut of the active
network is also a cut of the full network of the same capacity (then it is the full
network's max flow; see that module). The answer is therefore always the max-flow value of
the full network with capacities rounded down to multiples of ``1/scale``; the active set
only changes the time.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["layered_max_flow"]

_INT32_MAX = 2**31 - 1
DEFAULT_SCALE = float(2**30)
_K_INIT = 2  # largest capacities per row in the initial active set (besides the diagonal)


def _solve_sinks(caps: np.ndarray, w_int: np.ndarray, sinks: np.ndarray) -> np.ndarray:
    from ._maxflow_kernel import solve_sinks

    return solve_sinks(caps, w_int, sinks, _K_INIT)


def _solve_chunk(args):
    return _solve_sinks(*args)


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
        Capacities are rounded down to multiples of ``1/scale`` (the solver works in exact
        integers). ``scale * max capacity`` must stay below ``2**31``.
    workers:
        Processes used to split the sinks (``None`` or ``1``: none). Only worth it when
        cores are free; start-up costs about 0.1 s, more than the flows of a ViT-B/16 image.

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

    caps = np.ascontiguousarray(np.floor(ahat * scale).astype(np.int64))
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
