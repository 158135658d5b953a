"""Compiled kernels of ViT-CX's mask building and distances (docs/methods.md §10 steps 3-6, 8).

Pure functions over small float32 / float64 arrays (computing in float64), compiled by numba.
The machine code is cached on disk, beside this file or in numba's user cache; where neither
is writable it is compiled anew in each process. The first call in a fresh environment
compiles for about seven seconds (once). ViT-CX's own work around its 2K + 1 forward passes was a
few dozen tiny PyTorch operations; right after a forward pass each costs tens of microseconds
(cold caches), so on a small model they added a fifth to the forwards' time. Here they are
one call (``clusters``), complete linkage included (``complete_linkage``: scipy's algorithm
and tie rules, tested against its linkage matrix).

Each axis's bilinear upsampling ``U`` (out, in), ``align_corners=False``, has at most two
non-zeros per row, given as a *stencil*: ``idx`` (n, 2) int64 and ``w`` (n, 2) float64 with
``(U f)[o] = w[o, 0] f[idx[o, 0]] + w[o, 1] f[idx[o, 1]]``. ``U^T U`` is tridiagonal, so its
Cholesky factor ``R`` (``R^T R = U^T U``) is upper bidiagonal: diagonal ``d`` and
superdiagonal ``s`` (in,) (``s[-1] = 0``). See ``vit_cx.cluster_masks`` for why the extremes
and the cosines can be taken from these.

No ``nnan``/``ninf`` fast-math: a NaN feature is reported, not optimised away.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import compiled as _compiled

_FAST = {"nsz", "arcp", "contract", "reassoc"}  # lets the dot products and min/max vectorise
_TINY32 = np.float32(np.finfo(np.float32).tiny)


@_compiled(fastmath=_FAST)
def cosine_distances(act, gh, gw, ehi, ehw, ewi, eww, rhd, rhs, rwd, rws):  # pragma: no cover - compiled
    """Condensed ``1 - cos`` between the min-max-scaled upsampled feature maps.

    Args:
        act: (P, C) float32 or float64 patch-token features, P = gh * gw in row-major grid order.
        ehi, ehw / ewi, eww: stencils of the rows of ``U_h`` / ``U_w`` where an upsampled
            map's extremes lie (rh, 2) / (rw, 2).
        rhd, rhs / rwd, rws: the bidiagonal Cholesky factors of ``U_h^T U_h`` / ``U_w^T U_w``.

    Returns:
        y (C (C - 1) / 2,) in scipy's condensed order (a constant map is at cosine 0,
        distance 1, from every map: the reference's NaN cosine -> 0), the ranges ``hi - lo`` (C,) of the upsampled maps, and
        whether every feature was finite.
    """
    P, C = act.shape
    rh, rw = ehi.shape[0], ewi.shape[0]
    finite = True
    for p in range(P):
        for c in range(C):
            if not math.isfinite(act[p, c]):
                finite = False
    # extremes: E_h f E_w^T for all channels at once (channels innermost, contiguous)
    t = np.empty((rh, gw, C))
    for a in range(rh):
        i0, i1, w0, w1 = ehi[a, 0], ehi[a, 1], ehw[a, 0], ehw[a, 1]
        for j in range(gw):
            r0, r1, tt = act[i0 * gw + j], act[i1 * gw + j], t[a, j]
            for c in range(C):
                tt[c] = w0 * r0[c] + w1 * r1[c]
    lo = np.full(C, np.inf)
    hi = np.full(C, -np.inf)
    v = np.empty(C)
    for a in range(rh):
        for b in range(rw):
            j0, j1, w0, w1 = ewi[b, 0], ewi[b, 1], eww[b, 0], eww[b, 1]
            t0, t1 = t[a, j0], t[a, j1]
            for c in range(C):
                v[c] = t0[c] * w0 + t1[c] * w1
            for c in range(C):
                lo[c] = min(lo[c], v[c])
                hi[c] = max(hi[c], v[c])
    # the small maps R_h (f - lo) R_w^T, one channel a row (C, P)
    V = np.empty((C, P))
    f = np.empty((gh, gw))
    s1 = np.empty((gh, gw))
    for c in range(C):
        m = lo[c]
        for p in range(P):
            f[p // gw, p % gw] = act[p, c] - m
        for i in range(gh):
            for j in range(gw):
                s1[i, j] = rhd[i] * f[i, j] + (rhs[i] * f[i + 1, j] if i + 1 < gh else 0.0)
        for i in range(gh):
            for j in range(gw):
                V[c, i * gw + j] = s1[i, j] * rwd[j] + (s1[i, j + 1] * rws[j] if j + 1 < gw else 0.0)
    rng = hi - lo
    inv = np.zeros(C)
    for i in range(C):
        if rng[i] > 0:
            sq = 0.0
            for k in range(P):
                sq += V[i, k] * V[i, k]
            if sq > 0:
                inv[i] = 1.0 / math.sqrt(sq)
    y = np.empty(C * (C - 1) // 2)
    n = 0
    for i in range(C):
        for j in range(i + 1, C):
            acc = 0.0
            for k in range(P):
                acc += V[i, k] * V[j, k]
            y[n] = 1.0 - acc * inv[i] * inv[j]
            n += 1
    return y, rng, finite


@_compiled(fastmath=_FAST)
def merged_masks(act, gh, gw, labels, K, rng, ehi, ehw, ewi, eww, uhi, uhw, uwi, uww):  # pragma: no cover - compiled
    """Merged masks and the pixel weights' common factor (steps 6 and 8).

    Args:
        act: (P, C) float32 or float64 features; labels (C,) int64 cluster of each channel (0..K-1);
            rng (C,) the ranges from ``cosine_distances``.
        ehi, ehw / ewi, eww: extreme-row stencils; uhi, uhw (H, 2) / uwi, uww (W, 2): the
            full upsampling stencils.

    Returns:
        M (K, H, W) float32, the min-max of ``U_h g_k U_w^T`` with ``g_k = sum_{i in k}
        f_i / rng_i`` (0 where constant), clamped to [0, 1]; and (H * W,) float32
        ``1 / (K sum_j M_j)`` (``sum_j M_j`` at least float32's tiny), so that mask k's
        pixel weight is ``M_k`` times it (0 where no mask covers a pixel).
    """
    P, C = act.shape
    H, W = uhi.shape[0], uwi.shape[0]
    rh, rw = ehi.shape[0], ewi.shape[0]
    a = np.zeros(C)
    for c in range(C):
        if rng[c] > 0:
            a[c] = 1.0 / rng[c]
    g = np.zeros((K, gh, gw))
    for p in range(P):
        i, j, row = p // gw, p % gw, act[p]
        for c in range(C):
            g[labels[c], i, j] += row[c] * a[c]
    # width first, at every column (K, gh, W) and at the extreme columns (K, gh, rw)
    gW = np.empty((K, gh, W))
    gE = np.empty((K, gh, rw))
    for k in range(K):
        for i in range(gh):
            for q in range(W):
                gW[k, i, q] = g[k, i, uwi[q, 0]] * uww[q, 0] + g[k, i, uwi[q, 1]] * uww[q, 1]
            for b in range(rw):
                gE[k, i, b] = g[k, i, ewi[b, 0]] * eww[b, 0] + g[k, i, ewi[b, 1]] * eww[b, 1]
    M = np.empty((K, H, W), np.float32)
    for k in range(K):
        lo, hi = np.inf, -np.inf
        for r in range(rh):
            i0, i1, w0, w1 = ehi[r, 0], ehi[r, 1], ehw[r, 0], ehw[r, 1]
            for b in range(rw):
                v = w0 * gE[k, i0, b] + w1 * gE[k, i1, b]
                lo, hi = min(lo, v), max(hi, v)
        sc = 1.0 / (hi - lo) if hi > lo else 0.0
        for o in range(H):
            i0, i1, w0, w1 = uhi[o, 0], uhi[o, 1], uhw[o, 0], uhw[o, 1]
            r0, r1, out = gW[k, i0], gW[k, i1], M[k, o]
            for q in range(W):
                out[q] = min(max((w0 * r0[q] + w1 * r1[q] - lo) * sc, 0.0), 1.0)
    den = np.zeros(H * W, np.float32)
    Mf = M.reshape((K, H * W))
    for k in range(K):
        mk = Mf[k]
        for p in range(H * W):
            den[p] += mk[p]
    for p in range(H * W):
        den[p] = np.float32(1.0) / (max(den[p], _TINY32) * np.float32(K))  # <= 1 / tiny: finite
    return M, den


@_compiled()
def cut_tree(Z, n, distance_threshold):  # pragma: no cover - compiled
    """Cluster labels (n,) int64 of a linkage matrix ``Z`` (n - 1, 4) float64 (scipy's: rows
    ``[child, child, distance, size]`` by increasing distance), cut as scikit-learn cuts it
    (``sklearn.cluster._agglomerative._hc_cut``): the number of merges at distance >= t, plus
    one, clusters; the newest node is split that many times less one, taking the newest node
    each time from a heap of negated node ids; clusters are numbered in the heap's array
    order. The heap is CPython's ``heapq`` algorithm (``heappush``, ``heappushpop``), step for
    step, so the numbering is the same.
    """
    labels = np.zeros(n, np.int64)
    if n == 1:
        return labels
    m = n - 1
    n_clusters = 1
    for r in range(m):
        if Z[r, 2] >= distance_threshold:
            n_clusters += 1
    heap = np.empty(n_clusters, np.int64)
    heap[0] = -(max(int(Z[m - 1, 0]), int(Z[m - 1, 1])) + 1)
    size = 1
    for _ in range(n_clusters - 1):
        row = -heap[0] - n
        a, b = int(Z[row, 0]), int(Z[row, 1])
        # heappush(heap, -a): append, then move it towards the root
        heap[size] = -a
        size += 1
        _sift_to_root(heap, size - 1)
        # heappushpop(heap, -b): if the root is smaller, put -b there, move the smaller child
        # up until a leaf is free (heapq._siftup), place -b in it and move it towards the root
        if heap[0] < -b:
            pos, child = 0, 1
            while child < size:
                right = child + 1
                if right < size and not heap[child] < heap[right]:
                    child = right
                heap[pos] = heap[child]
                pos = child
                child = 2 * pos + 1
            heap[pos] = -b
            _sift_to_root(heap, pos)
    stack = np.empty(n + 1, np.int64)
    for k in range(size):
        stack[0] = -heap[k]
        top = 1
        while top > 0:
            top -= 1
            v = stack[top]
            if v < n:
                labels[v] = k
            else:
                stack[top] = int(Z[v - n, 0])
                stack[top + 1] = int(Z[v - n, 1])
                top += 2
    return labels


@_compiled()
def _sift_to_root(heap, pos):  # pragma: no cover - compiled
    """CPython's ``heapq._siftdown(heap, 0, pos)``: move ``heap[pos]`` up past larger parents."""
    item = heap[pos]
    while pos > 0:
        parent = (pos - 1) >> 1
        if item < heap[parent]:
            heap[pos] = heap[parent]
            pos = parent
        else:
            break
    heap[pos] = item


@_compiled()
def _condensed(n, i, j):  # pragma: no cover - compiled
    """Index of (i, j), i != j, in scipy's condensed order of an (n, n) matrix."""
    if i > j:
        i, j = j, i
    return n * i - (i * (i + 1)) // 2 + (j - i - 1)


@_compiled()
def complete_linkage(y, n):  # pragma: no cover - compiled
    """``scipy.cluster.hierarchy.linkage(y, method="complete")`` of a finite condensed matrix
    ``y`` (n (n - 1) / 2,) float64: Z (n - 1, 4) float64, rows ``[child, child, height, size]``.

    The nearest-neighbour chain (Murtagh 1983; Müllner, arXiv:1109.2378) with scipy's
    conventions, so that tied distances give the same tree: the chain starts at the lowest
    active cluster; a cluster's nearest neighbour is the chain's previous element unless
    another is strictly nearer, and otherwise the lowest index among the nearest; a merge of
    x < y keeps y's slot and the complete-linkage distance ``max(d(i, x), d(i, y))``; the
    merges are then sorted stably by height and their children renumbered (leaves 0..n-1,
    the i-th merge n + i).
    """
    D = y.copy()
    size = np.ones(n, np.int64)
    chain = np.empty(n, np.int64)
    length = 0
    Z = np.empty((n - 1, 4))
    x, nb = 0, 0
    for k in range(n - 1):
        if length == 0:
            for i in range(n):
                if size[i] > 0:
                    chain[0] = i
                    break
            length = 1
        while True:
            x = chain[length - 1]
            best = np.inf
            if length > 1:
                nb = chain[length - 2]
                best = D[_condensed(n, x, nb)]
            for i in range(n):
                if size[i] > 0 and i != x:
                    d = D[_condensed(n, x, i)]
                    if d < best:
                        best, nb = d, i
            if length > 1 and nb == chain[length - 2]:
                break
            chain[length] = nb
            length += 1
        length -= 2
        a, b = min(x, nb), max(x, nb)
        Z[k, 0], Z[k, 1], Z[k, 2], Z[k, 3] = a, b, best, size[a] + size[b]
        size[b] += size[a]
        size[a] = 0
        for i in range(n):
            if size[i] > 0 and i != b:
                ib = _condensed(n, i, b)
                D[ib] = max(D[_condensed(n, i, a)], D[ib])
    Z = Z[np.argsort(Z[:, 2], kind="mergesort")]
    # renumber: each merge's children are the current roots of its two slots' leaves
    parent = np.arange(2 * n - 1)
    for k in range(n - 1):
        ra, rb = int(Z[k, 0]), int(Z[k, 1])
        while parent[ra] != ra:
            ra = parent[ra]
        while parent[rb] != rb:
            rb = parent[rb]
        parent[ra] = parent[rb] = n + k
        Z[k, 0], Z[k, 1] = min(ra, rb), max(ra, rb)
    return Z


@_compiled()
def linkage_labels(y, n, distance_threshold):  # pragma: no cover - compiled
    """Labels (n,) int64 of complete linkage on the condensed ``y``, cut at the threshold as
    scikit-learn cuts it (``complete_linkage`` then ``cut_tree``)."""
    return cut_tree(complete_linkage(y, n), n, distance_threshold)


@_compiled()
def clusters(act, gh, gw, ehi, ehw, ewi, eww, rhd, rhs, rwd, rws, uhi, uhw, uwi, uww, distance_threshold):  # pragma: no cover - compiled
    """Steps 3-6 and 8 in one call: ``cosine_distances``, ``linkage_labels``, ``merged_masks``.

    Returns labels (C,), masks (K, H, W) float32, ``1 / (K sum_j M_j)`` (H * W,) float32 and
    whether every feature was finite (if not, the rest is empty)."""
    y, rng, finite = cosine_distances(act, gh, gw, ehi, ehw, ewi, eww, rhd, rhs, rwd, rws)
    if not finite:
        return np.zeros(0, np.int64), np.zeros((0, uhi.shape[0], uwi.shape[0]), np.float32), np.zeros(0, np.float32), False
    C = act.shape[1]
    labels = linkage_labels(y, C, distance_threshold)
    M, inv = merged_masks(act, gh, gw, labels, labels.max() + 1, rng, ehi, ehw, ewi, eww, uhi, uhw, uwi, uww)
    return labels, M, inv, True
