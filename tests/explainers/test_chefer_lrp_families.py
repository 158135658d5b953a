"""Chefer LRP on the attention families against the float64 replica written from the reference's
rules (``vit_explore.testing.float64_chefer_lrp``: ``ref_*``, autograd and all), extended as the
reference would apply them: the relative position bias as a second summand of the scores (the
reference's Add rule), the rotary embedding as a Linear per token (alpha=1/beta=0, its matrix from a
restatement of the rotation), a gated MLP's product by the reference's einsum rule (each factor's
share halved)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.errors import UnsupportedModelError
from vit_explore.testing.float64_chefer_lrp import chefer_row64

from ..families import FAMILIES, family_input, family_model


def replica(model, x1, target):
    """Chefer LRP of one image (1, 3, H, W), float64: the read-out row (N,) of J - I."""
    return chefer_row64(model, x1, target)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chefer_lrp_matches_the_float64_replica_exactly(family):
    """In float64 our closed forms (with the captured scores and rotary maps) equal the
    reference's autograd rules to rounding."""
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import transformer_attribution

    model = family_model(family).double()
    x = family_input(model, batch=2).double()
    info = inspect_vit(model)
    view = lrp_view(model, info)
    trace = capture(model, x, view.needs(0), target=[1, 4], info=info)
    ours = transformer_attribution(trace, view, 0).flatten(1)
    T = model.num_prefix_tokens
    ref = torch.stack([replica(model, x[b : b + 1], t)[T:] for b, t in enumerate([1, 4])])
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("family", ["eva02_base", "beit", "dinov3"])
def test_chefer_lrp_float32_is_the_float64_map_to_rounding(family):
    model = family_model(family)
    x = family_input(model, batch=2)
    ex = vx.explain(model, x, "chefer_lrp")
    T = model.num_prefix_tokens
    ref = torch.stack([replica(model, x[b : b + 1], int(ex.target[b]))[T:] for b in range(2)])
    scale = ref.abs().amax(dim=1, keepdim=True)  # the rules divide by near-zero sums: float32 conditioning
    torch.testing.assert_close(ex.patch_map.flatten(1).double() / scale, ref / scale, rtol=0, atol=1e-3)


def test_chefer_lrp_batch_equals_per_image():
    model = family_model("eva02_base")
    x = family_input(model, batch=3)
    full = vx.explain(model, x, "chefer_lrp").patch_map
    for b in range(3):
        torch.testing.assert_close(vx.explain(model, x[b : b + 1], "chefer_lrp").patch_map[0], full[b],
                                   rtol=1e-5, atol=1e-7)


def test_chefer_lrp_refuses_post_norm_and_gated_attention():
    m = family_model("eva02", seed=1)
    from timm.models.eva import Eva

    post = Eva(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=3, use_post_norm=True)
    with pytest.raises(UnsupportedModelError, match="EvaBlockPostNorm.*pre-norm"):
        vx.explain(post.eval(), torch.randn(1, 3, 28, 28), "chefer_lrp")
    gated = Eva(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=3, attn_type="gated")
    if gated.blocks[0].attn.gate is not None:
        with pytest.raises(UnsupportedModelError, match="gate"):
            vx.explain(gated.eval(), torch.randn(1, 3, 28, 28), "chefer_lrp")
    assert math.isfinite(float(vx.explain(m, family_input(m, 1), "chefer_lrp").patch_map.sum()))


@pytest.mark.parametrize("arch", ["vit_base_patch16_reg4_gap_256", "beit_base_patch16_224"])
def test_chefer_lrp_mean_pool_map_leaves_out_the_pools_identity_term(arch):
    """A mean pool's read-out row of J = Π(Ā + I) carries its own identity term 1/P on every patch;
    on these random-weight GAP models Ā is far below 1/P, so w J was 1/P to float32 rounding (a
    uniform map). The map is w (J - I) (docs/methods.md §4.4): not uniform, the float64 restatement's."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert model.global_pool == "avg"
    ex = vx.explain(model, x, "chefer_lrp")
    from vit_explore.testing.float64_chefer_lrp import chefer_lrp64

    ref = chefer_lrp64(model, x, ex.target).flatten(1)
    P = ref.shape[1]
    scale = ref.abs().amax(dim=1, keepdim=True)
    assert bool((scale < 1e-3 / P).all())  # the relevance terms: far below the identity's 1/P
    assert bool(((1.0 / P + ref).float().double() - 1.0 / P).abs().amax(dim=1).le(2e-7).all())  # w J: uniform
    spread = (ref.amax(dim=1) - ref.amin(dim=1)) / scale[:, 0]
    assert bool((spread > 0.5).all())  # w (J - I): not uniform
    got = ex.patch_map.flatten(1).double()
    torch.testing.assert_close(got / scale, ref / scale, rtol=0, atol=1e-2)  # float32 conditioning (§4.3)


def test_chefer_lrp_class_token_map_is_the_references_row_of_j():
    """For a class token w (J - I) and w J share their patch columns: J formed as the product."""
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import _block_relevance, _head_relevance, transformer_attribution
    from vit_explore.testing import tiny_vit

    model = tiny_vit("registers").double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).double()
    info = inspect_vit(model)
    view = lrp_view(model, info)
    tr = capture(model, x, view.needs(0), info=info)
    r, J = _head_relevance(tr, view), None
    for i in range(len(view.blocks) - 1, -1, -1):
        r, r_a = _block_relevance(tr, view.blocks[i], r, tr.attn_at(i), last=i == 0, layer=i)
        a_bar = (tr.attn_grad_at(i) * r_a).clamp(min=0).mean(1) + torch.eye(r_a.shape[-1], dtype=torch.float64)
        J = a_bar if J is None else J @ a_bar
    T = model.num_prefix_tokens
    torch.testing.assert_close(transformer_attribution(tr, view, 0).flatten(1), J[:, 0, T:], rtol=1e-12, atol=0)


@pytest.mark.parametrize("arch", ["vit_base_patch16_reg4_gap_256", "beit_base_patch16_224"])
def test_chefer_generic_mean_pool_map_leaves_out_the_identity_term(arch):
    """chefer_generic takes the same read-out as chefer_lrp (docs/methods.md §5): w (R - I). On a
    mean pool w R was the constant 1/P plus terms far below it (a nearly uniform map); w (R - I) is
    not uniform and equals R - I built as the full float64 product here."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ex = vx.explain(model, x, "chefer_generic")
    from vit_explore.capture import capture, inspect_vit

    m64 = timm.create_model(arch, pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2,
                            embed_dim=32, num_heads=2).eval()
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    tr = capture(m64, x.double(), vx.Needs(attn=True, attn_grad=True), target=ex.target, info=inspect_vit(m64))
    N = tr.attn_at(0).shape[-1]
    R = torch.eye(N, dtype=torch.float64).repeat(2, 1, 1)
    for i in range(tr.num_layers):
        R = R + (tr.attn_grad_at(i) * tr.attn_at(i)).clamp(min=0).mean(1) @ R
    w = tr.layout.readout_weights(torch.float64, R.device)
    ref = tr.layout.patch_columns(w @ (R - torch.eye(N, dtype=torch.float64))).flatten(1)
    P = ref.shape[1]
    whole = tr.layout.patch_columns(w @ R).flatten(1)
    assert bool(((whole - 1.0 / P).abs() <= 1e-2 / P).all())  # w R: 1/P plus terms far below it
    scale = ref.abs().amax(dim=1, keepdim=True)
    assert bool(((ref.amax(1) - ref.amin(1)) / scale[:, 0] > 0.5).all())  # w (R - I): not uniform
    torch.testing.assert_close(ex.patch_map.flatten(1).double() / scale, ref / scale, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ read-outs: the MAP head (SigLIP)


def map_model(seed=0, pool="token", latents=1, cls=False):
    """A tiny SigLIP (MAP head) with random non-zero biases, so every term of the pool matters."""
    import timm

    torch.manual_seed(seed)
    m = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=5, img_size=32,
                          patch_size=8, depth=2, embed_dim=32, num_heads=2, class_token=cls).eval()
    if pool != "token" or latents != 1:
        from timm.layers import AttentionPoolLatent

        m.attn_pool = AttentionPoolLatent(32, num_heads=2, mlp_ratio=4.0, latent_len=latents, pool_type=pool,
                                          norm_layer=torch.nn.LayerNorm).eval()
        torch.nn.init.normal_(m.attn_pool.latent)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if p.ndim == 1 and "bias" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m


def code64(model, x, target, start_layer=0):
    """Our batched closed forms on a float64 model (``Explanation`` keeps maps in float32)."""
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import transformer_attribution

    info = inspect_vit(model)
    view = lrp_view(model, info)
    tr = capture(model, x, view.needs(start_layer), target=target, info=info)
    return transformer_attribution(tr, view, start_layer).flatten(1)


@pytest.mark.parametrize(("pool", "latents", "cls"), [("token", 1, False), ("avg", 3, False), ("token", 1, True)])
def test_chefer_lrp_map_head_matches_the_float64_restatement(pool, latents, cls):
    """The pool's relevance by the reference's autograd rules (float64_chefer_lrp._pool_relevance64)
    and the map w J with w the pool's relevance-weighted row: batched closed forms equal it in float64.
    With a class token the pool reads the patches only (``pool_include_prefix=False``)."""
    from vit_explore.testing.float64_chefer_lrp import chefer_lrp64

    model = map_model(pool=pool, latents=latents, cls=cls)
    assert model.num_prefix_tokens == int(cls)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([1, 4])
    ref = chefer_lrp64(model, x, target).flatten(1)
    assert ref.abs().max() > 0
    ours = code64(copy.deepcopy(model).double(), x.double(), target)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-12 * float(ref.abs().max()))
    f32 = vx.explain(model, x, "chefer_lrp", target=target).patch_map.flatten(1).double()
    scale = ref.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(f32 / scale, ref / scale, rtol=0, atol=1e-3)


def test_chefer_lrp_map_head_batch_equals_per_image():
    model = map_model(seed=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    full = vx.explain(model, x, "chefer_lrp")
    for b in range(2):
        one = vx.explain(model, x[b : b + 1], "chefer_lrp", target=full.target[b : b + 1]).patch_map[0]
        torch.testing.assert_close(one, full.patch_map[b], rtol=1e-5, atol=1e-6 * float(full.patch_map[b].abs().max()))


def test_chefer_lrp_map_head_conserves_relevance_but_the_latents_query_share():
    """The reference's rules conserve Σ R through Linear (alpha=1/beta=0, up to its 1e-9), Add (rescaled
    to Σ R), Clone, IndexSelect and the halved products (R_A and R_v each take Σ R / 2). In the pool the
    scores' product q kᵀ gives half of R_A (a quarter of the pool's Σ R) to the latent's query, a
    parameter: the tokens receive 3/4 of the target's relevance; every block passes it on whole."""
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import _block_relevance, _pool_relevance, linear_rule

    model = map_model(seed=1).double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    info = inspect_vit(model)
    view = lrp_view(model, info)
    tr = capture(model, x, view.needs(0), target=[0, 3], info=info)
    onehot = F.one_hot(tr.target, 5).double()
    r_pooled = linear_rule(tr.inputs["head"], onehot, view.head)
    torch.testing.assert_close(r_pooled.sum(1), torch.ones(2, dtype=torch.float64), rtol=1e-6, atol=0)
    r, _ = _pool_relevance(tr, view, r_pooled)
    torch.testing.assert_close(r.sum((1, 2)), torch.full((2,), 0.75, dtype=torch.float64), rtol=1e-6, atol=0)
    for i in (1, 0):
        r, _ = _block_relevance(tr, view.blocks[i], r, tr.attn_at(i), last=False, layer=i)
        torch.testing.assert_close(r.sum((1, 2)), torch.full((2,), 0.75, dtype=torch.float64), rtol=1e-6, atol=0)


def test_chefer_lrp_map_head_hygiene_after_an_error():
    from ..conftest import model_state, raising_in_backward

    model = map_model().train()
    model.attn_pool.kv.weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 3, 32, 32)
    vx.explain(model, x, "chefer_lrp")
    assert model_state(model) == before
    with raising_in_backward(model.attn_pool.mlp), pytest.raises(RuntimeError, match="boom"):
        vx.explain(model, x, "chefer_lrp")
    assert model_state(model) == before
    model.attn_pool.pos_embed = torch.nn.Parameter(torch.zeros(16, 32))
    with pytest.raises(UnsupportedModelError, match="position embedding"):
        vx.explain(model, x, "chefer_lrp")
    del model.attn_pool.pos_embed
    model.attn_pool.pos_embed = None
    assert model_state(model) == before


# ------------------------------------------------------------------ read-outs: class attention (CaiT)


def cait_model(seed=0):
    """A tiny CaiT (two talking-heads patch blocks, two class blocks) with random layer scales and
    biases, so that the attention branches carry relevance."""
    import timm

    torch.manual_seed(seed)
    m = timm.create_model("cait_xxs24_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2,
                          depth_token_only=2, embed_dim=32, num_heads=2).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if "gamma" in n or "bias" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("start_layer", [0, 1, 3])
def test_chefer_lrp_cait_matches_the_float64_restatement(start_layer):
    """Talking heads (proj_l, proj_w: the Linear rule over the head axis; the cam on the tensor that
    multiplies v) and class attention (Cat, IndexSelect and Clone rules) against the reference's
    autograd rules over CaiT written out in float64 (float64_chefer_cait)."""
    from vit_explore.testing.float64_chefer_lrp import chefer_lrp64

    model = cait_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 0])
    ref = chefer_lrp64(model, x, target, start_layer).flatten(1)
    assert ref.abs().min(dim=1).values.lt(ref.abs().max(dim=1).values).all() and ref.abs().max() > 0
    info_m = copy.deepcopy(model).double()
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import transformer_attribution

    info = inspect_vit(info_m)
    view = lrp_view(info_m, info)
    tr = capture(info_m, x.double(), view.needs(start_layer), target=target, info=info)
    ours = transformer_attribution(tr, view, start_layer).flatten(1)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-12 * float(ref.abs().max()))
    f32 = vx.explain(model, x, "chefer_lrp", target=target, start_layer=start_layer).patch_map.flatten(1).double()
    scale = ref.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(f32 / scale, ref / scale, rtol=0, atol=1e-3)


def test_chefer_lrp_cait_batch_equals_per_image():
    model = cait_model(seed=3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    full = vx.explain(model, x, "chefer_lrp")
    for b in range(3):
        one = vx.explain(model, x[b : b + 1], "chefer_lrp", target=full.target[b : b + 1]).patch_map[0]
        torch.testing.assert_close(one, full.patch_map[b], rtol=1e-5, atol=1e-6 * float(full.patch_map[b].abs().max()))


def test_chefer_lrp_cait_hygiene_after_an_error():
    from ..conftest import model_state, raising_in_backward

    model = cait_model().train()
    model.blocks_token_only[0].attn.k.weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 3, 32, 32)
    vx.explain(model, x, "chefer_lrp")
    assert model_state(model) == before
    with raising_in_backward(model.blocks_token_only[1].mlp), pytest.raises(RuntimeError, match="boom"):
        vx.explain(model, x, "chefer_lrp")
    assert model_state(model) == before


# ------------------------------------------------------------------ ConViT (GPSA blocks, then MHSA blocks)


def convit_model(seed=0):
    """A tiny ConViT (two GPSA blocks over the patches, the class token joined, one MHSA block) with
    random biases and gates, so that both branches of every GPSA mix matter."""
    import timm

    torch.manual_seed(seed)
    m = timm.create_model("convit_tiny", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=3,
                          local_up_to_layer=2, embed_dim=48, num_heads=4).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if "bias" in n or "gating" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m


def test_chefer_lrp_convit_matches_the_float64_restatement():
    """GPSA: the renormalisation an identity (its row sums are 1), the gate constants, the sum by the Add
    rule (the positional share stays with pos_proj), the content softmax an identity, q kᵀ by the einsum
    rule, qk and v merged by Clone; the join cat(cls_token, x) by the Cat rule. Against the reference's
    autograd rules over ConViT written out in float64 (float64_chefer_convit), the whole map and the GPSA
    blocks' own part of it (start_layer 0 minus start_layer 2)."""
    from vit_explore.testing.float64_chefer_lrp import chefer_lrp64

    model = convit_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 3])
    ref = {s: chefer_lrp64(model, x, target, s).flatten(1) for s in (0, 2)}
    ours = {s: code64(copy.deepcopy(model).double(), x.double(), target, s) for s in (0, 2)}
    for s in (0, 2):
        torch.testing.assert_close(ours[s], ref[s], rtol=1e-8, atol=1e-12 * float(ref[s].abs().max()))
    gpsa_ref, gpsa_ours = ref[0] - ref[2], ours[0] - ours[2]
    assert gpsa_ref.abs().max() > 0
    torch.testing.assert_close(gpsa_ours, gpsa_ref, rtol=1e-6, atol=1e-9 * float(gpsa_ref.abs().max()))
    f32 = vx.explain(model, x, "chefer_lrp", target=target).patch_map.flatten(1).double()
    scale = ref[0].abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(f32 / scale, ref[0] / scale, rtol=0, atol=1e-3)


def test_chefer_lrp_convit_batch_equals_per_image_and_conserves_above_the_join():
    """Batch 2 equals each image alone; the MHSA block above the join passes Σ R = 1 on whole (no layer
    scale, no positional branch there: every rule on its path conserves)."""
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import _block_relevance, _head_relevance

    model = convit_model(seed=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    full = vx.explain(model, x, "chefer_lrp")
    for b in range(2):
        one = vx.explain(model, x[b : b + 1], "chefer_lrp", target=full.target[b : b + 1]).patch_map[0]
        torch.testing.assert_close(one, full.patch_map[b], rtol=1e-5, atol=1e-6 * float(full.patch_map[b].abs().max()))
    m64 = model.double()
    info = inspect_vit(m64)
    view = lrp_view(m64, info)
    tr = capture(m64, x.double(), view.needs(0), target=full.target, info=info)
    r = _head_relevance(tr, view)
    r, _ = _block_relevance(tr, view.blocks[2], r, tr.attn_at(2), last=False, layer=2)
    # up to the rules' 1e-9 in every denominator (a few of them ~1e-3 here)
    torch.testing.assert_close(r.sum((1, 2)), torch.ones(2, dtype=torch.float64), rtol=1e-4, atol=0)


def test_chefer_lrp_convit_hygiene_after_an_error():
    from ..conftest import model_state, raising_in_backward

    model = convit_model().train()
    model.blocks[0].attn.qk.weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 3, 32, 32)
    vx.explain(model, x, "chefer_lrp")
    assert model_state(model) == before
    with raising_in_backward(model.blocks[1].mlp), pytest.raises(RuntimeError, match="boom"):
        vx.explain(model, x, "chefer_lrp")
    assert model_state(model) == before
