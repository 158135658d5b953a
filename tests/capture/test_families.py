"""Capture on every attention family (timm Attention, rotary EVA / RoPE / DINOv3, BEiT and relpos
relative position biases): attention, scores and their gradients against the model's own float64
numbers and a float64 restatement of the scores; AG-CAM; hygiene; batch = per image."""

import pytest
import torch

import vit_explore as vx
from vit_explore.capture import Needs, capture, inspect_vit
from vit_explore.capture.attn_relbias import RelativeBiasAttention
from vit_explore.capture.attn_rotary import RotaryAttention

from ..conftest import model_state
from ..families import FAMILIES, family_input, family_model, model64, run64

ADAPTER = {
    "eva02": RotaryAttention, "eva02_base": RotaryAttention, "rope": RotaryAttention, "rope_ape": RotaryAttention, "dinov3": RotaryAttention,
    "beit": RelativeBiasAttention, "beitv2": RelativeBiasAttention,
    "relpos": RelativeBiasAttention, "srelpos": RelativeBiasAttention,
}


@pytest.fixture(params=sorted(FAMILIES))
def fam(request):
    m = family_model(request.param)
    return request.param, m, family_input(m)


def test_adapter_is_chosen_by_structure(fam):
    name, m, _ = fam
    assert inspect_vit(m).adapters == (ADAPTER[name],) * len(m.blocks)


def test_attention_scores_and_gradients_are_the_models(fam):
    _, m, x = fam
    tr = capture(m, x, Needs(attn=True, attn_grad=True, scores=True))
    logits64, A64, S64 = run64(model64(m), x)
    t = tr.target
    G64 = torch.autograd.grad(logits64.gather(1, t[:, None]).sum(), A64)
    torch.testing.assert_close(tr.logits.double(), logits64.detach(), rtol=0, atol=1e-5)
    for i in range(len(m.blocks)):
        A, S, G = tr.attn_at(i), tr.scores_at(i), tr.attn_grad_at(i)
        torch.testing.assert_close(S.softmax(-1), A, rtol=0, atol=1e-6)  # the scores the softmax saw
        torch.testing.assert_close(A.double(), A64[i].detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(S.double(), S64[i], rtol=0, atol=2e-5)
        torch.testing.assert_close(G.double(), G64[i], rtol=1e-4, atol=1e-5)


def ag_cam64(m, x, t, layout):
    out = []
    for b in range(x.shape[0]):
        logits, A, S = run64(model64(m), x[b : b + 1], detach_attn_input=True)
        G = torch.autograd.grad(logits[0, int(t[b])], A)
        total = sum((g.clamp(min=0) * torch.sigmoid(s)).sum(1) for g, s in zip(G, S))  # (1, N, N)
        out.append(layout.read(total)[0])
    return torch.stack(out)


def test_ag_cam_matches_float64(fam):
    _, m, x = fam
    ex = vx.explain(m, x, "ag_cam")
    torch.testing.assert_close(ex.patch_map.double(), ag_cam64(m, x, ex.target, ex.layout), rtol=1e-4, atol=1e-6)


def test_ag_cam_batch_equals_per_image(fam):
    _, m, x = fam
    full = vx.explain(m, x, "ag_cam").patch_map
    for b in range(x.shape[0]):
        torch.testing.assert_close(vx.explain(m, x[b : b + 1], "ag_cam").patch_map[0], full[b], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["ag_cam", "attn_lrp", "attn_grad_cam", "tam"])
def test_model_left_as_found(fam, method):
    _, m, x = fam
    m.train()
    m.blocks[0].attn.fused_attn = True
    before = model_state(m)
    vx.explain(m, x, method)
    assert model_state(m) == before
    assert torch._C._len_torch_function_stack() == 0


def test_score_tap_is_left_after_an_error_inside_attention(fam):
    _, m, x = fam

    def boom(mod, args, out):
        raise RuntimeError("boom")

    h = m.blocks[1].attn.proj.register_forward_hook(boom)  # raises between the tap's two hooks
    try:
        before = model_state(m)
        with pytest.raises(RuntimeError, match="boom"):
            capture(m, x, Needs(attn=True, scores=True))
        assert torch._C._len_torch_function_stack() == 0
        assert model_state(m) == before
    finally:
        h.remove()
    tr = capture(m, x, Needs(scores=True, layers=(1,)))  # and the model still captures normally
    assert tr.scores_at(1).shape[-1] == tr.layout.num_tokens


def test_block_tokens_masks_the_scores_of_every_family(fam):
    """Inside ``block_tokens`` no query attends to the blocked tokens: the attention equals the
    float64 softmax of the restated scores with -inf in those columns, and the model is left as found."""
    from vit_explore.capture.ablation import block_tokens

    from ..families import scores64

    _, m, x = fam
    T = m.num_prefix_tokens
    blocked = [T, T + 3]  # two patch tokens
    m.blocks[0].attn.fused_attn = True
    before = model_state(m)
    kwargs = {}
    hs = [blk.attn.register_forward_pre_hook(lambda mod, a, kw, i=i: kwargs.update({i: (a[0], kw)}),
                                             with_kwargs=True) for i, blk in enumerate(m.blocks)]
    try:
        with block_tokens(m, blocked):
            tr = capture(m, x, Needs(attn=True))
            plain_blocked = m(x)
    finally:
        for h in hs:
            h.remove()
    assert model_state(m) == before
    for i, blk in enumerate(m.blocks):
        xin, kw = kwargs[i]
        s = scores64(blk.attn, xin, {k: v for k, v in kw.items() if k != "attn_mask"})
        s[..., blocked] = float("-inf")
        A = tr.attn_at(i)
        assert float(A[..., blocked].abs().max()) == 0.0
        torch.testing.assert_close(A.double(), s.softmax(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(plain_blocked, tr.logits, rtol=1e-5, atol=1e-5)  # fused path where it exists
    free = capture(m, x, Needs(attn=True, layers=(0,)))  # and outside the block nothing is masked
    assert float(free.attn_at(0)[..., blocked].min()) > 0
