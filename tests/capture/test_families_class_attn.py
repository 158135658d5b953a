"""Class attention: CaiT (talking-heads patch blocks, then class-attention blocks) and XCiT's
class-attention stage, against a float64 restatement written here. Every block's attention is
laid out on the N = 1 + P tokens (identity rows for the tokens a block passes unchanged; CaiT's
patch blocks before the class token exists), as docs/methods.md §1.3 says."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture.session import Needs, capture
from vit_explore.errors import UnsupportedModelError

N, P = 17, 16


def _randomise(m, seed):
    with torch.no_grad():  # non-trivial biases, layer scales and head mixing, so every term matters
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if "bias" in n or "gamma" in n or "proj_l" in n or "proj_w" in n or "cls_token" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if "gamma" in n else 0.0))
    return m


def cait(seed=0):
    torch.manual_seed(seed)
    m = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          depth_token_only=2, embed_dim=32, num_heads=2, num_classes=5).eval()
    return _randomise(m, seed)


def xcit(seed=0):
    torch.manual_seed(seed)
    m = timm.create_model("xcit_nano_12_p16_224", pretrained=False, img_size=64, depth=2, num_classes=5).eval()
    return _randomise(m, seed)


def inputs(size, batch=2, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- float64 restatement
def _half(t):
    return 0.5 * t + 0.5 * t.detach()


def _ln(x, mod, rule):
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps)
    return (x - mu) / (sigma.detach() if rule else sigma) * mod.weight + mod.bias


def _gelu(x, rule):
    out = F.gelu(x)
    if not rule:
        return out
    ratio = torch.where(x != 0, out / torch.where(x != 0, x, torch.ones_like(x)), torch.full_like(x, 0.5))
    return x * ratio.detach()


def _lin(x, mod):
    return F.linear(x, mod.weight, mod.bias)


def _mlp(x, mlp, rule):
    return _lin(_gelu(_lin(x, mlp.fc1), rule), mlp.fc2)


def _keep(keep, s, a):
    a.retain_grad()
    keep["scores"].append(s.detach())
    keep["attn"].append(a)


def _rule_a(a, rule):
    return a.detach() if rule == "cp" else _half(a) if rule == "attnlrp" else a


def _class_attn(y, at, rule, keep):
    """(B, 1, C): the class token's query over all tokens of y."""
    B, n, C = y.shape
    H = at.num_heads
    q = _lin(y[:, :1], at.q).reshape(B, 1, H, C // H).transpose(1, 2)
    k = _lin(y, at.k).reshape(B, n, H, C // H).transpose(1, 2)
    v = _lin(y, at.v).reshape(B, n, H, C // H).transpose(1, 2)
    s = (q * at.scale) @ k.transpose(-1, -2)  # (B, H, 1, N)
    a = s.softmax(-1)
    _keep(keep, s, a)
    o = (_rule_a(a, rule) @ v).transpose(1, 2).reshape(B, 1, C)
    return _lin(_half(o) if rule == "attnlrp" else o, at.proj)


def cait64(model, x, rule=None):
    m = copy.deepcopy(model).double()
    keep = {"attn": [], "scores": []}
    t = m.patch_embed(x) + m.pos_embed
    for blk in m.blocks:
        at = blk.attn
        B, n, C = t.shape
        H = at.num_heads
        qkv = _lin(_ln(t, blk.norm1, rule), at.qkv)
        if rule == "attnlrp":
            qkv = _half(qkv)
        q, k, v = qkv.reshape(B, n, 3, H, C // H).permute(2, 0, 3, 1, 4)
        s = _lin(((q * at.scale) @ k.transpose(-1, -2)).permute(0, 2, 3, 1), at.proj_l).permute(0, 3, 1, 2)
        a = _lin(s.softmax(-1).permute(0, 2, 3, 1), at.proj_w).permute(0, 3, 1, 2)  # heads mixed after
        _keep(keep, s, a)
        o = (_rule_a(a, rule) @ v).transpose(1, 2).reshape(B, n, C)
        t = t + blk.gamma_1 * _lin(o, at.proj)
        t = t + blk.gamma_2 * _mlp(_ln(t, blk.norm2, rule), blk.mlp, rule)
    cls = m.cls_token.expand(t.shape[0], -1, -1)
    for blk in m.blocks_token_only:
        cls = cls + blk.gamma_1 * _class_attn(_ln(torch.cat([cls, t], 1), blk.norm1, rule), blk.attn, rule, keep)
        cls = cls + blk.gamma_2 * _mlp(_ln(cls, blk.norm2, rule), blk.mlp, rule)
    return _lin(_ln(torch.cat([cls, t], 1), m.norm, rule)[:, 0], m.head), keep


def xcit64(model, x):
    """The class-attention stage from the tokens entering it (the model's own XCA stage)."""
    seen = []
    h = model.cls_attn_blocks[0].register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach()))
    try:
        with torch.no_grad():
            model(x.float())
    finally:
        h.remove()
    m = copy.deepcopy(model).double()
    keep = {"attn": [], "scores": []}
    t = seen[0].double()
    for blk in m.cls_attn_blocks:
        y = _ln(t, blk.norm1, None)
        t = t + blk.gamma1 * torch.cat([_class_attn(y, blk.attn, None, keep), y[:, 1:]], 1)
        t = torch.cat([_ln(t[:, :1], blk.norm2, None), t[:, 1:]], 1)
        t = t + torch.cat([blk.gamma2 * _mlp(t[:, :1], blk.mlp, None), torch.zeros_like(t[:, 1:])], 1)
    return _lin(_ln(t, m.norm, None)[:, 0], m.head), keep


def grads64(fn, model, x, target):
    logits, keep = fn(model, x.double())
    logits.gather(1, target[:, None]).sum().backward()
    return logits.detach(), [a.detach() for a in keep["attn"]], [a.grad for a in keep["attn"]], keep["scores"]


def embed(a, fill):
    """Lay a (B, H, q, k) block out on the N tokens (the identity / zero / (0, -inf) elsewhere)."""
    B, H, q, _ = a.shape
    eye = torch.eye(N, dtype=torch.float64)
    base = {"attn": eye, "grad": 0 * eye, "scores": torch.where(eye > 0, 0.0, float("-inf"))}[fill]
    out = base.repeat(B, H, 1, 1)
    if q == 1:
        out[:, :, 0] = a[:, :, 0]
    else:
        out[:, :, 1:, 1:] = a
    return out


def close(got, ref, rtol=1e-4):
    got = got.double()
    ref = ref.double()
    assert ref.abs().max() > 0
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite], ref[finite], rtol=rtol, atol=rtol * float(ref[finite].abs().max()))


@pytest.fixture(scope="module")
def cait_case():
    model, x, target = cait(), inputs(32), torch.tensor([1, 3])
    return model, x, target, grads64(cait64, model, x, target)


@pytest.fixture(scope="module")
def xcit_case():
    model, x, target = xcit(), inputs(64), torch.tensor([2, 0])
    return model, x, target, grads64(xcit64, model, x, target)


# ----------------------------------------------------------------------------- CaiT
def test_cait_capture_matches_the_model(cait_case):
    model, x, target, (logits, attns, grads, scores) = cait_case
    tr = capture(model, x, Needs(attn=True, attn_grad=True, scores=True), target=target)
    assert tr.layout.num_tokens == N and tr.layout.readout == "cls" and tr.num_layers == 4
    close(tr.logits, logits)
    for i in range(4):
        close(tr.attn_at(i), embed(attns[i], "attn"))
        close(tr.scores_at(i), embed(scores[i], "scores"))
        close(tr.attn_grad_at(i), embed(grads[i], "grad"), rtol=1e-3)
    for i in (2, 3):  # class attention: the softmax of the captured scores is the captured attention
        close(tr.scores_at(i).double().softmax(-1), tr.attn_at(i))
    at = model.blocks[0].attn  # talking heads: proj_w of the softmax of the captured scores
    mixed = _lin(tr.scores_at(0)[:, :, 1:, 1:].softmax(-1).permute(0, 2, 3, 1), at.proj_w).permute(0, 3, 1, 2)
    close(mixed, tr.attn_at(0)[:, :, 1:, 1:])
    assert tr.notes[0] and tr.notes[1] and tr.notes[2] is None and tr.below is None


def test_cait_methods(cait_case):
    model, x, target, (_, attns, grads, _) = cait_case
    A = [embed(a, "attn") for a in attns]
    G = [embed(g, "grad") for g in grads]
    close(vx.explain(model, x, "raw_attention").patch_map, attns[3].mean(1)[:, 0, 1:].reshape(2, 4, 4))
    R = torch.eye(N, dtype=torch.float64).repeat(2, 1, 1)
    for a, g in zip(A, G):
        R = R + (g * a).clamp(min=0).mean(1) @ R
    close(vx.explain(model, x, "chefer_generic", target=target).patch_map, R[:, 0, 1:].reshape(2, 4, 4), rtol=1e-3)
    J = None
    for a in A[2:]:
        a_hat = a.mean(1) + torch.eye(N, dtype=torch.float64)
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        J = a_hat if J is None else a_hat @ J
    close(vx.explain(model, x, "rollout", start_layer=2).patch_map, J[:, 0, 1:].reshape(2, 4, 4))
    a, g = attns[3][:, :, 0, 1:], grads[3][:, :, 0, 1:]
    pre = (g.mean(-1, keepdim=True) * a).mean(1)
    assert pre.abs().max() > 0
    got = vx.explain(model, x, "attn_grad_cam", target=target).patch_map.double()
    torch.testing.assert_close(got, pre.clamp(min=0).reshape(2, 4, 4), rtol=1e-3, atol=1e-3 * float(pre.abs().max()))


def test_cait_tam_from_the_class_blocks(cait_case):
    model, x, target, (_, attns, grads, _) = cait_case
    total = grads[3].clone()
    for alpha in (0.0, 0.5):
        total += grads64(cait64, model, alpha * x, target)[2][3]
    w = (total / 3).clamp(min=0).mean(1)[:, 0]
    s = attns[3].mean(1)[:, 0]
    s = torch.einsum("bn,bnm->bm", s, embed(attns[2], "attn").mean(1)) + s
    got = vx.explain(model, x, "tam", target=target, steps=3, start_layer=2).patch_map
    close(got, (s * w)[:, 1:].reshape(2, 4, 4), rtol=1e-3)


@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
def test_cait_attn_lrp(cait_case, rule):
    model, x, target, _ = cait_case
    xi = x.double().requires_grad_(True)
    logits, _ = cait64(model, xi, rule=rule)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xi)
    ex = vx.explain(model, x, "attn_lrp", target=target, variant=rule)
    close(ex.extras["pixel_map"], (xi * g).sum(1).detach(), rtol=1e-3)


@pytest.mark.parametrize("method,params,match", [
    ("rollout", {}, "talking-heads.*start_layer >= 2"),
    ("attention_flow", {}, "talking-heads.*start_layer >= 2"),
    ("tam", {}, "talking-heads.*start_layer >= 2"),
    ("ag_cam", {}, "talking-heads.*chefer_generic"),
])
def test_cait_refusals_say_why_and_what_applies(method, params, match):
    with pytest.raises(UnsupportedModelError, match=match):
        vx.explain(cait(), inputs(32), method, **params)


def test_cait_flow_runs_on_the_class_blocks():
    ex = vx.explain(cait(), inputs(32), "attention_flow", start_layer=2)
    assert torch.isfinite(ex.patch_map).all() and ex.patch_map.shape == (2, 4, 4)


# ----------------------------------------------------------------------------- XCiT
def test_xcit_class_attention_matches_the_model(xcit_case):
    model, x, target, (logits, attns, grads, scores) = xcit_case
    tr = capture(model, x, Needs(attn=True, attn_grad=True, scores=True), target=target)
    assert tr.num_layers == 2 and tr.below and "cross-covariance" in tr.below
    close(tr.logits, logits)
    for i in range(2):
        close(tr.attn_at(i), embed(attns[i], "attn"))
        close(tr.scores_at(i), embed(scores[i], "scores"))
        close(tr.attn_grad_at(i), embed(grads[i], "grad"), rtol=1e-3)
        close(tr.scores_at(i).double().softmax(-1), tr.attn_at(i))
    close(vx.explain(model, x, "raw_attention", layer=0).patch_map, attns[0].mean(1)[:, 0, 1:].reshape(2, 4, 4))
    a, g = attns[1][:, :, 0, 1:], grads[1][:, :, 0, 1:]
    pre = (g.mean(-1, keepdim=True) * a).mean(1)
    got = vx.explain(model, x, "attn_grad_cam", target=target).patch_map.double()
    assert pre.abs().max() > 0
    torch.testing.assert_close(got, pre.clamp(min=0).reshape(2, 4, 4), rtol=1e-3, atol=1e-3 * float(pre.abs().max()))


@pytest.mark.parametrize("method", ["rollout", "attention_flow", "chefer_generic", "tam", "ag_cam", "attn_lrp",
                                    "chefer_lrp"])
def test_xcit_token_methods_say_why_and_what_applies(method):
    with pytest.raises(UnsupportedModelError, match="cross-covariance.*(raw_attention|attn_grad_cam)"):
        vx.explain(xcit(), inputs(64), method)


# ----------------------------------------------------------------------------- both
@pytest.mark.parametrize("family,method,params", [
    ("cait", "chefer_generic", {}), ("cait", "attn_lrp", {}), ("cait", "rollout", {"start_layer": 2}),
    ("cait", "tam", {"start_layer": 2, "steps": 2}), ("cait", "attn_grad_cam", {}),
    ("xcit", "attn_grad_cam", {}), ("xcit", "raw_attention", {}),
])
def test_batch_equals_per_image(family, method, params):
    model, size = (cait(), 32) if family == "cait" else (xcit(), 64)
    x = inputs(size, batch=3)
    both = vx.explain(model, x, method, target=[0, 2, 4], **params).patch_map
    for b in range(3):
        one = vx.explain(model, x[b : b + 1], method, target=[[0, 2, 4][b]], **params).patch_map
        torch.testing.assert_close(one, both[b : b + 1], rtol=1e-4, atol=1e-6 * float(both.abs().max()))


def _state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    fused = [m.__dict__.get("fused_attn", "unset") for m in model.modules()]
    return hooks, fused, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("family,method", [("cait", "chefer_generic"), ("cait", "attn_lrp"), ("cait", "rollout"),
                                           ("xcit", "attn_grad_cam"), ("xcit", "rollout")])
def test_model_left_as_found(family, method):
    model, size = (cait(), 32) if family == "cait" else (xcit(), 64)
    for m in model.modules():
        if hasattr(m, "attn_drop") and hasattr(m, "fused_attn"):
            m.fused_attn = True
    model.train()
    model.head.weight.requires_grad_(False)
    before = _state(model)
    try:
        vx.explain(model, inputs(size), method)
    except UnsupportedModelError:
        pass
    assert _state(model) == before

    def boom(mod, args, out):
        raise RuntimeError("boom in the head")

    h = model.head.register_forward_hook(boom)
    before = _state(model)
    with pytest.raises((RuntimeError, UnsupportedModelError)):
        vx.explain(model, inputs(size), method)
    assert _state(model) == before
    h.remove()


@pytest.mark.parametrize("family", ["cait", "xcit"])
def test_grad_cam_on_the_last_class_block(family):
    """Grad-CAM's default layer is the last block's norm1 (the reference's ``blocks[-1].norm1``):
    the last class-attention block, whose input holds the class token and the patches."""
    model, size = (cait(), 32) if family == "cait" else (xcit(), 64)
    x, target = inputs(size), torch.tensor([1, 4])
    ex = vx.explain(model, x, "grad_cam", target=target)
    blocks = model.blocks_token_only if family == "cait" else model.cls_attn_blocks
    assert ex.extras["layer"] == ("blocks_token_only" if family == "cait" else "cls_attn_blocks") + ".1.norm1"
    m = copy.deepcopy(model).double()
    seen = []
    norm1 = (m.blocks_token_only if family == "cait" else m.cls_attn_blocks)[len(blocks) - 1].norm1
    def keep(mod, args, out):
        out.retain_grad()
        seen.append(out)

    h = norm1.register_forward_hook(keep)
    try:
        m(x.double()).gather(1, target[:, None]).sum().backward()
    finally:
        h.remove()
    act, grad = seen[0][:, 1:].detach(), seen[0].grad[:, 1:]
    ref = (act * grad.mean(1, keepdim=True)).sum(-1).clamp(min=0).reshape(2, 4, 4)
    close(ex.patch_map, ref, rtol=1e-3)


def test_block_tokens_refuses_xcit():  # CaiT: tests/capture/test_keep_families.py
    model, g = xcit(), 4
    blocked = vx.block_tokens(model, torch.ones(g, g, dtype=torch.bool))
    with pytest.raises(UnsupportedModelError, match="block_tokens.*cross-covariance.*pixel mode"):
        blocked.__enter__()
