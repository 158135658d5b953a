"""Attention family on ViT-B/16 at 224, CPU: capture overhead and method times.

Run: python bench/bench_attention.py [--repeats 5] [--threads N]
Prints the plain forward time, the capture forward time and their ratio (target <= 1.25),
and the time of each attention-family method, all measured in this run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, table

import vit_explore as vx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--model", default="vit_base_patch16_224")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)

    def plain():
        with torch.no_grad():
            model(x)

    def captured():
        vx.capture(model, x, vx.Needs(attn=True))

    t = interleaved({"forward": plain, "capture": captured}, repeats=args.repeats)
    rows = [
        ("forward (fused, no_grad)", f"{t['forward'] * 1e3:.1f}", "1.00"),
        ("capture forward (all attention)", f"{t['capture'] * 1e3:.1f}", f"{t['capture'] / t['forward']:.2f}"),
    ]
    methods = {
        "raw_attention": {},
        "rollout": {},
        "rollout (compat=vit_explain, max, 0.9)": {"compat": "vit_explain", "head_fusion": "max", "discard_ratio": 0.9},
        "attention_flow": {},
        "attention_flow (workers=2)": {"workers": 2},
    }
    fns = {}
    for label, params in methods.items():
        key = label.split(" ")[0]
        fns[label] = lambda key=key, params=params: vx.explain(model, x, key, **params)
    mt = interleaved(fns, repeats=max(1, args.repeats // 2))
    for label, sec in mt.items():
        rows.append((f"explain {label}", f"{sec * 1e3:.1f}", f"{sec / t['forward']:.2f}"))
    print(f"{args.model} at 224, batch 1, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(table(rows, ("what", "ms", "x forward")))


if __name__ == "__main__":
    main()
