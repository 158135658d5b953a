"""ViT-CX cost against its own definition (issue 4), CPU.

Target: with K masks, the whole ``vit_cx`` call costs at most 1.15x the time of 2K+1
batched forward passes of the same model (1 at batch 1, 2K in chunks of ``batch_size``),
i.e. feature extraction, clustering and mask building together under 15%.
Prints K, the forward-only time, the whole time and the ratio, for the embedded small
model (or a random one of its shape) and a random-init ViT-B/16 at 224 (seeded: K is the
same from run to run).

The baseline's 2K inputs are made once. glibc gives freed heap memory back to the system, so
a pass that follows other work page-faults while it grows the heap again; made anew before
each timed baseline pass, its inputs would pre-fault the heap for it, while ``vit_cx`` pays
those faults inside its own call. To take the allocator out of the comparison altogether,
run with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``.

Run: python bench/bench_vit_cx.py [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from bench_interventions import small_model

import vit_explore as vx
from vit_explore.capture.ablation import forward_logits


def forwards_only(model, x, xs, batch_size):
    t0 = time.perf_counter()
    forward_logits(model, x)
    forward_logits(model, xs, batch_size)
    return time.perf_counter() - t0


def run(name, model, repeats, batch_size=50):
    H, W = model.patch_embed.img_size
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    K = vx.explain(model, x, "vit_cx", batch_size=batch_size).extras["K"][0]  # warm-up; K is fixed by x
    # the baseline's 2K inputs, made once (see the module docstring)
    xs = x.repeat(2 * K, 1, 1, 1) + 0.01 * torch.randn(2 * K, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    tw, tf = [], []
    for _ in range(repeats):  # interleaved, so that clock and load changes hit both alike
        t0 = time.perf_counter()
        ex = vx.explain(model, x, "vit_cx", batch_size=batch_size)
        tw.append(time.perf_counter() - t0)
        assert ex.extras["K"][0] == K
        tf.append(forwards_only(model, x, xs, batch_size))
    w, f = statistics.median(tw), statistics.median(tf)
    print(f"{name}: K={K}, 2K+1={2 * K + 1} forwards (batch {batch_size}): {f * 1e3:.1f} ms; "
          f"vit_cx: {w * 1e3:.1f} ms; ratio of medians over {repeats} {w / f:.3f}x (target <= 1.15x)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="small,base", help="comma list of: small, base")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads (median of {a.repeats}, interleaved)")
    torch.manual_seed(0)  # the random-init models, hence K
    if "small" in a.models:
        run(*small_model(), a.repeats)
    if "base" in a.models:
        run("vit_base_patch16_224 (random init)", timm.create_model("vit_base_patch16_224", pretrained=False).eval(),
        a.repeats)


if __name__ == "__main__":
    main()
