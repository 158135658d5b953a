"""ConViT: gated positional self-attention (GPSA) blocks over the patches, then the class token and
plain MHSA blocks. Capture records the gated mix the model used; every method that applies is
checked against a float64 restatement written here (GPSA blocks laid out on the 1 + P tokens with
the class token's row the identity, as before the class token exists)."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture.session import Needs, capture
from vit_explore.errors import UnsupportedModelError

N = 17


def convit(seed=0):
    torch.manual_seed(seed)
    m = timm.create_model("convit_tiny", pretrained=False, img_size=32, patch_size=8, depth=2, local_up_to_layer=1,
                          embed_dim=48, num_heads=4, num_classes=5).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if "bias" in n or "gating" in n or "cls_token" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m


def inputs(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _half(t):
    return 0.5 * t + 0.5 * t.detach()


def _ln(x, mod, rule):
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps)
    return (x - mu) / (sigma.detach() if rule else sigma) * mod.weight + mod.bias


def _lin(x, mod):
    return F.linear(x, mod.weight, mod.bias)


def _gelu(x, rule):
    out = F.gelu(x)
    if not rule:
        return out
    ratio = torch.where(x != 0, out / torch.where(x != 0, x, torch.ones_like(x)), torch.full_like(x, 0.5))
    return x * ratio.detach()


def convit64(model, x, rule=None):
    m = copy.deepcopy(model).double()
    keep = {"attn": [], "scores": []}
    t = m.patch_embed(x) + m.pos_embed
    for u, blk in enumerate(m.blocks):
        if u == m.local_up_to_layer:
            t = torch.cat([m.cls_token.expand(t.shape[0], -1, -1), t], 1)
        at = blk.attn
        B, n, C = t.shape
        H = at.num_heads
        y = _ln(t, blk.norm1, rule)
        if hasattr(at, "gating_param"):  # GPSA: a gated mix of two softmaxes, renormalised
            q, k = _lin(y, at.qk).reshape(B, n, 2, H, C // H).permute(2, 0, 3, 1, 4)
            v = _lin(y, at.v).reshape(B, n, H, C // H).transpose(1, 2)
            content = ((q @ k.transpose(-1, -2)) * at.scale).softmax(-1)
            pos = _lin(at.get_rel_indices(n).double(), at.pos_proj).permute(0, 3, 1, 2).softmax(-1)
            gate = torch.sigmoid(at.gating_param).view(1, -1, 1, 1)
            a = (1 - gate) * content + gate * pos
            a = a / a.sum(-1, keepdim=True)
            s = None
        else:
            qkv = _lin(y, at.qkv)
            if rule == "attnlrp":
                qkv = _half(qkv)
            q, k, v = qkv.reshape(B, n, 3, H, C // H).permute(2, 0, 3, 1, 4)
            s = (q @ k.transpose(-1, -2)) * at.scale
            a = s.softmax(-1)
        a.retain_grad()
        keep["attn"].append(a)
        keep["scores"].append(s)
        used = a.detach() if rule == "cp" else _half(a) if rule == "attnlrp" else a
        o = (used @ v).transpose(1, 2).reshape(B, n, C)
        if rule == "attnlrp" and s is None:  # GPSA calls no qkv module: the rule halves proj's input
            o = _half(o)
        t = t + _lin(o, at.proj)
        t = t + _lin(_gelu(_lin(_ln(t, blk.norm2, rule), blk.mlp.fc1), rule), blk.mlp.fc2)
    return _lin(_ln(t, m.norm, rule)[:, 0], m.head), keep


def embed(a, fill):
    if a.shape[-1] == N:
        return a
    eye = torch.eye(N, dtype=torch.float64)
    out = (eye if fill == "attn" else 0 * eye).repeat(a.shape[0], a.shape[1], 1, 1)
    out[:, :, 1:, 1:] = a
    return out


def close(got, ref, rtol=1e-4):
    assert ref.abs().max() > 0
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


@pytest.fixture(scope="module")
def case():
    model, x, target = convit(), inputs(), torch.tensor([1, 3])
    logits, keep = convit64(model, x.double())
    logits.gather(1, target[:, None]).sum().backward()
    A = [embed(a.detach(), "attn") for a in keep["attn"]]
    G = [embed(a.grad, "grad") for a in keep["attn"]]
    return model, x, target, logits.detach(), A, G, keep["scores"]


def test_capture_records_the_gated_mix(case):
    model, x, target, logits, A, G, scores = case
    tr = capture(model, x, Needs(attn=True, attn_grad=True), target=target)
    close(tr.logits, logits)
    for i in range(2):
        close(tr.attn_at(i), A[i])
        close(tr.attn_grad_at(i), G[i], rtol=1e-3)
        torch.testing.assert_close(tr.attn_at(i).sum(-1), torch.ones(2, 4, N))  # rows are probabilities
    tr = capture(model, x, Needs(scores=True, attn=True, layers=(1,)))  # the MHSA block's scores
    close(tr.scores_at(1), scores[1].detach())
    close(tr.scores_at(1).double().softmax(-1), A[1])
    with pytest.raises(UnsupportedModelError, match="GPSA.*gated mix.*no single pre-softmax"):
        capture(model, x, Needs(scores=True, layers=(0,)))


def test_methods(case):
    model, x, target, _, A, G, _ = case
    J = None
    for a in A:
        a_hat = a.mean(1) + torch.eye(N, dtype=torch.float64)
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        J = a_hat if J is None else a_hat @ J
    close(vx.explain(model, x, "rollout").patch_map, J[:, 0, 1:].reshape(2, 4, 4))
    R = torch.eye(N, dtype=torch.float64).repeat(2, 1, 1)
    for a, g in zip(A, G):
        R = R + (g * a).clamp(min=0).mean(1) @ R
    close(vx.explain(model, x, "chefer_generic", target=target).patch_map, R[:, 0, 1:].reshape(2, 4, 4), rtol=1e-3)
    close(vx.explain(model, x, "raw_attention", layer=0, query=5).patch_map, A[0].mean(1)[:, 6, 1:].reshape(2, 4, 4))
    s = A[1].mean(1)[:, 0]
    s = torch.einsum("bn,bnm->bm", s, A[0].mean(1)) + s
    w = G[1].clamp(min=0).mean(1)[:, 0]
    got = vx.explain(model, x, "tam", target=target, with_integral=False).patch_map
    close(got, (s * w)[:, 1:].reshape(2, 4, 4), rtol=1e-3)


@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
def test_attn_lrp(case, rule):
    model, x, target = case[:3]
    xi = x.double().requires_grad_(True)
    logits, _ = convit64(model, xi, rule=rule)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xi)
    close(vx.explain(model, x, "attn_lrp", target=target, variant=rule).extras["pixel_map"],
          (xi * g).sum(1).detach(), rtol=1e-3)


@pytest.mark.parametrize("method,match", [("ag_cam", "GPSA.*ag_cam.*chefer_generic")])
def test_refusals_say_why_and_what_applies(method, match):
    with pytest.raises(UnsupportedModelError, match=match):
        vx.explain(convit(), inputs(), method)


@pytest.mark.parametrize("method", ["rollout", "chefer_generic", "attn_lrp", "tam", "attn_grad_cam"])
def test_batch_equals_per_image_and_model_left_as_found(method):
    model = convit()
    model(inputs(1))  # GPSA caches its relative indices on the first forward (the model's own state)
    model.train()
    model.blocks[1].attn.qkv.weight.requires_grad_(False)

    def state():
        return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
                [m.__dict__.get("fused_attn", "unset") for m in model.modules()],
                sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))

    before = state()
    x = inputs(3, seed=2)
    both = vx.explain(model, x, method, target=[0, 2, 4]).patch_map
    for b in range(3):
        one = vx.explain(model, x[b : b + 1], method, target=[[0, 2, 4][b]]).patch_map
        torch.testing.assert_close(one, both[b : b + 1], rtol=1e-4, atol=1e-6 * float(both.abs().max()))
    assert state() == before
    with pytest.raises(UnsupportedModelError):
        vx.explain(model, x, "ag_cam")
    assert state() == before
