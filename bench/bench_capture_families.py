"""Capture-forward cost of each attention adapter against a plain forward, CPU.

Run: python bench/bench_capture_families.py [--repeats 21] [--threads 1] [--depth 12] [--size 224]

One random-weight model per adapter (timm Attention, rotary EVA-02 / RoPE / DINOv3, BEiT and relpos
relative biases, shared relpos bias) at 224x224. Per model: the plain forward (fused attention,
no_grad), the capture forward recording every attention (``Needs(attn=True)``) and the one that
also takes the scores from the module's own softmax (``Needs(attn=True, scores=True)``, AG-CAM's).
The issue's target: capture(attn) at most 1.25x the plain forward.

Robust under load (a shared machine): the three passes run round-robin, in a rotating order, for
``--repeats`` rounds after a warm-up; each round gives the ratio of each capture pass to *that
round's* plain pass (so a load spike that hits one round hits both sides of its ratio), and the
table prints the median of the per-round ratios with their interquartile range, next to the median
plain-forward time. The load average before and after is printed: read the ratios, not the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import table

import vit_explore as vx
from vit_explore.capture import inspect_vit
from vit_explore.errors import UnsupportedModelError

MODELS = [
    "vit_small_patch16_224",
    "eva02_small_patch14_224",
    "vit_small_patch16_rope_224",
    "vit_small_patch16_dinov3",
    "beitv2_base_patch16_224",
    "vit_relpos_small_patch16_224",
    "vit_srelpos_small_patch16_224",
    "vit_base_patch16_siglip_224",  # attention-pool (MAP) read-out
    "cait_xxs24_224",  # talking heads, then class attention
    "xcit_tiny_12_p16_224",  # class attention after cross-covariance blocks
    "convit_tiny",  # gated positional self-attention
    "naflexvit_base_patch16_gap",
]


def rounds(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Per-round wall times of each function, round-robin in a rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def ratio_stats(num: list[float], den: list[float]) -> str:
    """Median of the per-round ratios and their interquartile range."""
    rs = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(rs, n=4) if len(rs) >= 4 else [rs[0], statistics.median(rs), rs[-1]]
    return f"{statistics.median(rs):.2f} [{q[0]:.2f}-{q[2]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", help="comma-separated subset of the timm names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else MODELS
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; threads {args.threads}, "
          f"{args.repeats} interleaved rounds, depth {args.depth}, {args.size}x{args.size}")
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, depth=args.depth, num_classes=10,
                                  img_size=args.size).eval()
        x = torch.randn(1, 3, args.size, args.size)
        family = inspect_vit(model).adapters[0].family

        def plain(model=model, x=x):
            with torch.no_grad():
                model(x)

        def attn(model=model, x=x):
            vx.capture(model, x, vx.Needs(attn=True))

        def scores(model=model, x=x):
            vx.capture(model, x, vx.Needs(attn=True, scores=True))

        fns = {"forward": plain, "attn": attn, "scores": scores}
        try:
            scores()
        except UnsupportedModelError:  # no single pre-softmax score tensor (ConViT's gated mix)
            del fns["scores"]
        t = rounds(fns, repeats=args.repeats)
        rows.append((name, family, f"{statistics.median(t['forward']) * 1e3:.1f}",
                     ratio_stats(t["attn"], t["forward"]),
                     ratio_stats(t["scores"], t["forward"]) if "scores" in t else "not defined"))
        print(f"  {name}: done", file=sys.stderr)
    print(table(rows, ("model", "adapter", "forward ms (median)", "capture(attn) x [IQR]",
                       "capture(attn+scores) x [IQR]")))
    print(f"load average after: {os.getloadavg()[0]:.1f}; target: capture(attn) <= 1.25x")


if __name__ == "__main__":
    main()
