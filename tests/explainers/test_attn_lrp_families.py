"""attn_lrp on the attention families against a float64 forward with the rules applied by hand:
LayerNorm (every one, q_norm / k_norm / scale norms included) with sigma detached, the activation's
identity rule, a gated MLP's product with the uniform rule (each factor's gradient halved), the
rotary embedding and the score bias as plain linear maps / constants, layer scale as a product with
a constant; CP-LRP detaches A, AttnLRP halves A and q, k, v."""

import pytest
import torch
import torch.nn.functional as F

import vit_explore as vx

from ..families import FAMILIES, _rotate64, bias64, family_input, family_model, model64


def _half(t):
    return 0.5 * t + 0.5 * t.detach()


def _ln(x, mod):
    if isinstance(mod, torch.nn.Identity):
        return x
    assert isinstance(mod, torch.nn.LayerNorm)
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps).detach()
    y = (x - mu) / sigma
    return y * mod.weight + mod.bias if mod.weight is not None else y


def _act(x, f):
    out = f(x)
    ratio = torch.where(x != 0, out / torch.where(x != 0, x, torch.ones_like(x)), torch.full_like(x, 0.5))
    return x * ratio.detach()


def _lin(x, mod):
    return F.linear(x, mod.weight, mod.bias)


def _gamma(blk, i):
    ls = getattr(blk, f"ls{i}", None)
    return getattr(ls, "gamma", None) if ls is not None else getattr(blk, f"gamma_{i}", None)


def replica(model, x, target, rule):
    """Pixel relevance (B, H, W), float64: the model's own embedding (plain gradient: conv and
    additions), then the blocks and the head written out with the rules."""
    m = model64(model)
    for p in m.parameters():
        p.requires_grad_(False)
    for mod in (getattr(m, "norm_pre", None), getattr(m.patch_embed, "norm", None)):
        assert mod is None or isinstance(mod, torch.nn.Identity)
    got = {}
    hs = [blk.attn.register_forward_pre_hook(lambda mod, a, kw, i=i: got.update({i: kw}), with_kwargs=True)
          for i, blk in enumerate(m.blocks)]

    def stop(mod, args):  # the embedding is the model's own; the blocks are replaced below
        got["tokens"] = args[0]
        raise StopIteration

    hs.append(m.blocks[0].register_forward_pre_hook(stop))
    xi = x.double().requires_grad_(True)
    try:
        m(xi)
    except StopIteration:
        pass
    finally:
        for h in hs:
            h.remove()
    with torch.no_grad():  # the rope / shared bias of each block: from a plain run
        hs = [blk.attn.register_forward_pre_hook(lambda mod, a, kw, i=i: got.update({i: kw}), with_kwargs=True)
              for i, blk in enumerate(m.blocks)]
        try:
            m(x.double())
        finally:
            for h in hs:
                h.remove()
    t = got["tokens"]
    ident = torch.nn.Identity()
    for i, blk in enumerate(m.blocks):
        a, kw = blk.attn, got[i]
        B, N, _ = t.shape
        H = a.num_heads
        y = _ln(t, blk.norm1)
        if getattr(a, "qkv", None) is not None:
            W = a.qkv.weight
            b = torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias]) if getattr(a, "q_bias", None) is not None \
                else a.qkv.bias
        else:
            projs = (a.q_proj, a.k_proj, a.v_proj)
            W = torch.cat([p.weight for p in projs])
            b = torch.cat([p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projs])
        qkv = F.linear(y, W, b)
        if rule == "attnlrp":
            qkv = _half(qkv)
        q, k, v = qkv.reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
        q, k = _ln(q, getattr(a, "q_norm", ident)), _ln(k, getattr(a, "k_norm", ident))
        if kw.get("rope") is not None:
            T, half = a.num_prefix_tokens, getattr(a, "rotate_half", False)
            q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], kw["rope"], half)], dim=2)
            k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], kw["rope"], half)], dim=2)
        s = (q * a.scale) @ k.transpose(-1, -2)
        bias = bias64(a, kw, N)
        A = (s if bias is None else s + bias).softmax(-1)
        A = A.detach() if rule == "cp" else _half(A)
        o = _ln((A @ v).transpose(1, 2).reshape(B, N, -1), getattr(a, "norm", ident))
        att = _lin(o, a.proj)
        g1 = _gamma(blk, 1)
        t = t + (att * g1 if g1 is not None else att)
        y2 = _ln(t, blk.norm2)
        mlp = blk.mlp
        if hasattr(mlp, "fc1_g"):
            hdn = _act(_half(_lin(y2, mlp.fc1_g)), F.silu) * _half(_lin(y2, mlp.fc1_x))
        elif hasattr(mlp, "gate_last"):
            x1, x2 = _half(_lin(y2, mlp.fc1)).chunk(2, dim=-1)
            hdn = x1 * _act(x2, F.silu) if mlp.gate_last else _act(x1, F.silu) * x2
        else:
            hdn = _act(_lin(y2, mlp.fc1), F.gelu)
        out = _lin(_ln(hdn, mlp.norm), mlp.fc2)
        g2 = _gamma(blk, 2)
        t = t + (out * g2 if g2 is not None else out)
    t = _ln(t, m.norm)
    T = m.num_prefix_tokens
    pooled = t[:, T:].mean(1) if m.global_pool == "avg" else t[:, 0]
    logits = _lin(_ln(pooled, m.fc_norm), m.head)
    (g,) = torch.autograd.grad(logits.gather(1, torch.as_tensor(target)[:, None]).sum(), xi)
    return (xi * g).sum(1).detach()


@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attn_lrp_matches_the_float64_replica(family, rule):
    model = family_model(family)
    x = family_input(model, batch=2)
    ex = vx.explain(model, x, "attn_lrp", variant=rule)
    ref = replica(model, x, ex.target, rule)
    got = ex.extras["pixel_map"].double()
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
