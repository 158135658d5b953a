import pytest
import torch

import vit_explore as vx
from tests.conftest import boom, input_for, model_state
from tests.replica import tokens_into_blocks
from tests.stream_replica import stream
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit


def test_every_position_at_block_zero_gives_the_source_prediction(model):
    src, tgt = input_for(model, batch=1, seed=1), input_for(model, batch=3, seed=2)
    with torch.no_grad():
        want = model(src).softmax(-1).expand(3, -1)
    torch.testing.assert_close(vx.patch_activations(model, src, tgt, 0), want, atol=1e-6, rtol=1e-5)
    # every patch (not the prefix tokens, which enter block 0 alike for every image) does too
    P = (src.shape[-2] // 8) * (src.shape[-1] // 8)
    torch.testing.assert_close(vx.patch_activations(model, src, tgt, 0, list(range(P))), want, atol=1e-6, rtol=1e-5)


def test_residual_and_head_patching_match_the_replica(model):
    src, tgt = input_for(model, batch=2, seed=1), input_for(model, batch=2, seed=2)
    T = model.num_prefix_tokens
    rs = stream(model, tokens_into_blocks(model, src))
    rt_tok = tokens_into_blocks(model, tgt)
    pos = [1, 5, 6]
    idx = torch.tensor(pos) + T
    got = vx.patch_activations(model, src, tgt, 2, pos)
    want = stream(model, rt_tok, patch_block=(2, rs["resid"][2], idx))["logits"].softmax(-1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    B, H, N, d = rs["heads"][1].shape
    vals = rs["heads"][1].transpose(1, 2).reshape(B, N, H * d)
    got = vx.patch_activations(model, src, tgt, 1, pos, site="head:3")
    want = stream(model, rt_tok, patch_head=(1, 3, vals, idx))["logits"].softmax(-1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    # patching nothing that differs changes nothing: the target patched with itself
    with torch.no_grad():
        torch.testing.assert_close(vx.patch_activations(model, tgt, tgt, 1), model(tgt).softmax(-1), atol=1e-6,
                                   rtol=1e-5)


def test_bad_input():
    model = tiny_vit()
    x = input_for(model)
    with pytest.raises(InputError, match="out of range"):
        vx.patch_activations(model, x, x, 3)
    with pytest.raises(InputError, match="outside the 4x4"):
        vx.patch_activations(model, x, x, 0, [0, 16])
    with pytest.raises(InputError, match="heads"):
        vx.patch_activations(model, x, x, 0, site="head:4")
    with pytest.raises(InputError, match="site"):
        vx.patch_activations(model, x, x, 0, site="mlp")
    with pytest.raises(InputError, match="1 or 3"):
        vx.patch_activations(model, x[:2], x, 0)
    dyn = tiny_vit("dynamic")
    with pytest.raises(InputError, match="same size"):
        vx.patch_activations(dyn, torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 48), 0)


def test_model_left_as_found_also_after_an_error():
    model = tiny_vit("gap")
    x = input_for(model)
    model.train()
    before = model_state(model)
    vx.patch_activations(model, x[:1], x, 1, [2], site="head:0")
    assert model_state(model) == before
    h = model.blocks[2].register_forward_hook(boom)
    mid = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        vx.patch_activations(model, x[:1], x, 1, [2])
    assert model_state(model) == mid
    h.remove()
