"""Token dropping on the rotary (EVA, EVA-02, RoPE, DINOv3) and relative-position (BEiT, BEiT v2,
relpos, srelpos) families: a dropped token takes its bias rows and columns with it and each kept
token keeps its own rotary position. Against a float64 restatement (``vit_explore.testing.float64.
dropped64``, shared with bench/family_table.py) that runs the blocks on the kept tokens with an
attention written out by hand from the bias / rotary tensor of the full sequence indexed by the kept
tokens' original positions; drop-nothing = plain forward; batched sets = one set at a time; hygiene."""

import pytest
import torch

import vit_explore as vx
from vit_explore.capture.ablation import drop_tokens
from vit_explore.errors import InputError
from vit_explore.testing.float64 import dropped64, model64
from vit_explore.testing.float64_perturb import _KeptAttention

from ..conftest import model_state
from ..families import FAMILIES, family_input, family_model


def sharp_model(name):
    """``family_model`` with sharper attention and a louder head (random-weight logits barely move
    when tokens go; scaled, every drop and every wrong position shows in the logits)."""
    m = family_model(name)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(k in n for k in ("qkv.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
        m.get_classifier().weight.mul_(50.0)
    return m


@pytest.fixture(params=sorted(FAMILIES))
def fam(request):
    m = sharp_model(request.param)
    return request.param, m, family_input(m)


def test_family_has_position_terms(fam):
    """The drop tests are tests of slicing only where there is something to slice."""
    name, m, _ = fam
    a = m.blocks[0].attn
    assert (getattr(a, "relative_position_bias_table", None) is not None or getattr(a, "rel_pos", None) is not None
            or getattr(m, "shared_rel_pos", None) is not None or getattr(m, "rope", None) is not None), name


def test_dropping_nothing_is_the_plain_forward(fam):
    _, m, x = fam
    P = m.patch_embed.num_patches
    with torch.no_grad():
        plain = m(x)
        with drop_tokens(m, torch.arange(P).expand(x.shape[0], P)):
            got = m(x)
    torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-5)  # a gathered copy: float32 rounding at most


@pytest.mark.parametrize("kept", [[0, 2, 5, 7], [8], [1, 2, 3, 4, 5, 6, 7, 8]])
def test_dropping_equals_the_float64_restatement(fam, kept):
    """On the float64 copy (fused and unfused attention) to 1e-10, on the float32 model to 1e-4 (logits of size ~10)."""
    _, m, x = fam
    x = x[:1]
    ref = dropped64(m, x, kept)
    m64 = model64(m)
    with torch.no_grad():
        with drop_tokens(m64, kept):
            unfused = m64(x.double())
        for blk in m64.blocks:
            blk.attn.fused_attn = True
        with drop_tokens(m64, kept):
            fused = m64(x.double())
        with drop_tokens(m, kept):
            f32 = m(x)
        full = m64(x.double())
    assert float((ref - full).abs().max()) > 1e-5  # the drop changes the logits: not a no-op
    torch.testing.assert_close(unfused, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(f32.double(), ref, rtol=1e-4, atol=1e-4)


def test_position_terms_follow_the_kept_tokens(fam):
    """Not a trivial slice: keeping the first n patches differs from keeping the last n with the
    same tokens moved (the embedding differs) — and, decisively, the restatement with the *wrong*
    rows (the first n positions for the last n tokens) disagrees with what drop_tokens gives."""
    _, m, x = fam
    x = x[:1]
    P = m.patch_embed.num_patches
    kept = list(range(P - 4, P))
    m64 = model64(m)
    with torch.no_grad(), drop_tokens(m64, kept):
        got = m64(x.double())
    right = dropped64(m, x, kept)
    T = m.num_prefix_tokens
    wrong_rows = torch.tensor([*range(T), *(T + p for p in range(4))])
    mw = model64(m)
    for blk in mw.blocks:  # the kept tokens' content, but the first four positions' terms
        blk.attn = _KeptAttention(blk.attn, wrong_rows, T, T + P)
    h = mw.blocks[0].register_forward_pre_hook(
        lambda mod, args: (args[0][:, torch.tensor([*range(T), *(T + p for p in kept)])], *args[1:]))
    with torch.no_grad():
        wrong = mw(x.double())
    h.remove()
    torch.testing.assert_close(got, right, rtol=0, atol=1e-10)
    assert float((got - wrong).abs().max()) > 1e-6


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
    torch.testing.assert_close(got, torch.cat(each), rtol=1e-5, atol=1e-6)


def test_intervene_and_counterfactual_drop_run_on_the_family(fam):
    _, m, x = fam
    x = x[:1]
    kept = [p for p in range(9) if p not in (0, 4)]
    iv = vx.intervene(m, x, [0, 4], mode="drop")
    torch.testing.assert_close(iv.logits.double(), dropped64(m, x, kept), rtol=0, atol=1e-4)
    cf = vx.counterfactual(m, x, mode="drop", max_patches=2)
    assert cf is not None


def test_model_left_as_found_after_an_error_inside_the_pass(fam):
    _, m, x = fam
    with torch.no_grad():
        plain = m(x)
    m.train()
    m.blocks[0].attn.fused_attn = True
    before = model_state(m)

    def boom(mod, args, out):
        raise RuntimeError("boom")

    h = m.blocks[1].attn.proj.register_forward_hook(boom)  # inside the sliced attention
    try:
        with pytest.raises(RuntimeError, match="boom"), drop_tokens(m, [0, 3]):
            m(x[:1])
    finally:
        h.remove()
    assert torch._C._len_torch_function_stack() == 0
    assert model_state(m) == before
    with pytest.raises(InputError, match="out of range"), drop_tokens(m, [0, 99]):
        m(x[:1])
    assert torch._C._len_torch_function_stack() == 0
    assert model_state(m) == before
    m.eval()
    with torch.no_grad():  # and the model runs its full sequence again, as before
        torch.testing.assert_close(m(x), plain, rtol=1e-6, atol=1e-6)


def test_mixed_rope_slices_its_per_block_per_head_tables():
    """``vit_*_rope_mixed_*``: the model passes each block its own (H, P, 2D) rotary tensor."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch16_rope_mixed_224", pretrained=False, depth=2, num_classes=5,
                          img_size=48, embed_dim=64, num_heads=4).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as family_model + sharp_model: random biases, sharper attention, louder head
        for n, p in m.named_parameters():
            if p.ndim <= 2 and ("bias" in n or "gamma" in n):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            if "qkv.weight" in n:
                p.mul_(4.0)
        m.get_classifier().weight.mul_(50.0)
    assert getattr(m, "rope_mixed", False)
    x = family_input(m)
    kept = [0, 4, 5, 8]
    m64 = model64(m)
    with torch.no_grad():
        with drop_tokens(m64, kept):
            got = m64(x[:1].double())
        with drop_tokens(m64, torch.tensor([kept, [1, 2, 3, 6]])):
            both = m64(x.double())
        full = m64(x[:1].double())
    ref = dropped64(m, x[:1], kept)
    assert float((ref - full).abs().max()) > 1e-5
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(both[:1], ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(both[1:], dropped64(m, x[1:], [1, 2, 3, 6]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["beit", "eva02", "srelpos"])
def test_occlusion_drop_equals_the_float64_restatement(name):
    """``occlusion(mode="drop", score="logit")`` drops each patch in turn: its map is ``y_t(x) -
    y_t(x without the patch)`` with the float64 restatement of each drop."""
    m = sharp_model(name)
    x = family_input(m, batch=1)
    ex = vx.explain(m, x, "occlusion", mode="drop", score="logit", target=1)
    P = m.patch_embed.num_patches
    with torch.no_grad():
        y0 = model64(m)(x.double())[0, 1]
    ref = torch.stack([y0 - dropped64(m, x, [q for q in range(P) if q != p])[0, 1] for p in range(P)])
    assert float(ref.abs().max()) > 1e-3
    # float32 logits of size ~10 subtracted: their rounding (~1e-6) is the floor
    torch.testing.assert_close(ex.patch_map.flatten().double(), ref, rtol=1e-3, atol=1e-5)
