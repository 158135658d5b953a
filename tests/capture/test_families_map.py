"""The attention-pool (MAP) head (timm ``AttentionPoolLatent``, SigLIP): capture and every attention
method against a float64 restatement written here (blocks, pool, head, and the read-out row
``p = Σ_q w_q mean_h A_pool[q]`` applied to token-to-token matrices as ``p M``)."""

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture.session import Needs, capture
from vit_explore.errors import UnsupportedModelError


def map_model(latents=1, pool="token", seed=0, cls=False):
    torch.manual_seed(seed)
    m = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          embed_dim=32, num_heads=2, num_classes=5, class_token=cls).eval()
    if latents > 1:
        from timm.layers import AttentionPoolLatent

        m.attn_pool = AttentionPoolLatent(32, num_heads=2, latent_len=latents, pool_type=pool,
                                          norm_layer=torch.nn.LayerNorm).eval()
    with torch.no_grad():  # non-trivial biases and latents, so every term matters
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if "bias" in n or "latent" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


def inputs(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- float64 restatement
def _half(t):
    return 0.5 * t + 0.5 * t.detach()


def _ln(x, mod, rule):
    if isinstance(mod, torch.nn.Identity):
        return x
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps)
    return (x - mu) / (sigma.detach() if rule else sigma) * mod.weight + mod.bias


def _gelu(x, rule):
    out = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if not rule:
        return out
    ratio = torch.where(x != 0, out / torch.where(x != 0, x, torch.ones_like(x)), torch.full_like(x, 0.5))
    return x * ratio.detach()


def _lin(x, mod):
    return F.linear(x, mod.weight, mod.bias)


def _attend(q, k, v, scale, rule, keep):
    s = (q * scale) @ k.transpose(-1, -2)
    a = s.softmax(-1)
    a.retain_grad()
    keep["scores"].append(s.detach())
    keep["attn"].append(a)
    used = a.detach() if rule == "cp" else _half(a) if rule == "attnlrp" else a
    return used @ v


def forward64(model, x, rule=None, detach_attn_input=False):
    """Logits and, in ``keep``, every attention (blocks first, the pool last) and its scores, float64.
    ``rule``: None (plain), ``"cp"`` or ``"attnlrp"`` (the AttnLRP rules written out)."""
    m = copy.deepcopy(model).double()
    keep = {"attn": [], "scores": []}
    t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
    for blk in m.blocks:
        a = blk.attn
        B, N, C = t.shape
        H = a.num_heads
        y = _ln(t, blk.norm1, rule)
        if detach_attn_input:
            y = y.detach()
        qkv = _lin(y, a.qkv)
        if rule == "attnlrp":
            qkv = _half(qkv)
        q, k, v = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        o = _attend(q, k, v, a.scale, rule, keep).transpose(1, 2).reshape(B, N, C)
        t = t + _lin(o, a.proj)
        t = t + _lin(_gelu(_lin(_ln(t, blk.norm2, rule), blk.mlp.fc1), rule), blk.mlp.fc2)
    t = _ln(t, m.norm, rule)
    T = m.num_prefix_tokens
    t = t[:, T:]  # the pool attends over the patch tokens (timm's default without pool_include_prefix)
    p = m.attn_pool
    B, N, C = t.shape
    H, Q = p.num_heads, p.latent.shape[1]
    q = _lin(p.latent.expand(B, -1, -1), p.q).reshape(B, Q, H, C // H).transpose(1, 2)
    kv = _lin(t, p.kv)
    if rule == "attnlrp":
        kv = _half(kv)
    k, v = kv.reshape(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4)
    o = _lin(_attend(q, k, v, p.scale, rule, keep).transpose(1, 2).reshape(B, Q, C), p.proj)
    o = o + _lin(_gelu(_lin(_ln(o, p.norm, rule), p.mlp.fc1), rule), p.mlp.fc2)
    pooled = o[:, 0] if p.pool == "token" else o.mean(1)
    return _lin(pooled, m.head), keep


def grads64(model, x, target, **kw):
    logits, keep = forward64(model, x.double(), **kw)
    logits.gather(1, target[:, None]).sum().backward()
    return logits.detach(), [a.detach() for a in keep["attn"]], [a.grad for a in keep["attn"]], keep["scores"]


def query64(model, pool_attn):
    Q = pool_attn.shape[2]
    w = torch.zeros(Q, dtype=torch.float64)
    if model.attn_pool.pool == "avg":
        w[:] = 1 / Q
    else:
        w[0] = 1
    p = torch.einsum("bhqn,q->bn", pool_attn, w) / pool_attn.shape[1]
    T = model.num_prefix_tokens
    return torch.cat([p.new_zeros(p.shape[0], T), p], 1)  # the prefix rows get no weight


def read(p, m):
    """``p M`` for (B, N, N) or (B, H, N, N) matrices, patch columns on the 4x4 grid."""
    r = torch.einsum("bn,bnm->bm", p, m) if m.ndim == 3 else torch.einsum("bn,bhnm->bhm", p, m)
    return r[..., -16:].reshape(*r.shape[:-1], 4, 4)


def close(got, ref, rtol=1e-4):
    got = got.double()
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


CASES = [(1, "token", False), (3, "token", False), (2, "avg", False), (1, "token", True)]


@pytest.fixture(params=CASES, ids=[f"{q}latent-{p}{'-cls' * c}" for q, p, c in CASES])
def case(request):
    q, p, c = request.param
    model = map_model(q, p, cls=c)
    x = inputs()
    target = torch.tensor([1, 3])
    return model, x, target, grads64(model, x, target)


# ----------------------------------------------------------------------------- capture
def test_capture_matches_the_models_own_attention(case):
    model, x, target, (logits, attns, grads, scores) = case
    tr = capture(model, x, Needs(attn=True, attn_grad=True, scores=True), target=target)
    assert tr.layout.readout == "map"
    close(tr.logits, logits)
    for i in range(2):
        close(tr.attn_at(i), attns[i])
        close(tr.scores_at(i), scores[i])
        close(tr.attn_grad_at(i), grads[i], rtol=1e-3)
    close(tr.pool_attn, attns[-1])
    close(tr.pool_scores, scores[-1])
    close(tr.pool_attn_grad, grads[-1], rtol=1e-3)
    close(tr.pool_scores.softmax(-1), tr.pool_attn.double())  # softmax of the captured scores
    close(tr.layout.readout_query, query64(model, attns[-1]))


# ----------------------------------------------------------------------------- methods
def test_raw_attention_and_rollout(case):
    model, x, _, (_, attns, _, _) = case
    p = query64(model, attns[-1])
    close(vx.explain(model, x, "raw_attention").patch_map, read(p, attns[1].mean(1)))
    J = None
    for a in attns[:2]:
        a_hat = a.mean(1) + torch.eye(a.shape[-1], dtype=torch.float64)
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        J = a_hat if J is None else a_hat @ J
    close(vx.explain(model, x, "rollout").patch_map, read(p, J))


def test_chefer_generic(case):
    model, x, target, (_, attns, grads, _) = case
    p = query64(model, attns[-1])
    R = torch.eye(attns[0].shape[-1], dtype=torch.float64).expand(2, -1, -1)
    for a, g in zip(attns[:2], grads[:2]):
        R = R + (g * a).clamp(min=0).mean(1) @ R
    close(vx.explain(model, x, "chefer_generic", target=target).patch_map, read(p, R), rtol=1e-3)


def test_attn_grad_cam(case):
    model = case[0]
    nonzero = 0
    for seed, c in [(seed, c) for seed in range(4) for c in range(5)]:  # the clamp zeroes some maps
        x, target = inputs(seed=seed), torch.tensor([c, 4 - c])
        _, attns, grads, _ = grads64(model, x, target)
        p = query64(model, attns[-1])
        a, g = read(p, attns[1]), read(p, grads[1])
        pre = (g.mean(dim=(-2, -1), keepdim=True) * a).mean(1)
        got = vx.explain(model, x, "attn_grad_cam", target=target).patch_map.double()
        torch.testing.assert_close(got, pre.clamp(min=0), rtol=1e-3, atol=1e-3 * float(pre.abs().max()))
        nonzero += int(pre.clamp(min=0).max() > 0)
        assert pre.abs().max() > 0
    assert nonzero or model.attn_pool.pool == "avg"  # the avg pool's maps here are all clamped to 0


def test_ag_cam(case):
    model, x, target, _ = case
    _, attns, _, _ = grads64(model, x, target)
    p = query64(model, attns[-1])
    _, _, grads, scores = grads64(model, x, target, detach_attn_input=True)
    ref = sum(read(p, grads[i].clamp(min=0) * scores[i].sigmoid()).sum(1) for i in range(2))
    close(vx.explain(model, x, "ag_cam", target=target).patch_map, ref, rtol=1e-3)


def test_tam(case):
    model, x, target, (_, attns, grads, _) = case
    p = query64(model, attns[-1])
    total = grads[1].clone()
    for alpha in (0.0, 0.5):
        total += grads64(model, alpha * x, target)[2][1]
    w = read(p, (total / 3).clamp(min=0).mean(1)).flatten(1)
    s = torch.einsum("bn,bnm->bm", p, attns[1].mean(1))
    s = torch.einsum("bn,bnm->bm", s, attns[0].mean(1)) + s
    got = vx.explain(model, x, "tam", target=target, steps=3).patch_map
    close(got, (s[:, -16:] * w).reshape(2, 4, 4), rtol=1e-3)


@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
def test_attn_lrp(case, rule):
    model, x, target, _ = case
    xi = x.double().requires_grad_(True)
    logits, _ = forward64(model, xi, rule=rule)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xi)
    ex = vx.explain(model, x, "attn_lrp", target=target, variant=rule)
    close(ex.extras["pixel_map"], (xi * g).sum(1).detach(), rtol=1e-3)


def test_attention_flow_reads_each_images_own_row():
    model, x = map_model(), inputs(3)
    both = vx.explain(model, x, "attention_flow").patch_map
    for b in range(3):
        close(vx.explain(model, x[b : b + 1], "attention_flow").patch_map, both[b : b + 1].double())


def test_chefer_lrp_says_why_and_what_applies():
    """chefer_lrp has rules for timm's pool (tests/explainers/test_chefer_lrp_families.py), not for a
    pool that adds its own position embedding."""
    model = map_model()
    model.attn_pool.pos_embed = torch.nn.Parameter(torch.zeros(model.patch_embed.num_patches, model.embed_dim))
    with pytest.raises(UnsupportedModelError, match="attention-pool.*position embedding.*attn_lrp.*chefer_generic"):
        vx.explain(model, inputs(), "chefer_lrp")


@pytest.mark.parametrize("method", ["rollout", "chefer_generic", "ag_cam", "attn_grad_cam", "attn_lrp", "tam"])
def test_batch_equals_per_image(method):
    model, x = map_model(3, "token"), inputs(3)
    both = vx.explain(model, x, method, target=[0, 2, 4]).patch_map
    for b in range(3):
        one = vx.explain(model, x[b : b + 1], method, target=[[0, 2, 4][b]]).patch_map
        torch.testing.assert_close(one, both[b : b + 1], rtol=1e-4, atol=1e-6 * float(both.abs().max()))


# ----------------------------------------------------------------------------- hygiene
def _state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    fused = [m.__dict__.get("fused_attn", "unset") for m in model.modules() if hasattr(m, "fused_attn")]
    return hooks, fused, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("method", ["rollout", "ag_cam", "attn_lrp", "tam", "chefer_generic"])
def test_model_left_as_found(method):
    model = map_model()
    model.attn_pool.fused_attn = True
    model.train()
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    before = _state(model)
    vx.explain(model, inputs(), method)
    assert _state(model) == before

    def boom(mod, args, out):
        raise RuntimeError("boom in the head")

    h = model.head.register_forward_hook(boom)
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        vx.explain(model, inputs(), method)
    assert _state(model) == before
    h.remove()
