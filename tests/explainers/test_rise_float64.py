"""RISE against its float64 restatement (vit_explore.testing.float64_rise): the reference's masks
generated again (numpy RandomState, scipy's zoom as skimage's resize calls it) and the weighting."""

import pytest
import torch

import vit_explore as vx
from vit_explore.explainers.rise import build_masks, generate_masks
from vit_explore.testing import tiny_vit
from vit_explore.testing.float64 import close_to
from vit_explore.testing.float64_rise import rise64, rise_masks64


@pytest.mark.parametrize("n,s,p1,size,seed", [(8, 8, 0.1, (32, 32), 0), (5, 7, 0.5, (30, 45), 3), (4, 3, 0.3, (64, 48), 1)])
def test_masks_equal_the_independent_restatement(n, s, p1, size, seed):
    grid, shifts = generate_masks(n, s, p1, size, seed)
    ours = build_masks(grid, shifts, s, size, dtype=torch.float64)
    ref = rise_masks64(n, s, p1, size, seed)
    assert ref.std() > 0
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["vanilla", "gap", "nonsquare"])
def test_rise_map_equals_the_float64_restatement(variant):
    model = tiny_vit(variant)
    H, W = model.patch_embed.img_size
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    ex = vx.explain(model, x, "rise", n_masks=24, s=4, p1=0.5, seed=7, batch_size=10, target=[1, 3])
    ref = rise64(model, x, torch.tensor([1, 3]), 24, s=4, p1=0.5, seed=7)
    ok, err = close_to(ex.patch_map, ref)
    assert ok, err
