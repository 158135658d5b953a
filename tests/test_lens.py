import pytest
import torch

import vit_explore as vx
from tests.conftest import boom, input_for, model_state
from tests.replica import tokens_into_blocks
from tests.stream_replica import per_token, readout, stream
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit


def test_logit_lens_matches_float64_replica(model, x):
    lens = vx.logit_lens(model, x, tokens="all")
    rep = stream(model, tokens_into_blocks(model, x))
    L = len(model.blocks)
    B = x.shape[0]
    want = torch.stack([readout(model, r) for r in rep["resid"][1:]], 1)
    assert lens.readout.shape == (B, L, model.num_classes)
    torch.testing.assert_close(lens.readout.double(), want, atol=2e-5, rtol=1e-4)
    T = model.num_prefix_tokens
    gh, gw = lens.layout.grid
    want_p = torch.stack([per_token(model, r[:, T:]) for r in rep["resid"][1:]], 1).reshape(B, L, gh, gw, -1)
    torch.testing.assert_close(lens.patches.double(), want_p, atol=2e-5, rtol=1e-4)
    # invariant: the last layer's read-out is the model's own output
    with torch.no_grad():
        torch.testing.assert_close(lens.readout[:, -1], model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens.probs.sum(-1), torch.ones(B, L))


def test_logit_lens_readout_only_and_toy_model():
    model = vx.load_model("toy-shapes")
    x = input_for(model, batch=2, seed=3)
    lens = vx.logit_lens(model, x)
    assert lens.patches is None
    with torch.no_grad():
        torch.testing.assert_close(lens.readout[:, -1], model(x), atol=1e-5, rtol=1e-5)


def test_logit_lens_bad_tokens_and_sizes():
    model = tiny_vit()
    with pytest.raises(InputError, match="tokens must be"):
        vx.logit_lens(model, input_for(model), tokens="patches")
    with pytest.raises(InputError, match="32x32"):
        vx.logit_lens(model, torch.randn(1, 3, 40, 40))


def test_token_similarity_matches_cosine_replica(model, x):
    rep = stream(model, tokens_into_blocks(model, x))
    T = model.num_prefix_tokens
    for layer in (0, -1):
        r = rep["resid"][layer % len(model.blocks) + 1]
        sim = vx.token_similarity(model, x, layer, 5)
        gh, gw = sim.shape[1:]
        q = r[:, T + 5]
        want = torch.stack([torch.stack([
            (q[b] @ r[b, T + j]) / (q[b].norm() * r[b, T + j].norm()) for j in range(gh * gw)]) for b in range(x.shape[0])])
        torch.testing.assert_close(sim.double(), want.reshape(-1, gh, gw), atol=1e-5, rtol=1e-5)
        # the same cell given as (row, col), and the whole matrix
        torch.testing.assert_close(vx.token_similarity(model, x, layer, (5 // gw, 5 % gw)), sim)
        m = vx.token_similarity(model, x, layer, matrix=True)
        N = T + gh * gw
        assert m.shape == (x.shape[0], N, N)
        torch.testing.assert_close(m, m.transpose(1, 2), atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.diagonal(m, dim1=1, dim2=2), torch.ones(x.shape[0], N), atol=1e-5, rtol=0)
        torch.testing.assert_close(m[:, T + 5, T:].reshape(sim.shape), sim, atol=1e-6, rtol=0)


def test_token_similarity_errors():
    model = tiny_vit()
    x = input_for(model)
    with pytest.raises(InputError, match="out of range"):
        vx.token_similarity(model, x, 3, 0)
    with pytest.raises(InputError, match="outside the 4x4"):
        vx.token_similarity(model, x, 0, 16)
    with pytest.raises(InputError, match="outside the 4x4"):
        vx.token_similarity(model, x, 0, (4, 0))
    with pytest.raises(InputError, match="query="):
        vx.token_similarity(model, x, 0)


def test_model_left_as_found_also_after_an_error():
    model = tiny_vit("layerscale")
    model.train()
    x = input_for(model)
    before = model_state(model)
    vx.logit_lens(model, x, tokens="all")
    vx.token_similarity(model, x, 1, 2)
    assert model_state(model) == before
    h = model.blocks[1].register_forward_hook(boom)
    mid = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        vx.logit_lens(model, x)
    assert model_state(model) == mid
    h.remove()
    assert model_state(model) == before
