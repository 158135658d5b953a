"""attn_lrp: a float64 replica of the rules written plainly, gradient x input identities,
conservation, the gamma rule by hand, hygiene and no side effects on other methods."""

import math

import pytest
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture.rules import _gamma_hook
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit

from ..conftest import input_for, model_state, raising_in_backward

VARIANTS = ["vanilla", "distilled", "registers", "gap", "nonsquare"]


def _d(t):
    return None if t is None else t.detach().double()


def _lin(x, mod):
    return F.linear(x, _d(mod.weight), _d(mod.bias))


def _ln(x, mod):
    """LayerNorm with the identity rule: sigma detached."""
    if isinstance(mod, torch.nn.Identity):
        return x
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps).detach()
    return (x - mu) / sigma * _d(mod.weight) + _d(mod.bias)


def _half(t):
    return 0.5 * t + 0.5 * t.detach()


def replica_relevance(model, x, target, variant):
    """Pixel relevance (B, H, W) in float64 with the rules applied by hand in a plain forward."""
    assert isinstance(model.patch_embed.norm, torch.nn.Identity) and isinstance(model.norm_pre, torch.nn.Identity)
    x = x.double().requires_grad_(True)
    pe = model.patch_embed.proj
    t = F.conv2d(x, _d(pe.weight), _d(pe.bias), stride=pe.stride).flatten(2).transpose(1, 2)
    B = t.shape[0]
    prefix = [_d(model.cls_token)] if model.cls_token is not None else []
    if getattr(model, "dist_token", None) is not None:
        prefix.append(_d(model.dist_token))
    if model.reg_token is not None:
        prefix.append(_d(model.reg_token))
    t = torch.cat([p.expand(B, -1, -1) for p in prefix] + [t], dim=1) + _d(model.pos_embed)
    for blk in model.blocks:
        a = blk.attn
        N, C = t.shape[1:]
        h = a.num_heads
        qkv = _lin(_ln(t, blk.norm1), a.qkv)
        if variant == "attnlrp":
            qkv = _half(qkv)
        q, k, v = qkv.reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
        A = ((q * a.scale) @ k.transpose(-1, -2)).softmax(-1)
        A = A.detach() if variant == "cp" else _half(A)
        t = t + _lin((A @ v).transpose(1, 2).reshape(B, N, C), a.proj)
        hid = _lin(_ln(t, blk.norm2), blk.mlp.fc1)
        gelu = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
        hid = hid * (gelu / hid).detach()
        t = t + _lin(hid, blk.mlp.fc2)
    t = _ln(t, model.norm)
    T = model.num_prefix_tokens
    if model.global_pool == "avg":
        logits = _lin(_ln(t[:, T:].mean(1), model.fc_norm), model.head)
    elif hasattr(model, "head_dist"):
        logits = (_lin(t[:, 0], model.head) + _lin(t[:, 1], model.head_dist)) / 2
    else:
        logits = _lin(t[:, 0], model.head)
    logits.gather(1, torch.as_tensor(target)[:, None]).sum().backward()
    return (x * x.grad).sum(1).detach()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
def test_matches_float64_replica(variant, rule):
    model = tiny_vit(variant)
    x = input_for(model, batch=2, seed=4)
    ex = vx.explain(model, x, "attn_lrp", variant=rule)
    ref = replica_relevance(model, x, ex.target, rule)
    got = ex.extras["pixel_map"].double()
    assert got.shape == ref.shape == (2, *x.shape[2:])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_rules_off_is_input_times_gradient():
    model = tiny_vit("registers")
    x = input_for(model, batch=2, seed=1)
    ex = vx.explain(model, x, "attn_lrp", rules=False, target=[2, 5])
    xi = x.clone().requires_grad_(True)
    model.zero_grad()
    model(xi).gather(1, torch.tensor([[2], [5]])).sum().backward()
    model.zero_grad()
    torch.testing.assert_close(ex.extras["pixel_map"], (xi * xi.grad).sum(1).detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cp_lrp_conserves_the_logit_without_biases(variant):
    """With CP-LRP, LayerNorm sigma, GELU's f(x)/x and A frozen, the network is linear in the
    image, so input x gradient sums to the logit exactly once every bias and every additive
    token/position embedding is zero. The gamma rule conserves up to its 1e-6 stabiliser."""
    model = tiny_vit(variant)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "pos_embed", "reg_token", "dist_token"):
                p.zero_()
    x = input_for(model, batch=3, seed=2)
    ex = vx.explain(model, x, "attn_lrp")
    logit = ex.logits.gather(1, ex.target[:, None])[:, 0]
    torch.testing.assert_close(ex.extras["pixel_map"].sum((1, 2)), logit, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ex.patch_map.sum((1, 2)), logit, rtol=1e-4, atol=1e-5)
    exg = vx.explain(model, x, "attn_lrp", gamma_linear=0.25, gamma_conv=0.1)
    torch.testing.assert_close(exg.extras["pixel_map"].sum((1, 2)), logit, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(exg.extras["pixel_map"], ex.extras["pixel_map"])


def test_patch_map_sums_pixels_per_patch():
    model = tiny_vit("nonsquare")
    x = input_for(model, batch=2)
    ex = vx.explain(model, x, "attn_lrp")
    pix = ex.extras["pixel_map"]
    gh, gw = ex.layout.grid
    for i in range(gh):
        for j in range(gw):
            torch.testing.assert_close(ex.patch_map[:, i, j], pix[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].sum((1, 2)))


def test_gamma_rule_by_hand():
    """zennit's Gamma on one Linear, in gradient x input form, with loops."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 4, generator=g))
        lin.bias.copy_(torch.randn(3, generator=g) * 0.1)
    x = torch.randn(2, 4, generator=g, dtype=torch.float64)
    gout = torch.randn(2, 3, generator=g, dtype=torch.float64)
    gamma = 0.5
    lin = lin.double()
    h = lin.register_forward_hook(_gamma_hook(gamma, F.linear))
    try:
        xi = x.clone().requires_grad_(True)
        lin(xi).backward(gout)
    finally:
        h.remove()
    w, b = lin.weight.detach(), lin.bias.detach()
    expect = torch.zeros_like(x)
    for n in range(2):
        z = x[n] @ w.T + b
        for j in range(3):
            r = z[j] * gout[n, j]  # relevance of output j in gradient x input form
            if z[j] > 0:
                num = [x[n, i] * (w[j, i] + gamma * max(w[j, i], 0)) if x[n, i] > 0 else
                       x[n, i] * (w[j, i] + gamma * min(w[j, i], 0)) for i in range(4)]
                den = sum(num) + b[j] + gamma * max(b[j], 0)
            elif z[j] < 0:
                num = [x[n, i] * (w[j, i] + gamma * min(w[j, i], 0)) if x[n, i] > 0 else
                       x[n, i] * (w[j, i] + gamma * max(w[j, i], 0)) for i in range(4)]
                den = sum(num) + b[j] + gamma * min(b[j], 0)
            else:
                continue
            den = den + (1e-6 if den >= 0 else -1e-6)
            for i in range(4):
                expect[n, i] += num[i] / den * r
    torch.testing.assert_close((x * xi.grad), expect, rtol=1e-10, atol=1e-12)




def test_no_side_effects_on_other_methods():
    model = tiny_vit("vanilla").train()
    x = input_for(model, batch=2, seed=9)
    methods = [m for m in ("chefer_lrp", "rollout", "chefer_generic", "saliency") if m in vx.list_methods()]
    before_state = model_state(model)
    before = {m: vx.explain(model, x, m).patch_map for m in methods}
    for rule in ("cp", "attnlrp"):
        vx.explain(model, x, "attn_lrp", variant=rule, gamma_linear=0.1, gamma_conv=0.1)
    assert model_state(model) == before_state
    for m in methods:
        assert torch.equal(vx.explain(model, x, m).patch_map, before[m]), m


def test_hygiene_after_error_mid_backward():
    model = tiny_vit("distilled")
    before = model_state(model)
    with raising_in_backward(model.blocks[1]), pytest.raises(RuntimeError, match="boom"):  # a module the rules do not hook
        vx.explain(model, input_for(model, 2), "attn_lrp", variant="attnlrp", gamma_linear=0.25)
    assert model_state(model) == before


def test_bad_input():
    model = tiny_vit("vanilla")
    x = input_for(model, 1)
    with pytest.raises(InputError, match="out of range"):
        vx.explain(model, x, "attn_lrp", target=99)
    with pytest.raises(InputError, match="variant"):
        vx.explain(model, x, "attn_lrp", variant="full")
    with pytest.raises(InputError, match="gamma_linear"):
        vx.explain(model, x, "attn_lrp", gamma_linear=-1.0)
    assert model_state(model) == model_state(tiny_vit("vanilla"))


def test_class_specific():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=1, seed=3)
    a = vx.explain(model, x, "attn_lrp", target=0).extras["pixel_map"]
    b = vx.explain(model, x, "attn_lrp", target=4).extras["pixel_map"]
    assert not torch.allclose(a, b, rtol=1e-2, atol=1e-4)
