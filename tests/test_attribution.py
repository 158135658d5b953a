import pytest
import torch
from timm.models.vision_transformer import ResPostBlock

import vit_explore as vx
from tests.conftest import boom, input_for, model_state
from tests.replica import _lin, _ls, tokens_into_blocks
from tests.stream_replica import readout, stream
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.testing import tiny_vit


def test_direct_terms_reconstruct_the_logit(model, x):
    ha = vx.head_attribution(model, x, ablation=False)
    with torch.no_grad():
        logits = model(x).double()
    want = logits.gather(1, logits.argmax(1, keepdim=True))[:, 0]
    torch.testing.assert_close(ha.logit, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(ha.reconstruction(), want, atol=2e-5, rtol=1e-5)
    assert ha.direct.shape == (x.shape[0], len(model.blocks), model.blocks[0].attn.num_heads)
    assert ha.ablation is None


def test_direct_attribution_equals_autograd_of_the_frozen_readout(model, x):
    """Each head's term through the replica: the gradient of the read-out with the final
    LayerNorm scales frozen (detached), dotted with the head's write into the stream."""
    target = torch.tensor([1, 4, 6])
    ha = vx.head_attribution(model, x, target, ablation=False)
    rep = stream(model, tokens_into_blocks(model, x))
    final = rep["resid"][-1].detach().requires_grad_(True)
    y = readout(model, final, frozen_like=rep["resid"][-1]).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(y, final)
    for li, blk in enumerate(model.blocks):
        o = rep["heads"][li]  # (B, H, N, d)
        B, H, N, d = o.shape
        W = blk.attn.proj.weight.double()
        for h in range(H):
            write = _ls(o[:, h] @ W[:, h * d:(h + 1) * d].T, blk.ls1)  # (B, N, C), no bias
            want = (g * write).sum((1, 2))
            torch.testing.assert_close(ha.direct[:, li, h], want.detach(), atol=2e-5, rtol=1e-4)
        b = _ls(blk.attn.proj.bias.double().expand(B, N, -1), blk.ls1)
        torch.testing.assert_close(ha.attn_bias[:, li], (g * b).sum((1, 2)).detach(), atol=2e-5, rtol=1e-4)
    _ = _lin  # the replica's linear layer is used inside stream()


def test_ablation_matches_replica_with_the_head_zeroed():
    model = tiny_vit("registers")
    x = input_for(model, batch=2)
    ha = vx.head_attribution(model, x, target=2)
    tok = tokens_into_blocks(model, x)
    p0 = stream(model, tok)["logits"].softmax(-1)[:, 2]
    torch.testing.assert_close(ha.prob, p0, atol=1e-6, rtol=1e-5)
    for li in range(len(model.blocks)):
        for h in range(model.blocks[0].attn.num_heads):
            p = stream(model, tok, zero_heads={li: [h]})["logits"].softmax(-1)[:, 2]
            torch.testing.assert_close(ha.ablation[:, li, h], p - p0, atol=2e-6, rtol=1e-4)


def test_toy_model_reconstructs():
    model = vx.load_model("toy-shapes")
    x = input_for(model, batch=1, seed=1)
    ha = vx.head_attribution(model, x, ablation=False)
    torch.testing.assert_close(ha.reconstruction(), ha.logit, atol=1e-4, rtol=1e-5)


def test_post_norm_blocks_are_refused_and_model_left_as_found():
    model = tiny_vit(block_fn=ResPostBlock)
    x = input_for(model)
    before = model_state(model)
    with pytest.raises(UnsupportedModelError, match="ablation"):
        vx.head_attribution(model, x)
    assert model_state(model) == before
    with pytest.raises(InputError, match="out of range"):
        vx.head_attribution(tiny_vit(), x, target=7)


def test_model_left_as_found_after_an_error_in_the_pass():
    model = tiny_vit()
    x = input_for(model)
    model.train()
    before = model_state(model)
    vx.head_attribution(model, x)
    assert model_state(model) == before
    h = model.blocks[2].mlp.register_forward_hook(boom)
    mid = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        vx.head_attribution(model, x)
    assert model_state(model) == mid
    h.remove()
