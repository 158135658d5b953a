"""CaiT (talking-heads patch blocks, then class attention), XCiT's class-attention stage and ConViT
(GPSA, then MHSA): every attention method that applies against its float64 restatement in
``vit_explore.testing.float64_cait`` / ``float64_convit`` (attention written from the weights,
laid out on the 1 + P tokens as docs/methods.md §1.3 says; no call into the explainers or
capture), the captured attention, gradients and scores against the same restatement, batch 2
against each image, and comparisons that fail where the restatement is changed."""

import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture.session import Needs, capture
from vit_explore.testing.float64 import METHODS64, close_to, model64, reference64, run64
from vit_explore.testing.float64_attention import (
    attention_flow64,
    chefer_generic64,
    raw_attention64,
    rollout64,
    tam64,
)
from vit_explore.testing.float64_cait import lay_out64
from vit_explore.testing.float64_convit import attn_lrp_family64


def _randomise(m, seed, names, gamma=False):
    """Biases, layer scales, head mixing, gates and the class token away from their init, so
    that every term of the attention and of the blocks shows in the maps."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if any(k in n for k in names):
                base = 1.0 if gamma and "gamma" in n else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
            if any(k in n for k in ("qkv.weight", "qk.weight", "attn.q.weight", "attn.k.weight")):
                p.mul_(3.0)  # peaked attention: gradients far from zero
        m.get_classifier().weight.mul_(20.0)
    return m


def cait():
    torch.manual_seed(0)
    m = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          depth_token_only=2, embed_dim=32, num_heads=2, num_classes=5).eval()
    return _randomise(m, 0, ("bias", "gamma", "proj_l", "proj_w", "cls_token"), gamma=True), 32


def xcit():
    torch.manual_seed(0)
    m = timm.create_model("xcit_nano_12_p16_224", pretrained=False, img_size=64, depth=2, num_classes=5).eval()
    return _randomise(m, 0, ("bias", "gamma", "cls_token"), gamma=True), 64


def convit():
    torch.manual_seed(0)
    m = timm.create_model("convit_tiny", pretrained=False, img_size=32, patch_size=8, depth=3, local_up_to_layer=2,
                          embed_dim=48, num_heads=4, num_classes=5).eval()
    return _randomise(m, 0, ("bias", "gating", "pos_proj", "cls_token")), 32


BUILD = {"cait": cait, "xcit": xcit, "convit": convit}
#: the methods each family's table row compares (the others are refused by the code: not defined)
METHODS = {
    "cait": ["attn_grad_cam", "attn_lrp", "chefer_generic", "raw_attention", "vit_cx"],
    "xcit": ["attn_grad_cam", "raw_attention", "vit_cx"],
    "convit": ["attention_flow", "attn_grad_cam", "attn_lrp", "chefer_generic", "raw_attention", "rollout", "tam",
               "vit_cx"],
}
_CACHE: dict = {}


def fam(name):
    if name not in _CACHE:
        m, size = BUILD[name]()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            t = m(x).argsort(1)[:, -2]  # the runner-up class: not the argmax default
        _CACHE[name] = (m, x, t)
    return _CACHE[name]


CASES = [(f, me) for f, ms in METHODS.items() for me in ms]


@pytest.mark.parametrize(("family", "method"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_method_equals_its_float64_restatement(family, method):
    m, x, t = fam(family)
    # attn_grad_cam's ReLU zeroes the whole map for some classes: every class, at least one non-zero
    targets = [t] if method != "attn_grad_cam" else [torch.full_like(t, c) for c in range(m.num_classes)]
    nonzero = False
    for tt in targets:
        ex = vx.explain(m, x, method, target=tt, **METHODS64[method])
        ref = reference64(m, x, method, tt)
        nonzero |= float(ref.abs().max()) > 0
        ok, err = close_to(ex.patch_map, ref)
        assert ok, f"{method} on {family}: largest error {err:.2e} of the map's magnitude"
    assert nonzero


@pytest.mark.parametrize("family", ["cait", "convit"])
def test_attnlrp_variant_equals_its_float64_restatement(family):
    m, x, t = fam(family)
    ex = vx.explain(m, x, "attn_lrp", target=t, variant="attnlrp")
    ref = attn_lrp_family64(m, x, t, "attnlrp")
    assert float(ref.abs().max()) > 0
    ok, err = close_to(ex.patch_map, ref)
    assert ok, err
    assert not close_to(ref, attn_lrp_family64(m, x, t, "cp"))[0]  # the two rules differ here


def _captured(m, x, t, score_layers):
    tr = capture(m, x, Needs(attn=True, attn_grad=True), target=t)
    sc = capture(m, x, Needs(scores=True, layers=tuple(score_layers)), target=t) if score_layers else None
    return tr, sc


@pytest.mark.parametrize("family", ["cait", "xcit", "convit"])
def test_captured_attention_gradients_and_scores_are_the_restated(family):
    """The trace (float32) equals the float64 restatement from the weights, block by block, on
    the 1 + P tokens; where a single softmax defines the scores, softmax(captured S) is the
    captured A (CaiT's talking heads: proj_w of it)."""
    m, x, t = fam(family)
    r = run64(model64(m), x, t)
    gpsa = [i for i, b in enumerate(m.blocks) if hasattr(b.attn, "gating_param")] if family == "convit" else []
    tr, sc = _captured(m, x, t, [i for i in range(len(r.A)) if i not in gpsa])
    assert len(tr.attn) == len(r.A)
    talking = len(m.blocks) if family == "cait" else 0
    for i, (a, g, s) in enumerate(zip(r.A, r.G, r.S)):
        torch.testing.assert_close(tr.attn[i].double(), a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tr.attn_grad[i].double(), g, rtol=1e-3, atol=1e-4 * float(g.abs().max()))
        if i in gpsa:
            assert bool(s[:, :, 1:, 1:].isnan().all())  # no single score tensor: NaN, never a number
            continue
        cs = sc.scores[i].double()
        torch.testing.assert_close(cs, s, rtol=1e-4, atol=1e-4)
        p = cs.softmax(-1)
        if i < talking:  # the patch rows: proj_w mixes the heads of the softmax
            w = m.blocks[i].attn.proj_w
            p[:, :, 1:, 1:] = torch.einsum("gh,bhqk->bgqk", w.weight.double(), p[:, :, 1:, 1:]) + w.bias.double()[
                None, :, None, None]
        torch.testing.assert_close(p, tr.attn[i].double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["cait", "xcit", "convit"])
def test_batch_of_two_equals_each_image(family):
    m, x, t = fam(family)
    for method in ("attn_grad_cam", "chefer_generic" if family != "xcit" else "raw_attention"):
        both = reference64(m, x, method, t)
        for b in range(2):
            one = vx.explain(m, x[b : b + 1], method, target=t[b : b + 1]).patch_map
            assert close_to(one, both[b : b + 1])[0], (family, method, b)


def test_xcit_attention_gradient_at_batch_1_is_a_finite_difference():
    """timm's XCiT has a wrong input gradient at batch 1 (float64_perturb.GradientCheckError), in its
    convolutional patch embedding; the gradient of the logit w.r.t. the last class attention, which
    attn_grad_cam reads, is checked here against a float64 central difference at batch 1."""
    m, x, t = fam("xcit")
    m64, x1, t1 = model64(m), x[:1], t[:1]
    r = run64(m64, x1, t1)
    v = torch.randn(r.A[-1][:, :, :1].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drop = m64.cls_attn_blocks[-1].attn.attn_drop

    def logit(eps):
        h = drop.register_forward_hook(lambda mod, a, out: out + eps * v)
        try:
            with torch.no_grad():
                return float(m64(x1.double())[0, t1[0]])
        finally:
            h.remove()

    fd = (logit(1e-6) - logit(-1e-6)) / 2e-6
    ad = float((r.G[-1][:, :, :1] * v).sum())
    assert abs(fd - ad) <= 1e-6 * abs(ad) + 1e-9 and abs(ad) > 1e-6
    assert close_to(vx.explain(m, x1, "attn_grad_cam", target=t1).patch_map, reference64(m, x1, "attn_grad_cam", t1))[0]


# ----------------------------------------------------------------------------- the comparisons can fail
def test_talking_heads_without_proj_w_is_not_exact():
    """chefer_generic on CaiT reads the talking heads' attention as the model used it, proj_w(softmax(S)):
    the restatement with softmax(S) in its place disagrees with the explainer."""
    m, x, t = fam("cait")
    ex = vx.explain(m, x, "chefer_generic", target=t)
    r = run64(model64(m), x, t)
    assert close_to(ex.patch_map, chefer_generic64(r))[0]
    L, n = len(m.blocks), r.A[0].shape[-1]
    r.A[:L] = [lay_out64(s[:, :, 1:, 1:].softmax(-1), n, "patches", "attn") for s in r.S[:L]]
    assert not close_to(ex.patch_map, chefer_generic64(r))[0]


def test_convit_content_softmax_alone_is_not_exact():
    """rollout on ConViT composes GPSA's gated mix: with the content softmax alone in its place
    (the gate and the positional softmax left out) the restatement disagrees."""
    m, x, t = fam("convit")
    ex = vx.explain(m, x, "rollout", target=t)
    m64 = model64(m)
    r = run64(m64, x, t)
    assert close_to(ex.patch_map, rollout64(r))[0]
    grabbed = []
    blk = m64.blocks[0]
    h = blk.norm1.register_forward_hook(lambda mod, a, out: grabbed.append(out))
    with torch.no_grad():
        m64(x.double())
    h.remove()
    xin, attn = grabbed[0], blk.attn
    B, P, _ = xin.shape
    q, k = F.linear(xin, attn.qk.weight).reshape(B, P, 2, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    content = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)
    r.A[0] = lay_out64(content, r.A[0].shape[-1], "patches", "attn")
    assert not close_to(ex.patch_map, rollout64(r))[0]


def test_class_attention_read_out_is_the_class_row():
    """raw_attention on CaiT / XCiT reads row 0 (the class token's query) of the last class block;
    the same row of the class block before it is a different map."""
    for family in ("cait", "xcit"):
        m, x, t = fam(family)
        ex = vx.explain(m, x, "raw_attention")
        r = run64(model64(m), x, t)
        assert close_to(ex.patch_map, raw_attention64(r))[0]
        assert not close_to(ex.patch_map, r.A[-2].mean(1)[:, 0, 1:].reshape(ex.patch_map.shape))[0]


@pytest.mark.parametrize("method", ["rollout", "attention_flow", "tam"])
def test_cait_methods_on_the_class_blocks_alone(method):
    """rollout, attention flow and TAM refuse CaiT's talking-heads blocks (their rows are not
    probabilities); with start_layer = depth they run on the class-attention blocks (docs/methods.md
    §1.3): restated over those blocks only."""
    m, x, t = fam("cait")
    L = len(m.blocks)
    ex = vx.explain(m, x, method, target=t, start_layer=L, **METHODS64.get(method, {}))
    m64 = model64(m)
    if method == "tam":
        ref = tam64(m64, x, t, steps=METHODS64["tam"]["steps"], start_layer=L)
    else:
        r = run64(m64, x, t)
        r = dataclasses.replace(r, A=r.A[L:], G=r.G[L:], S=r.S[L:])
        ref = {"rollout": rollout64, "attention_flow": attention_flow64}[method](r)
    assert float(ref.abs().max()) > 0
    ok, err = close_to(ex.patch_map, ref)
    assert ok, f"{method}: largest error {err:.2e} of the map's magnitude"


def test_a_restatement_that_is_not_the_module_is_refused(monkeypatch):
    """restated_run64 checks each restated attention against the module's own output and
    attention: a talking-heads restatement without proj_w raises instead of giving a reference."""
    import vit_explore.testing.float64_cait as f64c

    def no_proj_w(attn, x):
        out, _, S = f64c.talking_heads64(attn, x)
        return out, S.softmax(-1), S

    m, x, t = fam("cait")
    monkeypatch.setattr(f64c, "_th", no_proj_w)
    with pytest.raises(AssertionError, match="TalkingHeadAttn is not the model's"):
        run64(model64(m), x, t)
