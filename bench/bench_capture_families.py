"""Capture-forward cost of each attention adapter against a plain forward, CPU.

Run: python bench/bench_capture_families.py [--repeats 5] [--threads N] [--depth 12]
One random-weight model per adapter (timm Attention, rotary EVA-02 / RoPE / DINOv3, BEiT and relpos
relative biases) at 224x224. Per model: the plain forward (fused attention, no_grad), the capture
forward recording every attention (``Needs(attn=True)``) and the one that also takes the scores
from the module's own softmax (``Needs(attn=True, scores=True)``, AG-CAM's), with their ratios to the
plain forward measured in the same run (target <= 1.25).
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
from vit_explore.capture import inspect_vit

MODELS = [
    "vit_small_patch16_224",
    "eva02_small_patch14_224",
    "vit_small_patch16_rope_224",
    "vit_small_patch16_dinov3",
    "beitv2_base_patch16_224",
    "vit_relpos_small_patch16_224",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--depth", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, depth=args.depth, num_classes=10, img_size=224).eval()
        x = torch.randn(1, 3, 224, 224)
        family = inspect_vit(model).adapters[0].family

        def plain(model=model, x=x):
            with torch.no_grad():
                model(x)

        def attn(model=model, x=x):
            vx.capture(model, x, vx.Needs(attn=True))

        def scores(model=model, x=x):
            vx.capture(model, x, vx.Needs(attn=True, scores=True))

        t = interleaved({"forward": plain, "attn": attn, "scores": scores}, repeats=args.repeats)
        rows.append((name, family, f"{t['forward'] * 1e3:.1f}", f"{t['attn'] / t['forward']:.2f}",
                     f"{t['scores'] / t['forward']:.2f}"))
    print(table(rows, ("model", "adapter", "forward ms", "capture(attn) x", "capture(attn+scores) x")))


if __name__ == "__main__":
    main()
