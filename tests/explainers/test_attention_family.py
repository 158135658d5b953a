"""Raw attention, rollout and attention flow against float64 replicas and hand-computed cases."""

import networkx as nx
import numpy as np
import pytest
import torch

import vit_explore as vx
from vit_explore.capture.layout import TokenLayout
from vit_explore.capture.session import Trace
from vit_explore.explainers.attention_flow import attention_flow
from vit_explore.explainers.rollout import joint_attention, rollout
from vit_explore.testing import tiny_vit

from ..conftest import input_for
from ..replica import readout_rows, replica_forward, tokens_into_blocks


def replica_attn(model, x):
    with torch.no_grad():
        _, attns, _ = replica_forward(model, tokens_into_blocks(model, x))
    return attns  # L x (B, H, N, N) float64


def to_grid(v, ex):
    return v.reshape(v.shape[0], *ex.layout.grid)


# ---------------------------------------------------------------- raw attention
def test_raw_attention_matches_replica(model, x):
    attns = replica_attn(model, x)
    for layer, head in [(-1, None), (0, 2), (1, None)]:
        ex = vx.explain(model, x, "raw_attention", layer=layer, head=head)
        a = attns[layer].mean(1) if head is None else attns[layer][:, head]
        torch.testing.assert_close(ex.patch_map.double(), to_grid(readout_rows(a, model), ex), rtol=0, atol=1e-6)


def test_attention_stack_and_query_rows(model, x):
    attns = replica_attn(model, x)
    T = model.num_prefix_tokens
    stack = vx.attention_maps(model, x)
    L, H = len(attns), attns[0].shape[1]
    assert stack.shape == (x.shape[0], L, H, *stack.shape[-2:])
    for layer in range(L):
        for head in range(H):
            ref = readout_rows(attns[layer][:, head], model)
            torch.testing.assert_close(stack[:, layer, head].flatten(1).double(), ref, rtol=0, atol=1e-6)
    q = 5
    rows = vx.attention_maps(model, x, query=q)
    torch.testing.assert_close(rows[:, 1, 3].flatten(1).double(), attns[1][:, 3, T + q, T:], rtol=0, atol=1e-6)
    ex = vx.explain(model, x, "raw_attention", layer=1, head=3, query=(1, 1))
    gw = ex.layout.grid[1]
    torch.testing.assert_close(ex.patch_map.flatten(1).double(), attns[1][:, 3, T + gw + 1, T:], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- rollout
def rollout_replica(attns, model, start=0, fusion="mean", discard=0.0, stage="before"):
    """Plain float64 rollout, one image at a time, loops over layers (docs/methods.md §3.2/§3.3)."""
    B, H, N, _ = attns[0].shape
    out = []
    for b in range(B):
        mats = [a[b].numpy() for a in attns[start:]]
        fuse = {"mean": lambda m: m.mean(0), "max": lambda m: m.max(0), "min": lambda m: m.min(0)}[fusion]
        if stage == "before":
            joint = np.eye(N)
            for m in mats:
                f = fuse(m).copy()
                if discard:
                    k = int(N * N * discard)
                    order = np.argsort(f.ravel(), kind="stable")[:k]
                    order = order[order != 0] if model.num_prefix_tokens else order
                    f.ravel()[order] = 0
                a_hat = f + np.eye(N)
                a_hat = a_hat / a_hat.sum(axis=1, keepdims=True)
                joint = a_hat @ joint
        else:
            per_head = np.stack([np.eye(N)] * H)
            for m in mats:
                a_hat = m + np.eye(N)
                a_hat = a_hat / a_hat.sum(axis=2, keepdims=True)
                per_head = a_hat @ per_head
            joint = fuse(per_head)
        out.append(joint)
    joint = torch.from_numpy(np.stack(out))
    return readout_rows(joint, model)


@pytest.mark.parametrize(
    "kw",
    [{}, {"start_layer": 1}, {"head_fusion": "max"}, {"head_fusion": "min", "discard_ratio": 0.5},
     {"head_fusion_stage": "after"}],
)
def test_rollout_matches_replica(model, x, kw):
    attns = replica_attn(model, x)
    ex = vx.explain(model, x, "rollout", **kw)
    ref = rollout_replica(
        attns, model, kw.get("start_layer", 0), kw.get("head_fusion", "mean"), kw.get("discard_ratio", 0.0),
        kw.get("head_fusion_stage", "before"),
    )
    torch.testing.assert_close(ex.patch_map.double(), to_grid(ref, ex), rtol=1e-5, atol=1e-6)


def vit_explain_reference(attentions, discard_ratio, head_fusion):
    """jacobgil/vit-explain ``rollout`` restated line by line (batch of one, quirks included)."""
    result = torch.eye(attentions[0].size(-1), dtype=attentions[0].dtype)
    for attention in attentions:
        if head_fusion == "mean":
            fused = attention.mean(axis=1)
        elif head_fusion == "max":
            fused = attention.max(axis=1)[0]
        else:
            fused = attention.min(axis=1)[0]
        flat = fused.view(fused.size(0), -1)
        _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
        indices = indices[indices != 0]
        flat[0, indices] = 0
        eye = torch.eye(fused.size(-1), dtype=fused.dtype)
        a = (fused + 1.0 * eye) / 2
        a = a / a.sum(dim=-1)
        result = torch.matmul(a, result)
    mask = result[0, 0, 1:]
    return mask / mask.max()


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.9), ("min", 0.5)])
def test_rollout_vit_explain_compat_reproduces_the_reference(fusion, discard):
    model = tiny_vit()
    x = input_for(model)
    ex = vx.explain(model, x, "rollout", compat="vit_explain", head_fusion=fusion, discard_ratio=discard)
    trace = vx.capture(model, x, vx.Needs(attn=True))
    for b in range(x.shape[0]):
        ref = vit_explain_reference([a[b : b + 1].clone() for a in trace.attn], discard, fusion)
        torch.testing.assert_close(ex.patch_map[b].flatten(), ref, rtol=1e-6, atol=1e-7)
    if fusion != "mean" or discard:
        # the broadcast quirk makes it differ from the correct normalisation
        plain = vx.explain(model, x, "rollout", head_fusion=fusion, discard_ratio=discard).patch_map
        assert not torch.allclose(ex.patch_map, plain / plain.flatten(1).max(1).values[:, None, None], atol=1e-4)


def hand_trace():
    """2 blocks, 1 head, N=3 (CLS + a 1x2 grid), attention chosen to be checked by hand."""
    a0 = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a1 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    layout = TokenLayout(num_prefix=1, num_reg=0, grid=(1, 2), patch_size=(1, 1), input_size=(1, 2), readout="cls")
    return Trace(
        logits=torch.zeros(1, 2), target=torch.zeros(1, dtype=torch.long), layout=layout,
        input=torch.zeros(1, 3, 1, 2), attn=(a0[None, None], a1[None, None]),
    )


def test_hand_computed_two_block_case():
    trace = hand_trace()
    # Â0 = (A0+I)/2 = [[3/4,1/4,0],[0,1,0],[0,0,1]];  Â1 = [[1/2,0,1/2],[0,1,0],[0,0,1]]
    # J = Â1 Â0, row 0 = 1/2 row0(Â0) + 1/2 row2(Â0) = [3/8, 1/8, 1/2]
    torch.testing.assert_close(rollout(trace), torch.tensor([[[1 / 8, 1 / 2]]]))
    # start_layer=1: J = Â1, row 0 patches = [0, 1/2]
    torch.testing.assert_close(rollout(trace, start_layer=1), torch.tensor([[[0.0, 1 / 2]]]))
    # Flow from (2,0): to (1,0) cap 1/2, to (1,2) cap 1/2; (1,0)->(0,0) 3/4, (1,0)->(0,1) 1/4, (1,2)->(0,2) 1.
    # max-flows to (0,0), (0,1), (0,2) = 1/2, 1/4, 1/2; normalised by 5/4: 2/5, 1/5, 2/5
    torch.testing.assert_close(attention_flow(trace), torch.tensor([[[1 / 5, 2 / 5]]]), rtol=0, atol=1e-6)
    # raw attention of the last block: row 0 of A1 over patches
    torch.testing.assert_close(vx.get_explainer("raw_attention").fn(trace), torch.tensor([[[0.0, 1.0]]]))


def test_uniform_attention_two_block_model_by_hand():
    # zero qkv weights: every score is 0, attention is uniform 1/N with N = 1 + 4
    model = tiny_vit(depth=2, img_size=16)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()
    x = input_for(model, batch=1)
    # Â = (J/5 + I)/2 = 0.1*11ᵀ + 0.5 I;  Â² = 0.15*11ᵀ + 0.25 I  ->  row 0 patches = 0.15
    ex = vx.explain(model, x, "rollout")
    torch.testing.assert_close(ex.patch_map, torch.full((1, 2, 2), 0.15))
    torch.testing.assert_close(vx.explain(model, x, "raw_attention").patch_map, torch.full((1, 2, 2), 0.2))


@pytest.mark.parametrize("kw", [{}, {"head_fusion": "max", "discard_ratio": 0.7}, {"head_fusion_stage": "after"}])
def test_rollout_rows_stay_stochastic(model, x, kw):
    trace = vx.capture(model, x, vx.Needs(attn=True))
    joint = joint_attention(list(trace.attn), **kw)
    torch.testing.assert_close(joint.sum(-1), torch.ones(joint.shape[:-1]), rtol=0, atol=1e-5)
    assert bool((joint >= 0).all())


# ---------------------------------------------------------------- attention flow
def flow_networkx(attns, model, start=0):
    """Reference: networkx max-flow on the layered graph (§6), one image."""
    L = len(attns) - start
    N = attns[0].shape[-1]
    T = model.num_prefix_tokens
    w = np.zeros(N)
    if model.global_pool == "avg":
        w[T:] = 1.0 / (N - T)
    elif hasattr(model, "head_dist"):
        w[:2] = 0.5
    else:
        w[0] = 1.0
    g = nx.DiGraph()
    for i in range(1, L + 1):
        a = attns[start + i - 1].mean(0).numpy()
        a_hat = (a + np.eye(N)) / (a + np.eye(N)).sum(1, keepdims=True)
        for f in range(N):
            for t in range(N):
                g.add_edge((i, f), (i - 1, t), capacity=float(a_hat[f, t]))
    for f in range(N):
        if w[f] > 0:
            g.add_edge("s", (L, f), capacity=float(w[f]))
    flows = np.array([nx.maximum_flow_value(g, "s", (0, t)) for t in range(N)])
    return flows / flows.sum()


@pytest.mark.parametrize("variant", ["vanilla", "distilled", "registers", "gap"])
def test_attention_flow_matches_networkx(variant):
    model = tiny_vit(variant, depth=2, img_size=16)
    x = input_for(model, batch=2)
    attns = replica_attn(model, x)
    ex = vx.explain(model, x, "attention_flow")
    for b in range(2):
        ref = flow_networkx([a[b] for a in attns], model)[model.num_prefix_tokens :]
        np.testing.assert_allclose(ex.patch_map[b].flatten().numpy(), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- batch consistency
@pytest.mark.parametrize("method", ["raw_attention", "rollout", "attention_flow"])
def test_batch_equals_per_image(method):
    model = tiny_vit("registers")
    x = input_for(model, batch=3)
    full = vx.explain(model, x, method)
    for i in range(3):
        one = vx.explain(model, x[i : i + 1], method)
        torch.testing.assert_close(full[i].patch_map, one.patch_map, rtol=1e-5, atol=1e-6)
