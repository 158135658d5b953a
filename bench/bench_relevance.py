"""Speed of the relevance explainers on a random-init ViT-B/16 at 224 (CPU).

Prints, per batch size, seconds per image for one forward, one forward+backward (input
gradient, frozen weights), ``chefer_lrp`` and ``attn_lrp``, and their ratios to the
forward+backward measured in the same run; and the "lrp matmul floor": the bare matmuls
that any exact implementation of Chefer's rules has to run (see ``lrp_matmul_floor``). Targets (issue 3): chefer_lrp <= 1.0 s per image
at batch 1 on the 2-core CPU (the reference: 3.1 s); batch 8 faster per image than batch 1.

    python bench/bench_relevance.py [--repeats 2] [--batches 1 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F

import vit_explore as vx


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def lrp_matmul_floor(model, b: int, tokens: int = 197):
    """The matmul work of any exact ``chefer_lrp``, as bare ``F.linear`` calls of the same
    shapes on random data: per Linear in the blocks, the forward, the input-gradient
    backward (for the attention gradients), and the three of the alpha=1/beta=0 rule at
    its cheapest (the denominator's ``|x| |W|^T``; ``S W+`` and ``S W-``). Attention
    matmuls, element-wise work and the head are left out, so this is a lower bound."""
    ws = [m.weight.detach() for blk in model.blocks for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2)]
    x = {w.shape[1]: torch.randn(b * tokens, w.shape[1]) for w in ws}
    g = {w.shape[0]: torch.randn(b * tokens, w.shape[0]) for w in ws}

    def run():
        for w in ws:
            xi, go = x[w.shape[1]], g[w.shape[0]]
            F.linear(xi, w)  # forward
            go @ w  # input gradient
            F.linear(xi, w)  # |x| |W|^T
            go @ w  # S W+
            go @ w  # S W-

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    rows = []
    for b in args.batches:
        x = torch.randn(b, 3, 224, 224)

        def fwd(x=x):
            with torch.no_grad():
                model(x)

        def fwd_bwd(x=x):
            for p in model.parameters():
                p.requires_grad_(False)
            xi = x.clone().requires_grad_(True)
            model(xi)[:, 0].sum().backward()
            for p in model.parameters():
                p.requires_grad_(True)

        cases = {
            "forward": fwd,
            "forward+backward": fwd_bwd,
            "chefer_lrp": lambda x=x: vx.explain(model, x, "chefer_lrp", target=0),
            "lrp matmul floor": lrp_matmul_floor(model, b),
            "attn_lrp": lambda x=x: vx.explain(model, x, "attn_lrp", target=0),
        }
        t = {k: best_of(f, args.repeats) / b for k, f in cases.items()}
        for k, v in t.items():
            rows.append((b, k, v, v / t["forward+backward"]))
    print(f"ViT-B/16 @224, random init, {args.threads} threads, best of {args.repeats}")
    print(f"{'batch':>5}  {'case':<18} {'s/image':>9} {'x fwd+bwd':>10}")
    for b, k, v, r in rows:
        print(f"{b:>5}  {k:<18} {v:>9.3f} {r:>10.2f}")
    per = {(b, k): v for b, k, v, _ in rows}
    if 1 in args.batches and 8 in args.batches:
        for k in ("chefer_lrp", "attn_lrp"):
            print(f"{k}: batch 8 / batch 1 per image = {per[(8, k)] / per[(1, k)]:.2f}")


if __name__ == "__main__":
    main()
