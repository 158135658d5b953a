"""Benchmark attention flow (ViT-B/16 at 224: L=12, N=197).

1. The model (issue 17's target: the whole call within 4 forward passes). On timm's random
   init and on trained-like "peaky" attention (``bench_peers.peaky``: q and k scaled by 4),
   interleaved in one run, medians: the plain forward (``torch.inference_mode``), the capture
   forward, the max flows alone (``layered_max_flow`` on the captured ``Â``, 197 sinks) and the
   whole ``vx.explain(..., "attention_flow")`` call, each also in *forwards* (its time / the
   plain forward's time in the same run).
2. The kernel on synthetic ``Â`` (softmax of random logits / temperature, + I, row-normalised).
   Baseline: one ``scipy.sparse.csgraph.maximum_flow`` (Dinic) call per sink on the full
   layered network (all N input nodes, graph built once per sink, capacities x2**30 rounded
   down), timed on a few sinks and extrapolated to N. Candidate: ``layered_max_flow`` on all
   sinks, graph construction included; ``max|diff|`` against the baseline on those sinks.

Prints tables; asserts nothing about time.

    python bench/bench_attention_flow.py [--threads 2] [--model-repeats 5] [--no-model]
                                         [--no-synthetic] [--sinks-baseline 6] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import maximum_flow

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]
from _timing import interleaved, table

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


def model_section(threads: int, repeats: int) -> None:
    """Forward, capture, flows alone and the whole call on ViT-B/16, in forwards of the same run."""
    import timm
    from bench_peers import attention_peak, peaky

    import vit_explore as vx
    from vit_explore.capture.session import Needs, capture
    from vit_explore.explainers._fusion import add_identity, row_normalize

    torch.manual_seed(0)
    base = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    for att in ("random", "peaky"):
        model = base if att == "random" else peaky(base)
        tr = capture(model, x, Needs(attn=True))
        a = torch.stack([tr.attn_at(i).mean(dim=1, dtype=torch.float64) for i in range(tr.num_layers)], 1)
        ahat = row_normalize(add_identity(a))[0].numpy()
        w = tr.layout.readout_weights(torch.float64).numpy()

        def fwd(model=model):
            with torch.inference_mode():
                model(x)

        fns = {
            "forward": fwd,
            "capture forward": lambda model=model: capture(model, x, Needs(attn=True)),
            "max flows (197 sinks)": lambda ahat=ahat, w=w: layered_max_flow(ahat, w),
            "attention_flow, whole call": lambda model=model: vx.explain(model, x, "attention_flow"),
        }
        med = interleaved(fns, repeats=repeats)
        peak = attention_peak(model, x)
        for k, v in med.items():
            rows.append((att, f"{peak:.2f}", k, f"{v:.3f}", f"{v / med['forward']:.2f}"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"ViT-B/16 @224, batch 1, {threads} threads, medians of {repeats} interleaved runs, load average {load:.1f}")
    print(table(rows, ("attention", "max-attn", "what", "s", "forwards")))
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-repeats", type=int, default=5)
    ap.add_argument("--no-model", action="store_true", help="skip the ViT-B/16 section")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic kernel section")
    ap.add_argument("--L", type=int, default=12)
    ap.add_argument("--N", type=int, default=197)
    ap.add_argument("--sinks-baseline", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_model:
        model_section(args.threads, args.model_repeats)
    if args.no_synthetic:
        return
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
