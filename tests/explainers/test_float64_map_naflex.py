"""The attention methods on the attention-pool (MAP) head (SigLIP, timm ``AttentionPoolLatent``) and
on NaFlexViT against their float64 restatements (``vit_explore.testing.float64``: the pool's latent
query attention restated from its own q / kv weights, ``float64_map``; NaFlexViT's embedding from
its weights, ``float64_naflex``; no call into the explainers or capture).

Models as in ``bench/family_table.py`` (depth 2, width 32, two heads), made to matter: non-trivial
biases and latents, qkv, the pool's kv and q x4 (peaked attention, a read-out row far from uniform),
head x50; NaFlexViT's layer scales (1e-5 at init) set to 1."""

import copy
import dataclasses

import pytest
import timm
import torch

import vit_explore as vx
from vit_explore.capture.session import Needs, capture
from vit_explore.testing.float64 import (
    METHODS64,
    attn_lrp64,
    chefer_generic64,
    close_to,
    dropped64,
    model64,
    raw_attention64,
    reference64,
    rollout64,
    run64,
    scores64,
)
from vit_explore.testing.float64_map import map_row64
from vit_explore.testing.float64_naflex import naflex_mask64, naflex_tokens64

SMALL = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def map_model(latents=1, pool="token", prefix=False, heads=2, sharpen=True):
    """SigLIP's MAP head (``vit_base_patch16_siglip_224``); ``prefix``: a class token and two
    registers (the pool then attends over the patches only); ``latents`` > 1: the pool rebuilt with
    that many latent queries, pooled by ``pool``."""
    torch.manual_seed(0)
    kw = {"class_token": True, "reg_tokens": 2} if prefix else {}
    m = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                          **{**SMALL, "num_heads": heads}, **kw).eval()
    if latents > 1:
        from timm.layers import AttentionPoolLatent

        m.attn_pool = AttentionPoolLatent(32, num_heads=heads, latent_len=latents, pool_type=pool,
                                          norm_layer=torch.nn.LayerNorm).eval()
    if sharpen:
        _sharpen(m)
    return m


def naflex_model(name="naflexvit_base_patch16_gap"):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=5, **SMALL).eval()
    _sharpen(m)
    return m


def _sharpen(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "bias" in n or "latent" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            if n.endswith(("qkv.weight", "kv.weight")) or n.startswith("attn_pool.q."):
                p.mul_(4.0)
            if n.endswith(("ls1.gamma", "ls2.gamma")):
                p.fill_(1.0)
        m.get_classifier().weight.mul_(50.0)


#: case -> (model factory, input size (H, W))
CASES = {
    "map": (map_model, (32, 32)),
    "map-2latents-avg-prefix": (lambda: map_model(2, "avg", prefix=True), (32, 32)),
    "naflex": (naflex_model, (64, 64)),
    "naflex-3x5": (naflex_model, (48, 80)),  # the patch count follows the input: 15 patches
    "naflex-map-3x4": (lambda: naflex_model("naflexvit_base_patch16_map"), (48, 64)),  # both: a class token, a pool
}
_CACHE: dict = {}


def case(name):
    if name not in _CACHE:
        make, (H, W) = CASES[name]
        m = make()
        x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            t = m(x).argsort(1)[:, -2]  # the runner-up class: not the argmax default
        _CACHE[name] = (m, x, t)
    return _CACHE[name]


ATTENTION = ["raw_attention", "rollout", "attention_flow", "chefer_generic", "attn_grad_cam", "ag_cam", "tam",
             "vit_cx", "attn_lrp"]


@pytest.mark.parametrize("method", ATTENTION)
@pytest.mark.parametrize("name", sorted(CASES))
def test_method_equals_its_float64_restatement(name, method):
    m, x, t = case(name)
    # attn_grad_cam's ReLU zeroes whole maps for some classes: every class, at least one non-zero
    targets = [t] if method != "attn_grad_cam" else [torch.full_like(t, c) for c in range(5)]
    nonzero = False
    for tt in targets:
        ex = vx.explain(m, x, method, target=tt, **METHODS64[method])
        ref = reference64(m, x, method, tt)
        assert ref.shape == ex.patch_map.shape == (2, *ex.layout.grid)
        nonzero |= float(ref.abs().max()) > 0
        ok, err = close_to(ex.patch_map, ref)
        assert ok, f"{method} on {name}: largest error {err:.2e} of the map's magnitude"
    assert nonzero


@pytest.mark.parametrize("name", ["map", "naflex-3x5"])
def test_attnlrp_variant_equals_its_restatement(name):
    m, x, t = case(name)
    ok, err = close_to(vx.explain(m, x, "attn_lrp", target=t, variant="attnlrp").patch_map,
                       attn_lrp64(m, x, t, "attnlrp"))
    assert ok, err


@pytest.mark.parametrize("method", ["grad_cam", "chefer_lrp"])
def test_naflex_grad_cam_and_chefer_lrp(method):
    m, x, t = case("naflex-3x5")
    # chefer_lrp's rules amplify float32 rounding (tests/explainers/test_float64_families.py): its code in float64
    mm, xx = (copy.deepcopy(m).double(), x.double()) if method == "chefer_lrp" else (m, x)
    ref = reference64(m, x, method, t)
    assert float(ref.abs().max()) > 0
    ok, err = close_to(vx.explain(mm, xx, method, target=t).patch_map, ref)
    assert ok, err


def test_intervene_drop_on_the_map_head():
    """Token drop on a MAP model: the pool attends over the kept tokens only."""
    m, x, _ = case("map-2latents-avg-prefix")
    kept = [0, 2, 3, 7, 11, 15]
    iv = vx.intervene(m, x[:1], [p for p in range(16) if p not in kept], mode="drop")
    ok, err = close_to(iv.logits, dropped64(m, x[:1], kept))
    assert ok, err


@pytest.mark.parametrize("name", ["map", "map-2latents-avg-prefix"])
def test_the_pool_attention_is_the_models(name):
    """The restated pool (scores from its q / kv weights) against the pool capture records from the
    model: softmax of the captured scores is the captured attention; attention, scores, gradient and
    the read-out row equal the restatement's."""
    m, x, t = case(name)
    tr = capture(m, x, Needs(attn=True, attn_grad=True, scores=True), target=t)
    r = run64(model64(m), x, t)
    assert r.pool is not None and tr.pool_attn is not None and tr.pool_scores is not None
    torch.testing.assert_close(r.pool.S.softmax(-1), r.pool.A, rtol=0, atol=1e-12)
    torch.testing.assert_close(tr.pool_scores.softmax(-1), tr.pool_attn, rtol=1e-5, atol=1e-6)
    for got, ref in [(tr.pool_attn, r.pool.A), (tr.pool_scores, r.pool.S), (tr.pool_attn_grad, r.pool.G),
                     (tr.layout.readout_query, r.w)]:
        assert close_to(got, ref)[0]
    T = m.num_prefix_tokens
    assert r.w.shape == (2, T + 16) and (r.w[:, :T] == 0).all()
    torch.testing.assert_close(r.w.sum(1), torch.ones(2, dtype=torch.float64))
    assert float((r.w[:, T:] - 1 / 16).abs().max()) > 0.3 / 16  # far from a mean pool: the row matters


def test_batch_of_two_equals_each_image():
    m, x, t = case("map-2latents-avg-prefix")
    for method in ("rollout", "chefer_generic"):
        both = reference64(m, x, method, t)
        for b in range(2):
            one = vx.explain(m, x[b : b + 1], method, target=t[b : b + 1]).patch_map
            assert close_to(one, both[b : b + 1])[0]
            assert close_to(reference64(m, x[b : b + 1], method, t[b : b + 1]), both[b : b + 1])[0]


def test_a_uniform_pool_reads_out_the_mean():
    """Hand-checkable: one head and a pool whose keys are 0 attend uniformly, so the read-out row is
    1/N on every token, raw attention is the column mean of the last attention, and every
    attention method reads out as on the same model with a global-average pool."""
    m = map_model(heads=1)
    with torch.no_grad():
        m.attn_pool.kv.weight[:32].zero_()
        m.attn_pool.kv.bias[:32].zero_()
    x, t = case("map")[1], case("map")[2]
    r = run64(model64(m), x, t)
    torch.testing.assert_close(r.w, torch.full((2, 16), 1 / 16, dtype=torch.float64), rtol=0, atol=1e-15)
    ex = vx.explain(m, x, "raw_attention")
    assert close_to(ex.patch_map, r.A[-1][:, 0].mean(1).reshape(2, 4, 4))[0]
    gap = copy.deepcopy(m)
    gap.attn_pool, gap.global_pool = None, "avg"
    for method in ("raw_attention", "rollout", "attention_flow"):
        assert close_to(vx.explain(m, x, method).patch_map, vx.explain(gap, x, method).patch_map)[0]


def test_a_restatement_with_the_wrong_row_is_not_exact():
    """The comparisons can fail: the mean-pool row instead of the pool's, and ``p (R - I)`` instead of
    chefer_generic's ``p R``, both disagree with the code on the MAP model."""
    m, x, t = case("map")
    r = run64(model64(m), x, t)
    mean_row = dataclasses.replace(r, w=torch.full((16,), 1 / 16, dtype=torch.float64))
    assert not close_to(vx.explain(m, x, "rollout").patch_map, rollout64(mean_row))[0]
    assert not close_to(vx.explain(m, x, "raw_attention").patch_map, raw_attention64(mean_row))[0]
    ex = vx.explain(m, x, "chefer_generic", target=t).patch_map
    assert close_to(ex, chefer_generic64(r))[0]
    assert not close_to(ex, chefer_generic64(dataclasses.replace(r, pool=None)))[0]


def test_naflex_embedding_is_the_models():
    """The restated embedding (patches in (ph, pw, C) order, the position table resized to the grid,
    class and register tokens in front) is the tokens the model's first block gets; the other
    patch order is not."""
    m, x, _ = case("naflex-3x5")
    m64 = model64(m)
    got = []
    h = m64.blocks[0].register_forward_pre_hook(lambda mod, a: got.append(a[0]))
    try:
        with torch.no_grad():
            m64(x.double())
    finally:
        h.remove()
    mine = naflex_tokens64(m64, x)
    assert mine.shape == got[0].shape == (2, m.num_prefix_tokens + 15, 32)
    assert close_to(mine, got[0])[0]
    m64.embeds.channels_last = False
    assert not close_to(naflex_tokens64(m64, x), got[0])[0]


def test_naflex_mask_is_the_models():
    """A NaFlex batch with padding (image 1 has 10 of 16 patches valid): the restated additive mask is
    the one the blocks get, and softmax of the restated scores with it is the model's attention."""
    m, _, _ = case("naflex")
    m64 = model64(m)
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 16, 16 * 16 * 3, generator=g, dtype=torch.float64)
    coord = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(1, 16, 2)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 10:] = False
    seen: list = []
    h1 = m64.blocks[0].attn.register_forward_pre_hook(lambda mod, a, kw: seen.append((a[0], kw)), with_kwargs=True)
    h2 = m64.blocks[0].attn.attn_drop.register_forward_hook(lambda mod, a, out: seen.append(out))
    try:
        with torch.no_grad():
            m64({"patches": patches, "patch_coord": coord.expand(2, -1, -1), "patch_valid": valid})
    finally:
        h1.remove()
        h2.remove()
    (xin, kw), A = seen
    mask = naflex_mask64(valid, m64.num_prefix_tokens)
    assert torch.equal(mask, kw["attn_mask"])
    S = scores64(m64.blocks[0].attn, xin, {"attn_mask": mask})
    torch.testing.assert_close(S.softmax(-1), A, rtol=0, atol=1e-12)
    n = m64.num_prefix_tokens + 10  # image 1's valid tokens
    assert float(A[1, :, :n, n:].abs().max()) == 0 and float(A[1, :, :n, :n].min()) > 0  # padding is not attended


def test_float64_run_leaves_the_copy_without_hooks():
    for name in ("map", "naflex"):
        m, x, t = case(name)
        m64 = model64(m)
        run64(m64, x, t)
        assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m64.modules())


def test_map_row_checks_the_token_count():
    m, x, t = case("map-2latents-avg-prefix")
    r = run64(model64(m), x, t)
    with pytest.raises(ValueError, match="attends over 16 tokens, expected 17"):
        map_row64(m, r.pool.A, 20)
