"""bench/bench_vit_cx.py's restatement of the official ViT-CX code computes ViT-CX: on the
embedded model its K and saliency equal ours (docs/methods.md §10), so the timing compares
like with like."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import vit_explore as vx

ROOT = Path(__file__).resolve().parents[1]


def test_official_restatement_equals_ours():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_vit_cx import official_vit_cx
    finally:
        sys.path.remove(str(ROOT / "bench"))
    model = vx.load_model("toy-shapes").eval()
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    ex = vx.explain(model, x, "vit_cx", seed=0)
    for b in range(2):
        sal, K = official_vit_cx(model, x[b : b + 1], seed=0)
        assert K == ex.extras["K"][b]
        torch.testing.assert_close(sal, ex.extras["pixel_map"][b], atol=2e-5, rtol=1e-4)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
