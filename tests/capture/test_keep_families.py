"""Token dropping on CaiT, ConViT, NaFlexViT and a SigLIP attention-pool (MAP) head; XCiT's refusal.

Against ``vit_explore.testing.float64_drop.drop64`` (shared with bench/family_table.py): each
family's forward written out on a float64 copy, the sequence cut by indexing right after the
position embedding, ConViT's GPSA written out with grid offsets computed from the kept patches'
own cells. Also: NaFlexViT's own variable-length (NaFlex) input with only the kept patches; the
restatement with the wrong offsets disagrees; drop-nothing = plain forward; batched sets = one set
at a time; ``intervene`` / ``counterfactual`` / occlusion with drop; hygiene after an error.
``block_tokens`` on CaiT and ConViT against ``float64_drop.blocked64`` (every attention written out
with -inf on the blocked columns of each softmax's input)."""

import pytest
import timm
import torch

import vit_explore as vx
from vit_explore.capture.ablation import drop_tokens
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.testing.float64 import model64
from vit_explore.testing.float64_drop import _GPSA64, _offsets, blocked64, drop64, grid64

from ..conftest import model_state

#: name -> (timm model, constructor overrides, input side)
SPECS = {
    "cait": ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "depth": 2, "depth_token_only": 1,
                                "embed_dim": 32, "num_heads": 2}, 32),
    "convit": ("convit_tiny", {"img_size": 32, "patch_size": 8, "depth": 2, "local_up_to_layer": 1,
                               "embed_dim": 48, "num_heads": 4}, 32),
    "naflex": ("naflexvit_base_patch16_gap", {"depth": 2, "embed_dim": 32, "num_heads": 2}, 48),
    "naflex_map": ("naflexvit_base_patch16_map", {"depth": 2, "embed_dim": 32, "num_heads": 2}, 48),
    "siglip_map": ("vit_base_patch16_siglip_224", {"img_size": 24, "patch_size": 8, "depth": 2, "embed_dim": 32,
                                                   "num_heads": 2}, 24),
}

#: rotary NaFlexViT (checked against its own patch_valid masking only)
ROTARY = {
    "naflex_rope": ("naflexvit_base_patch16_gap", {"depth": 2, "embed_dim": 32, "num_heads": 2, "rope_type": "axial",
                                                   "pos_embed": "none"}, 48),
    "naflex_rope_mixed": ("naflexvit_base_patch16_gap", {"depth": 2, "embed_dim": 32, "num_heads": 2,
                                                         "rope_type": "mixed", "pos_embed": "none"}, 48),
}


def build(name, seed=0):
    """A seeded tiny model with random biases, layer scales and gates (CaiT's layer scale starts at
    1e-5: the patches would barely reach the logits), sharper attention and a louder head."""
    timm_name, kw, _ = {**SPECS, **ROTARY}[name]
    torch.manual_seed(seed)
    m = timm.create_model(timm_name, pretrained=False, num_classes=5, **kw).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim <= 1 and any(k in n for k in ("bias", "gamma", "gating", "ls")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            if any(k in n for k in ("qkv.weight", "qk.weight", "q.weight", "k.weight")):
                p.mul_(3.0)
        m.get_classifier().weight.mul_(30.0)
    return m


def inputs(name, batch=2, seed=0):
    s = {**SPECS, **ROTARY}[name][2]
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


def num_patches(m, x):
    gh, gw = grid64(m, x)
    return gh * gw


@pytest.fixture(params=sorted(SPECS))
def fam(request):
    m = build(request.param)
    return request.param, m, inputs(request.param)


def test_dropping_nothing_is_the_plain_forward(fam):
    _, m, x = fam
    P = num_patches(m, x)
    with torch.no_grad():
        plain = m(x)
        with drop_tokens(m, torch.arange(P).expand(x.shape[0], P)):
            got = m(x)
    torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("which", ["scattered", "one", "corner"])
def test_dropping_equals_the_float64_restatement(fam, which):
    """On the float64 copy to 1e-10, on the float32 model to 1e-4 (logits of size ~10)."""
    _, m, x = fam
    P = num_patches(m, x)
    kept = {"scattered": [0, 2, 5, 7], "one": [P - 1], "corner": list(range(P // 2, P))}[which]
    ref = drop64(m, x, kept)
    m64 = model64(m)
    with torch.no_grad():
        full = m64(x.double())
        with drop_tokens(m64, torch.tensor([kept, kept])):
            got64 = m64(x.double())
        with drop_tokens(m, torch.tensor([kept, kept])):
            got32 = m(x)
    assert float((ref - full).abs().max()) > 1e-3  # the drop changes the logits: not a no-op
    torch.testing.assert_close(got64, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-4)


def test_batched_sets_equal_one_set_at_a_time(fam):
    _, m, x = fam
    sets = torch.tensor([[0, 2, 5, 7], [1, 3, 4, 8], [0, 1, 2, 8]])
    source = torch.tensor([0, 1, 0])
    with torch.no_grad():
        with drop_tokens(m, sets, source):
            got = m(x)
        each = []
        for s, i in zip(sets, source):
            with drop_tokens(m, s.tolist()):
                each.append(m(x[int(i) : int(i) + 1]))
    torch.testing.assert_close(got, torch.cat(each), rtol=1e-5, atol=1e-5)


def test_intervene_counterfactual_and_occlusion_drop_run_on_the_family(fam):
    _, m, x = fam
    x = x[:1]
    P = num_patches(m, x)
    iv = vx.intervene(m, x, [0, 4], mode="drop")
    kept = [p for p in range(P) if p not in (0, 4)]
    torch.testing.assert_close(iv.logits.double(), drop64(m, x, kept), rtol=1e-4, atol=1e-4)
    cf = vx.counterfactual(m, x, mode="drop", order_by="saliency", prune=False, max_patches=P - 1)
    gone = set(torch.nonzero(cf.patches.reshape(-1)).reshape(-1).tolist() if cf.found
               else cf.order[: cf.greedy_size].tolist())  # not found: the probabilities after the whole greedy pass
    ref_probs = drop64(m, x, [p for p in range(P) if p not in gone])[0].softmax(-1)
    torch.testing.assert_close(cf.probs.double(), ref_probs, rtol=1e-4, atol=1e-5)
    assert cf.found == (int(ref_probs.argmax()) != cf.target)
    ex = vx.explain(m, x, "occlusion", mode="drop", score="logit", target=1)
    with torch.no_grad():
        y0 = model64(m)(x.double())[0, 1]
    ref = torch.stack([y0 - drop64(m, x, [q for q in range(P) if q != p])[0, 1] for p in range(P)])
    assert float(ref.abs().max()) > 1e-3
    torch.testing.assert_close(ex.patch_map.flatten().double(), ref, rtol=1e-3, atol=1e-4)


def test_convit_offsets_are_the_models_own_grid_offsets():
    """The restatement's offsets (computed from row-major cells) equal GPSA's own rel_indices on
    the full grid, so restricting either to kept patches is one definition."""
    m = build("convit")
    P = 16
    own = m.blocks[0].attn.get_rel_indices(P)[0].double()
    torch.testing.assert_close(_offsets(torch.arange(P), 4), own, rtol=0, atol=0)


def test_convit_kept_patches_keep_their_own_offsets():
    """Not a trivial slice: the restatement with the offsets of the first n cells (the kept
    patches' content, the wrong positions) disagrees with drop_tokens, the right one agrees; and
    GPSA's cached buffer is the very tensor it was before."""
    m = build("convit")
    x = inputs("convit")[:1]
    kept = [5, 6, 13, 15]
    before = [blk.attn.rel_indices for blk in m.blocks if hasattr(blk.attn, "gating_param")]
    m64 = model64(m)
    with torch.no_grad():
        m64(x.double())  # the buffer now caches the full grid's offsets
        cached = m64.blocks[0].attn.rel_indices
        with drop_tokens(m64, kept):
            got = m64(x.double())
        assert m64.blocks[0].attn.rel_indices is cached
        with drop_tokens(m, kept):
            m(x)
    assert [blk.attn.rel_indices for blk in m.blocks if hasattr(blk.attn, "gating_param")] == before
    right = drop64(m, x, kept)
    wrong = model64(m)
    idx = torch.tensor(kept)
    with torch.no_grad():
        t = (wrong.patch_embed(x.double()) + wrong.pos_embed)[:, idx]
        wrong.blocks[0].attn = _GPSA64(wrong.blocks[0].attn, _offsets(torch.arange(4), 4))
        t = wrong.blocks[0](t)
        t = wrong.blocks[1](torch.cat([wrong.cls_token, t], dim=1))
        bad = wrong.head(wrong.norm(t)[:, 0])
    torch.testing.assert_close(got, right, rtol=0, atol=1e-10)
    assert float((got - bad).abs().max()) > 1e-4


@pytest.mark.parametrize("name", ["naflex", "naflex_map", "naflex_rope", "naflex_rope_mixed"])
def test_naflex_drop_equals_the_model_masking_the_dropped_patches(name):
    """NaFlexViT's own mechanism for a variable patch count: its NaFlex input (patches, their
    (row, col) coordinates, ``patch_valid``) with the dropped patches marked invalid, so its
    attention mask hides them as keys and its pool (mean or MAP) leaves them out. (Feeding only the
    kept patches is not the same: on the learned-table path timm adds the position table by
    sequence index, so the kept patches would take the first cells' positions.) With rotary
    embeddings (axial, mixed) each kept patch keeps its own rotary rows (``keep.keep_positions``)."""
    from timm.models.naflexvit import batch_patchify

    m = build(name)
    x = inputs(name)
    gh, gw = grid64(m, x)
    P = gh * gw
    kept = [0, 4, 5, P - 1]
    patches, _ = batch_patchify(x, m.embeds.patch_size)
    idx = torch.arange(P)
    coord = torch.stack([idx // gw, idx % gw], dim=-1).expand(x.shape[0], -1, -1)
    valid = torch.zeros(x.shape[0], P, dtype=torch.bool)
    valid[:, kept] = True
    with torch.no_grad():
        native = m({"patches": patches, "patch_coord": coord, "patch_valid": valid})
        with drop_tokens(m, torch.tensor([kept] * x.shape[0])):
            got = m(x)
        full = m(x)
    assert float((got - full).abs().max()) > 1e-3
    torch.testing.assert_close(got, native, rtol=1e-4, atol=1e-4)


def test_xcit_refuses_and_says_why_and_what_applies():
    torch.manual_seed(0)
    m = timm.create_model("xcit_nano_12_p16_224", pretrained=False, img_size=64, depth=2, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model_state(m)
    for call in (lambda: vx.intervene(m, x, [0], mode="drop"),
                 lambda: vx.explain(m, x, "occlusion", mode="drop")):
        with pytest.raises(UnsupportedModelError, match=r"convolutions over the patch grid.*pixel mode"):
            call()
    assert model_state(m) == before
    assert vx.intervene(m, x, [0], mode="blur").logits.shape == (1, 5)  # the pixel modes apply


@pytest.mark.parametrize("name", ["cait", "convit", "naflex"])
def test_model_left_as_found_after_an_error_inside_the_pass(name):
    m = build(name)
    x = inputs(name)
    with torch.no_grad():
        plain = m(x)
    m.train()
    gpsa = [blk.attn for blk in m.blocks if hasattr(blk.attn, "gating_param")]
    buffers = [a.rel_indices for a in gpsa]
    before = model_state(m)
    h = m.blocks[0].attn.proj.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with pytest.raises(RuntimeError, match="boom"), drop_tokens(m, [0, 3, 7]):
            m(x[:1])
    finally:
        h.remove()
    assert torch._C._len_torch_function_stack() == 0
    assert model_state(m) == before
    assert all(a.rel_indices is b for a, b in zip(gpsa, buffers))
    with pytest.raises(InputError, match="out of range"), drop_tokens(m, [0, 99]):
        m(x[:1])
    assert model_state(m) == before
    m.eval()
    with torch.no_grad():  # the model runs its full sequence again, as before
        torch.testing.assert_close(m(x), plain, rtol=1e-6, atol=1e-6)


def test_dropping_every_patch_of_an_attention_pool_model_is_refused():
    """The MAP head's latent query would attend over an empty sequence (SigLIP has no prefix token)."""
    m = build("siglip_map")
    x = inputs("siglip_map")[:1]
    with pytest.raises(InputError, match="attention-pool"):
        vx.intervene(m, x, list(range(9)), mode="drop")
    with pytest.raises(InputError, match="attention-pool"):
        vx.intervene(m, x, [list(range(9)), [1]], mode="drop")


@pytest.mark.parametrize("name", ["cait", "convit"])
@pytest.mark.parametrize("tokens", [[0], [3, 5, 9], [0, 2, 16]])
def test_block_tokens_equals_the_float64_restatement(name, tokens):
    """The class token (0) and patches (T + p): in the blocks before the class token joins the
    patch columns alone are masked (both GPSA softmaxes), after it every column."""
    m = build(name)
    x = inputs(name)
    ref = blocked64(m, x, tokens)
    m64 = model64(m)
    with torch.no_grad():
        full = m64(x.double())
        with vx.block_tokens(m64, tokens):
            got64 = m64(x.double())
        with vx.block_tokens(m, tokens):
            got32 = m(x)
        each = []
        for i in range(x.shape[0]):
            with vx.block_tokens(m, tokens):
                each.append(m(x[i : i + 1]))
    assert float((ref - full).abs().max()) > 1e-3
    torch.testing.assert_close(got64, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(each), got32, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cait", "convit"])
def test_block_tokens_grid_and_hygiene(name):
    """A (gh, gw) patch grid blocks the same tokens as their indices; fused_attn, flags and hooks are
    as found after an error inside the pass; every patch blocked in a patch-only block is refused."""
    m = build(name)
    x = inputs(name)[:1]
    grid = torch.zeros(4, 4, dtype=torch.bool)
    grid[0, 2] = grid[3, 1] = True
    with torch.no_grad():
        with vx.block_tokens(m, grid):
            a = m(x)
        with vx.block_tokens(m, [1 + 2, 1 + 13]):
            b = m(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    attns = [blk.attn for blk in [*m.blocks, *getattr(m, "blocks_token_only", ())]]
    fused = [a.__dict__.get("fused_attn", "missing") for a in attns]
    before = model_state(m)
    h = m.blocks[-1].attn.proj.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with pytest.raises(RuntimeError, match="boom"), vx.block_tokens(m, [3]):
            m(x)
    finally:
        h.remove()
    assert torch._C._len_torch_function_stack() == 0
    assert model_state(m) == before
    assert [a.__dict__.get("fused_attn", "missing") for a in attns] == fused
    with pytest.raises(InputError, match="every token would be blocked"), vx.block_tokens(m, torch.ones(4, 4).bool()):
        m(x)
    assert model_state(m) == before


@pytest.mark.parametrize("name", ["cait", "convit"])
def test_dropping_every_patch_of_a_late_class_token_model(name):
    """CaiT and ConViT read the class token, which joins after the patch blocks: with every patch
    dropped it attends to itself alone (the patch blocks run on an empty sequence)."""
    m = build(name)
    x = inputs(name)[:1]
    iv = vx.intervene(m, x, list(range(16)), mode="drop")
    ref = drop64(m, x, [])
    with torch.no_grad():
        full = model64(m)(x.double())
    assert float((ref - full).abs().max()) > 1e-3
    torch.testing.assert_close(iv.logits.double(), ref, rtol=1e-4, atol=1e-4)
