"""Compiled max-flow kernel for attention flow's layered networks (docs/methods.md §6).

Integer capacities (exact arithmetic), numba; the machine code is cached on disk (the first
call in a fresh environment compiles for a few seconds, once). The network of
``_maxflow.layered_max_flow``: nodes ``(i, f)``, ``i = 1..L``, edges ``(i, f) -> (i-1, g)`` with capacity ``caps[i-1, f, g]``
(``i >= 2``), a super source ``s -> (L, f)`` with capacity ``w[f]`` and, for sink ``t``, the
edges ``(1, f) -> T`` with capacity ``caps[0, f, t]`` (the sink reduction).

Edge generation (exact): each sink ``t`` is solved by Dinic's algorithm on an *active* subset
of the inner edges (at first the diagonal and the ``k`` largest capacities of each row, shared
by all sinks, plus column ``t`` of every layer). When no
augmenting path is left, ``S`` (the nodes reachable from ``s`` in the residual network) is a
minimum cut of the active network. Every inactive edge carries no flow, so if no inactive edge
with positive capacity leaves ``S``, the capacity of ``S`` in the *full* network equals the flow
value, which is therefore the full network's max flow (weak duality). Otherwise those edges are
activated and the augmentation resumes from the current flow (still feasible), until none is
left. Then the edges activated for ``t`` are dropped again, so that the shared set stays small
(kept, they made the later sinks' scans ever longer).

Node ids: ``(i, f) -> (i-1) N + f``; ``s = L N``; ``T = L N + 1``. Each node keeps its arcs
(active edges and their reverses) in one row of slots, ``head``/``res``/``rev`` (``2N`` slots:
at most ``N`` edges out and ``N`` in), so a scan reads contiguous memory; the sink edges are
every layer-1 node's first arc, their capacities set per sink.
"""

from __future__ import annotations

import numpy as np

from ._numba import compiled

_compiled = compiled()
_inline = compiled(inline="always")  # a helper inlined into its callers by numba (no call per arc)


@_inline
def _add_edge(u, v, cap, head, res, cap0, rev, cnt):  # pragma: no cover - compiled
    a, b = cnt[u], cnt[v]
    head[u, a], res[u, a], cap0[u, a], rev[u, a] = v, cap, cap, b
    head[v, b], res[v, b], cap0[v, b], rev[v, b] = u, 0, 0, a
    cnt[u] = a + 1
    cnt[v] = b + 1


@_compiled
def _bfs(s, T, head, res, cnt, level, queue):  # pragma: no cover - compiled
    """Residual BFS levels from ``s`` (-1: unreachable); True if ``T`` is reachable."""
    level[:] = -1
    level[s] = 0
    queue[0] = s
    qh, qt = 0, 1
    while qh < qt:
        u = queue[qh]
        qh += 1
        if level[T] >= 0 and level[u] >= level[T]:
            break
        lu = level[u] + 1
        for k in range(cnt[u]):
            v = head[u, k]
            if res[u, k] > 0 and level[v] < 0:
                level[v] = lu
                if v != T:
                    queue[qt] = v
                    qt += 1
    return level[T] >= 0


@_compiled
def _blocking_flow(s, T, head, res, rev, cnt, level, it, su, sk):  # pragma: no cover - compiled
    """Dinic's blocking flow on the level graph, current-arc pointers ``it``; returns its value."""
    it[:] = 0
    total = 0
    depth = 0
    su[0] = s
    while True:
        u = su[depth]
        if u == T:
            d = res[su[0], sk[0]]
            for x in range(1, depth):
                d = min(d, res[su[x], sk[x]])
            first = -1
            for x in range(depth):
                a, b = su[x], sk[x]
                res[a, b] -= d
                res[head[a, b], rev[a, b]] += d
                if first < 0 and res[a, b] == 0:
                    first = x
            total += d
            depth = first  # resume below the first saturated arc (its pointer skips it next)
            continue
        advanced = False
        lu = level[u] + 1
        while it[u] < cnt[u]:
            k = it[u]
            v = head[u, k]
            if res[u, k] > 0 and level[v] == lu:
                sk[depth] = k
                depth += 1
                su[depth] = v
                advanced = True
                break
            it[u] += 1
        if not advanced:
            if depth == 0:
                return total
            level[u] = -2  # dead end for the rest of this phase
            depth -= 1
            it[su[depth]] += 1


@_compiled
def solve_sinks(caps, w, sinks, k_init):  # pragma: no cover - compiled
    """Max-flow values (int64) from ``s`` to each sink ``t`` in ``sinks``.

    Args:
        caps: (L, N, N) int64 non-negative capacities (layer 0 first; ``caps[0][:, t]`` are the
            sink edges of sink ``t``).
        w: (N,) int64 source capacities.
        sinks: (S,) int64 token indices.
        k_init: largest capacities of each row activated at the start (besides the diagonal).
    """
    L, N = caps.shape[0], caps.shape[1]
    nn = L * N + 2
    s, T = L * N, L * N + 1
    slots = 2 * N + 1
    head = np.empty((nn, slots), np.int32)
    res = np.empty((nn, slots), np.int64)
    cap0 = np.empty((nn, slots), np.int64)
    rev = np.empty((nn, slots), np.int32)
    cnt = np.zeros(nn, np.int64)
    act = np.zeros((L, N, N), np.bool_)  # act[j, f, g]: edge (j+1, f) -> (j, g) is active
    level = np.empty(nn, np.int64)
    queue = np.empty(nn, np.int64)
    it = np.zeros(nn, np.int64)
    su = np.empty(nn + 1, np.int64)
    sk = np.empty(nn + 1, np.int64)
    for f in range(N):  # sink edges first: arc 0 of every layer-1 node
        _add_edge(f, T, 0, head, res, cap0, rev, cnt)
    for f in range(N):
        if w[f] > 0:
            _add_edge(s, (L - 1) * N + f, w[f], head, res, cap0, rev, cnt)
    taken = np.zeros(N, np.bool_)
    for j in range(1, L):
        for f in range(N):
            if j == L - 1 and w[f] <= 0:
                continue  # a top node without source capacity never carries flow
            taken[:] = False
            u = j * N + f
            if caps[j, f, f] > 0:
                _add_edge(u, (j - 1) * N + f, caps[j, f, f], head, res, cap0, rev, cnt)
                act[j, f, f] = True
                taken[f] = True
            for _ in range(min(k_init, N)):
                best, arg = np.int64(0), -1
                for g in range(N):
                    if not taken[g] and caps[j, f, g] > best:
                        best, arg = caps[j, f, g], g
                if arg < 0:
                    break
                taken[arg] = True
                _add_edge(u, (j - 1) * N + arg, best, head, res, cap0, rev, cnt)
                act[j, f, arg] = True
    base = cnt.copy()
    out = np.empty(sinks.shape[0], np.int64)
    unreach = np.empty(N, np.int64)
    for si in range(sinks.shape[0]):
        t = sinks[si]
        for f in range(N):
            cap0[f, 0] = res[f, 0] = caps[0, f, t]
        # column t of every inner layer: the flow into token t's own path
        for j in range(1, L):
            for f in range(N):
                if caps[j, f, t] > 0 and not act[j, f, t] and (j < L - 1 or w[f] > 0):
                    _add_edge(j * N + f, (j - 1) * N + t, caps[j, f, t], head, res, cap0, rev, cnt)
                    act[j, f, t] = True
        value = np.int64(0)
        while True:
            while _bfs(s, T, head, res, cnt, level, queue):
                value += _blocking_flow(s, T, head, res, rev, cnt, level, it, su, sk)
            # level >= 0: the source side S of a minimum cut of the active network
            added = 0
            for j in range(1, L):
                nu = 0
                for g in range(N):
                    if level[(j - 1) * N + g] < 0:
                        unreach[nu] = g
                        nu += 1
                if nu == 0:
                    continue
                for f in range(N):
                    if level[j * N + f] < 0:
                        continue
                    for x in range(nu):
                        g = unreach[x]
                        if caps[j, f, g] > 0 and not act[j, f, g]:
                            _add_edge(j * N + f, (j - 1) * N + g, caps[j, f, g], head, res, cap0, rev, cnt)
                            act[j, f, g] = True
                            added += 1
            if added == 0:
                break
        out[si] = value
        # back to the base set (edges added for this sink sit at the ends of the rows), no flow
        for u in range(nn):
            for k in range(base[u], cnt[u]):
                if cap0[u, k] > 0:
                    j, f = u // N, u % N
                    act[j, f, head[u, k] - (j - 1) * N] = False
            cnt[u] = base[u]
            for k in range(base[u]):
                res[u, k] = cap0[u, k]
    return out
