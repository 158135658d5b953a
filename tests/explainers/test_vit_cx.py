"""ViT-CX against a plain replica of methods.md §10 (pixel-level, float64 masks)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import AgglomerativeClustering

import vit_explore as vx
from vit_explore.testing import tiny_vit

from ..conftest import input_for


def replica_vit_cx(model, x1, seed=0, threshold=0.1, sigma=0.1):
    """§10 for one image (1, 3, H, W), written plainly: returns sal (H, W), K, masks, deltas."""
    T = model.num_prefix_tokens
    feats = []
    h = model.blocks[-1].norm1.register_forward_hook(lambda m, a, o: feats.append(o.detach()))
    try:
        with torch.no_grad():
            p = model(x1).softmax(-1)[0]
    finally:
        h.remove()
    c = int(p.argmax())
    p_c = float(p[c])
    H, W = x1.shape[-2:]
    ph, pw = model.patch_embed.patch_size
    gh, gw = H // ph, W // pw
    f = feats[0][0, T:].double()  # (P, C)
    fm = f.T.reshape(-1, gh, gw)  # (C, gh, gw)
    up = F.interpolate(fm[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    m = up.reshape(up.shape[0], -1)
    m = (m - m.min(1, keepdim=True).values) / (m.max(1, keepdim=True).values - m.min(1, keepdim=True).values)
    num = m @ m.T
    den = torch.linalg.norm(m, dim=1)[:, None] * torch.linalg.norm(m, dim=1)[None, :]
    sim = num / den
    sim[torch.isnan(sim)] = 0
    dist = (1 - sim).numpy()
    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="complete"
    ).fit(dist).labels_
    K = len(set(labels))
    merged = torch.zeros(K, H * W, dtype=torch.float64)
    for i in range(len(m)):
        merged[labels[i]] += m[i]
    merged = (merged - merged.min(1, keepdim=True).values) / (
        merged.max(1, keepdim=True).values - merged.min(1, keepdim=True).values
    )
    masks = merged.reshape(K, H, W)
    eps = torch.randn(K, 3, H, W, generator=torch.Generator().manual_seed(seed)) * sigma
    deltas = []
    for k in range(K):
        Mk = masks[k].float()
        xk = x1[0] * Mk + eps[k] * (1 - Mk)
        xr = x1[0] + eps[k] * (1 - Mk)
        with torch.no_grad():
            pk = model(xk[None]).softmax(-1)[0, c]
            pr = model(xr[None]).softmax(-1)[0, c]
        deltas.append(float(pk) - float(pr) + p_c)
    total = masks.sum(0)
    sal = torch.zeros(H, W, dtype=torch.float64)
    for k in range(K):
        sal += deltas[k] * masks[k] / total
    return sal / K, K, masks, torch.tensor(deltas), labels, dist


@pytest.mark.parametrize("variant", ["vanilla", "registers", "gap", "nonsquare"])
def test_matches_replica(variant):
    model = tiny_vit(variant)
    x = input_for(model, batch=2, seed=1)
    ex = vx.explain(model, x, "vit_cx", seed=4, batch_size=7)
    for b in range(2):
        sal, K, masks, deltas, labels, _dist = replica_vit_cx(model, x[b : b + 1], seed=4)
        assert ex.extras["K"][b] == K
        assert np.array_equal(ex.extras["labels"][b], labels)
        assert torch.allclose(ex.extras["masks"][b].double(), masks, atol=1e-6)
        assert ex.extras["masks"][b].min() >= 0 and ex.extras["masks"][b].max() <= 1
        assert torch.allclose(ex.extras["mask_scores"][b].double(), deltas.double(), atol=2e-6)
        assert torch.allclose(ex.extras["pixel_map"][b].double(), sal, atol=1e-6, rtol=1e-5)
        ph, pw = model.patch_embed.patch_size
        pm = F.avg_pool2d(sal[None, None], (ph, pw))[0, 0]
        assert torch.allclose(ex.patch_map[b].double(), pm, atol=1e-6, rtol=1e-5)


def test_deterministic_and_seeded():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=2, seed=2)
    a = vx.explain(model, x, "vit_cx", seed=1)
    b = vx.explain(model, x, "vit_cx", seed=1)
    c = vx.explain(model, x, "vit_cx", seed=2)
    assert torch.equal(a.patch_map, b.patch_map)
    assert not torch.allclose(a.patch_map, c.patch_map)
    one = vx.explain(model, x[1:], "vit_cx", seed=1)  # independent of the batch
    assert torch.allclose(one.patch_map[0], a.patch_map[1], atol=1e-6)


def test_no_backward_and_model_left_as_found():
    model = tiny_vit("distilled")
    model.train()
    flags = [m.training for m in model.modules()]
    rg = [p.requires_grad for p in model.parameters()]
    x = input_for(model, batch=1)
    ex = vx.explain(model, x, "vit_cx")
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == rg
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert ex.patch_map.shape == (1, 4, 4)


def test_constant_feature_maps_give_zero_masks():
    from vit_explore.explainers.vit_cx import cluster_masks

    feat = torch.randn(5, 4, 4, dtype=torch.float64)
    feat[2] = 3.0
    labels, M = cluster_masks(feat, (32, 32), 0.1)
    assert M.shape[0] == len(set(labels.tolist()))
    assert torch.isfinite(M).all()
