"""Benchmark the attention-flow max-flow kernel (ViT-B/16 at 224: L=12, N=197).

Baseline: one ``scipy.sparse.csgraph.maximum_flow`` (Dinic) call per sink on the full
layered network (all N input nodes, graph built once per sink, capacities x2**30 rounded
down), timed on a few sinks and extrapolated to N. Candidate: ``layered_max_flow`` on all
sinks, graph construction included. Prints a table; asserts nothing about time.

    python bench/bench_attention_flow.py [--sinks-baseline 6] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_flow

from vit_explore.explainers._maxflow import layered_max_flow

SCALE = 2**30


def make_ahat(L: int, N: int, temperature: float, seed: int) -> np.ndarray:
    """Softmax of random logits / temperature, then rownorm(A + I) = 0.5 A + 0.5 I."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((L, N, N)) / temperature
    a = np.exp(z - z.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    a = a + np.eye(N)
    return a / a.sum(-1, keepdims=True)


def baseline_one(ahat: np.ndarray, w: np.ndarray, t: int) -> float:
    """Full (L+1)N-node network + super source, sink (0, t); built from scratch."""
    L, N, _ = ahat.shape
    n = 1 + (L + 1) * N  # node 0 = super source; (i, f) -> 1 + i*N + f
    rows, cols, caps = [np.zeros(N, int)], [1 + L * N + np.arange(N)], [w]
    f, g = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    for i in range(1, L + 1):
        rows.append((1 + i * N + f).ravel())
        cols.append((1 + (i - 1) * N + g).ravel())
        caps.append(ahat[i - 1].ravel())
    data = np.floor(np.concatenate(caps) * SCALE).astype(np.int32)
    graph = sp.csr_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return maximum_flow(graph, 0, 1 + t, method="dinic").flow_value / SCALE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", type=int, default=12)
    ap.add_argument("--N", type=int, default=197)
    ap.add_argument("--sinks-baseline", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    L, N = args.L, args.N
    cls = np.zeros(N)
    cls[0] = 1.0
    pooled = np.r_[0.0, np.full(N - 1, 1.0 / (N - 1))]
    cases = [
        ("near-uniform T=1", 1.0, cls),
        ("medium T=0.2", 0.2, cls),
        ("peaky T=0.05", 0.05, cls),
        ("near-uniform, pooled src", 1.0, pooled),
        ("peaky, pooled src", 0.05, pooled),
    ]
    print(f"L={L} N={N}; baseline = scipy dinic per sink, {args.sinks_baseline} sinks extrapolated to {N}")
    header = f"{'case':28s} {'baseline s':>11s}" + "".join(f" {'w=' + str(w) + ' s':>9s} {'ratio':>6s}" for w in args.workers)
    header += f" {'max|diff|':>10s}"
    print(header)
    for name, temp, w in cases:
        ahat = make_ahat(L, N, temp, seed=0)
        probe = np.linspace(0, N - 1, args.sinks_baseline).astype(int)
        t0 = time.perf_counter()
        ref = np.array([baseline_one(ahat, w, int(t)) for t in probe])
        base = (time.perf_counter() - t0) / len(probe) * N
        line = f"{name:28s} {base:11.2f}"
        diff = 0.0
        for workers in args.workers:
            best = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                vals = layered_max_flow(ahat, w, workers=workers)
                best = min(best, time.perf_counter() - t0)
            diff = max(diff, float(np.abs(vals[probe] - ref).max()))
            line += f" {best:9.2f} {base / best:6.1f}"
        print(line + f" {diff:10.1e}")


if __name__ == "__main__":
    main()
