"""Latency of live interventions (issue 4), CPU.

Targets: one brushed intervention (one patch set, mode ``blur``) <= 1.3x a batch-1 forward;
``drop`` with half the patches removed faster than a full forward. p50 / p95 over 50 calls,
for a random-init ViT-B/16 at 224 and the embedded small model (``toy-shapes`` when its
weights exist, else a random ViT of the same shape: 96x96, patch 8, embed 192, depth 6).

The three cases run round-robin (forward, blur, drop, forward, ...) after 10 warm-up rounds.

Run: python bench/bench_interventions.py [--calls 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

import vit_explore.interventions as vi
from vit_explore import zoo
from vit_explore.perturb import ForwardEngine


def small_model():
    if (zoo.WEIGHTS_DIR / "toy-shapes.safetensors").is_file():
        return "toy-shapes", zoo.load_model("toy-shapes")
    m = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=96, patch_size=8, embed_dim=192,
                          depth=6, num_heads=3, num_classes=10)
    return "random ViT 96/8 d192 L6", m.eval()


def timeit_interleaved(fns, calls, warmup=10):
    """p50 and p95 (ms) of each function over ``calls`` calls, run round-robin so that load
    and clock changes hit them alike; ``warmup`` rounds first (thread pools, allocator, the
    base-forward cache)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    t = {k: [] for k in fns}
    for _ in range(calls):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            t[k].append(time.perf_counter() - t0)
    return {k: (np.percentile(np.array(v) * 1e3, 50), np.percentile(np.array(v) * 1e3, 95)) for k, v in t.items()}


def run(name, model, calls):
    H, W = model.patch_embed.img_size
    ph, pw = model.patch_embed.patch_size
    gh, gw = H // ph, W // pw
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    brush = torch.zeros(gh, gw, dtype=torch.bool)
    brush[gh // 4 : gh // 2, gw // 4 : gw // 2] = True  # a brushed block (1/16 of the patches)
    half = torch.randperm(gh * gw, generator=g)[: gh * gw // 2].tolist()

    def fwd():
        with torch.no_grad():
            model(x)

    eng = ForwardEngine()  # the caches a live caller holds (the Explorer has one)
    r = timeit_interleaved({
        "fwd": fwd,
        "blur": lambda: vi.intervene(model, x, brush, mode="blur", engine=eng),
        "drop": lambda: vi.intervene(model, x, half, mode="drop", engine=eng),
    }, calls)
    (f50, f95), (b50, b95), (d50, d95) = r["fwd"], r["blur"], r["drop"]
    print(f"\n{name}: {H}x{W}, patch {ph}, {gh * gw} patches, {calls} calls (ms)")
    print(f"  batch-1 forward          p50 {f50:8.2f}  p95 {f95:8.2f}")
    print(f"  intervene blur (1 set)   p50 {b50:8.2f}  p95 {b95:8.2f}   ratio p50 {b50 / f50:.2f}x (target <= 1.30x)")
    print(f"  intervene drop half      p50 {d50:8.2f}  p95 {d95:8.2f}   ratio p50 {d50 / f50:.2f}x (target < 1.00x)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="small,base", help="comma list of: small, base")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads")
    if "small" in a.models:
        run(*small_model(), a.calls)
    if "base" in a.models:
        run("vit_base_patch16_224 (random init)", timm.create_model("vit_base_patch16_224", pretrained=False).eval(), a.calls)


if __name__ == "__main__":
    main()
