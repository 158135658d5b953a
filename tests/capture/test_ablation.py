"""Head ablation, token blocking and token dropping against a plain float64 replica."""

import contextlib

import pytest
import torch

from vit_explore.capture.ablation import ablate_heads, block_tokens, drop_tokens
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit

from ..conftest import input_for, model_state
from ..replica import replica_forward, tokens_into_blocks


def replica_edit(model, tokens, heads=None, blocked=None, layers=None):
    """Plain float64 forward with heads zeroed ({layer: [h]}) and key columns blocked."""
    return replica_forward(model, tokens, zero_heads=heads, block_keys=blocked, block_layers=layers)[0]




def test_replica_matches_model(model, x):
    with torch.no_grad():
        ref, _, _ = replica_forward(model, tokens_into_blocks(model, x))
        assert torch.allclose(model(x).double(), ref, atol=1e-5)


def test_all_heads_of_a_layer(model, x):
    H = model.blocks[1].attn.num_heads
    ref = replica_edit(model, tokens_into_blocks(model, x), heads={1: list(range(H))})
    with ablate_heads(model, {1: list(range(H))}), torch.no_grad():
        got = model(x)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(x).double(), ref, atol=1e-3)


def test_some_heads_negative_indices():
    model = tiny_vit("vanilla")
    x = input_for(model)
    ref = replica_edit(model, tokens_into_blocks(model, x), heads={2: [3], 0: [0, 1]})
    with ablate_heads(model, {-1: [-1], 0: [0, 1]}), torch.no_grad():
        assert torch.allclose(model(x).double(), ref, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_block_tokens_patches_and_layers(variant, fused):
    model = tiny_vit(variant)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    x = input_for(model, batch=2)
    T = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid_size if variant != "nonsquare" else (4, 6)
    g = torch.zeros(gh, gw, dtype=torch.bool)
    g[0, 1] = g[2, 2] = True
    cols = [T + 1, T + 2 * gw + 2]
    ref = replica_edit(model, tokens_into_blocks(model, x), blocked=cols, layers=[1, 2])
    with block_tokens(model, g, layers=[1, -1]), torch.no_grad():
        got = model(x)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    with block_tokens(model, cols, layers=[1, 2]), torch.no_grad():
        assert torch.allclose(model(x).double(), ref, atol=1e-5)


def test_compose_and_restore(model, x):
    before = model_state(model)
    with torch.no_grad():
        plain = model(x)
    ref = replica_edit(model, tokens_into_blocks(model, x), heads={0: [1]}, blocked=[0, model.num_prefix_tokens])
    with contextlib.ExitStack() as stack:
        stack.enter_context(ablate_heads(model, {0: [1]}))
        stack.enter_context(block_tokens(model, [0, model.num_prefix_tokens]))
        with torch.no_grad():
            got = model(x)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert model_state(model) == before
    with torch.no_grad():
        assert torch.equal(model(x), plain)


def test_restored_after_error(model, x):
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"), ablate_heads(model, {0: [0]}), block_tokens(model, [1]):
        raise RuntimeError("boom")
    assert model_state(model) == before


def test_drop_tokens_with_source_matches_replica():
    model = tiny_vit("registers")
    x = input_for(model, batch=2)
    T = model.num_prefix_tokens
    keep = torch.tensor([[0, 5, 9], [1, 2, 15], [3, 4, 7]])
    source = torch.tensor([1, 0, 1])
    tok = tokens_into_blocks(model, x)
    sub = torch.cat([tok[source][:, :T], torch.stack([tok[s, T + k] for s, k in zip(source, keep)])], 1)
    ref, _, _ = replica_forward(model, sub)
    with drop_tokens(model, keep, source), torch.no_grad():
        got = model(x)
    assert got.shape == (3, 7)
    assert torch.allclose(got.double(), ref, atol=1e-5)


def test_drop_tokens_takes_one_set_as_a_list():
    model = tiny_vit("distilled")
    x = input_for(model, batch=1)
    with drop_tokens(model, torch.tensor([[2, 3, 11]])), torch.no_grad():
        want = model(x)
    with drop_tokens(model, [2, 3, 11]), torch.no_grad():
        got = model(x)
    assert torch.equal(got, want)
    with pytest.raises(InputError, match="kept patch index out of range"), drop_tokens(model, [2, 16]), \
            torch.no_grad():
        model(x)


def test_bad_input():
    model = tiny_vit("vanilla")
    with pytest.raises(InputError, match="out of range"), ablate_heads(model, {5: [0]}):
        pass
    with pytest.raises(InputError, match="head 4"), ablate_heads(model, {0: [4]}):
        pass
    with pytest.raises(InputError, match="every token"), block_tokens(model, list(range(17))), torch.no_grad():
        model(input_for(model, 1))
    with pytest.raises(InputError, match="grid"), block_tokens(model, torch.zeros(3, 3, dtype=torch.bool)), \
            torch.no_grad():
        model(input_for(model, 1))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_forward_recording_matches_capture(model, x):
    from vit_explore.capture.ablation import forward_recording
    from vit_explore.capture.session import Needs, capture

    before = model_state(model)
    name = "blocks.1.norm1"
    logits, acts = forward_recording(model, x, {name: model.get_submodule(name)})
    trace = capture(model, x, Needs(activations=(name,)))
    torch.testing.assert_close(logits, trace.logits)
    torch.testing.assert_close(acts[name], trace.activations[name])
    assert not logits.is_inference() and not acts[name].is_inference()
    assert model_state(model) == before  # hooks removed, flags as found
    with pytest.raises(InputError, match="did not run"):
        forward_recording(model, x, {"orphan": torch.nn.Linear(2, 2)})
    assert model_state(model) == before
