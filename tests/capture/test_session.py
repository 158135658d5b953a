"""Capture against the float64 replica, and hygiene: the model is left exactly as found."""

import pytest
import torch

from vit_explore.capture import Needs, capture
from vit_explore.errors import CaptureError, InputError
from vit_explore.testing import tiny_vit

from ..conftest import boom, input_for, raising_in_backward
from ..replica import replica_forward, tokens_into_blocks


def _fused_flags(model):
    return [blk.attn.__dict__.get("fused_attn", "missing") for blk in model.blocks]


def _hook_count(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_capture_leaves_logits_unchanged(model, x):
    with torch.no_grad():
        plain = model(x)
    trace = capture(model, x, Needs(attn=True, attn_grad=True, scores=True))
    torch.testing.assert_close(trace.logits, plain, rtol=0, atol=1e-5)


def test_fused_and_unfused_logits_agree(model, x):
    saved = _fused_flags(model)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.fused_attn = True
        fused = model(x)
        for blk in model.blocks:
            blk.attn.fused_attn = False
        unfused = model(x)
    for blk, old in zip(model.blocks, saved):
        blk.attn.fused_attn = old
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-5)


def test_attention_scores_and_gradients_match_float64_replica(model, x):
    target = torch.tensor([0, 3, 6])
    trace = capture(model, x, Needs(attn=True, attn_grad=True, scores=True), target=target)
    tokens = tokens_into_blocks(model, x).requires_grad_(True)
    logits, attns, scores = replica_forward(model, tokens)
    logits.gather(1, target[:, None]).sum().backward()
    N = trace.layout.num_tokens
    assert trace.layout.num_tokens == attns[0].shape[-1]
    for i, (a, s) in enumerate(zip(attns, scores)):
        assert trace.attn[i].shape == (3, model.blocks[i].attn.num_heads, N, N)
        torch.testing.assert_close(trace.attn[i].double(), a.detach(), rtol=0, atol=2e-6)
        torch.testing.assert_close(trace.scores[i].double(), s.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(trace.attn_grad[i].double(), a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trace.logits.double(), logits.detach(), rtol=0, atol=1e-5)


def test_attention_rows_are_stochastic(model, x):
    trace = capture(model, x, Needs(attn=True))
    for a in trace.attn:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), rtol=0, atol=1e-5)


def test_layout_follows_the_model(variant, model, x):
    layout = capture(model, x, Needs(attn=True, layers=(-1,))).layout
    expected_prefix = {"distilled": 2, "registers": 3, "gap": 0}.get(variant, 1)
    assert layout.num_prefix == expected_prefix
    assert layout.grid == ((4, 6) if variant == "nonsquare" else (4, 4))
    assert layout.readout == {"distilled": "cls_dist", "gap": "avg"}.get(variant, "cls")


def test_dynamic_size_grid_follows_the_input():
    model = tiny_vit("dynamic")
    x = input_for(model, batch=2, size=(40, 24))
    trace = capture(model, x, Needs(attn=True))
    assert trace.layout.grid == (5, 3)
    assert trace.attn[0].shape[-1] == 1 + 15


def test_only_requested_layers_are_recorded_and_others_stay_fused(model, x):
    calls = []
    h = model.blocks[0].attn.attn_drop.register_forward_hook(lambda *a: calls.append(1))
    try:
        trace = capture(model, x, Needs(attn=True, layers=(-1,)))
    finally:
        h.remove()
    assert trace.attn[0] is None and trace.attn[-1] is not None
    assert calls == []  # block 0 kept its fused kernel, so attn_drop never ran


def test_activation_and_input_gradients_match_autograd():
    model = tiny_vit()
    x = input_for(model)
    name = "blocks.2.norm1"
    trace = capture(model, x, Needs(activations=(name,), activation_grads=True, input_grad=True), target=2)
    xr = x.clone().requires_grad_(True)
    store = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: store.append(o))
    try:
        out = model(xr)
    finally:
        h.remove()
    act = store[0]
    g_act, g_in = torch.autograd.grad(out[:, 2].sum(), [act, xr])
    torch.testing.assert_close(trace.activations[name], act.detach())
    torch.testing.assert_close(trace.activation_grads[name], g_act, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trace.input_grad, g_in, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_grad_from_block_gives_the_same_late_gradients():
    model = tiny_vit()
    x = input_for(model)
    full = capture(model, x, Needs(attn_grad=True, layers=(-1,)))
    late = capture(model, x, Needs(attn_grad=True, layers=(-1,), grad_from_block=-1))
    torch.testing.assert_close(late.attn_grad[-1], full.attn_grad[-1])


def test_model_state_is_restored(model, x):
    model.train()
    model.blocks[0].attn.fused_attn = True
    model.blocks[1].attn.fused_attn = False
    model.head.weight.requires_grad_(False)
    before_fused = _fused_flags(model)
    before_train = [m.training for m in model.modules()]
    before_rg = [p.requires_grad for p in model.parameters()]
    hooks = _hook_count(model)
    capture(model, x, Needs(attn=True, attn_grad=True, scores=True, detach_attn_input=True, input_grad=True))
    assert _fused_flags(model) == before_fused
    assert [m.training for m in model.modules()] == before_train
    assert [p.requires_grad for p in model.parameters()] == before_rg
    assert _hook_count(model) == hooks


def test_model_state_is_restored_after_errors():
    model = tiny_vit()
    x = input_for(model)
    before_fused = _fused_flags(model)
    hooks = _hook_count(model)
    with pytest.raises(InputError, match="out of range"):
        capture(model, x, Needs(attn=True, attn_grad=True), target=99)
    assert _fused_flags(model) == before_fused and _hook_count(model) == hooks

    # a module that raises in the forward pass
    model.blocks[1].mlp.fc1.register_forward_pre_hook(boom)
    hooks = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, x, Needs(attn=True, attn_grad=True))
    assert _fused_flags(model) == before_fused and _hook_count(model) == hooks
    assert all(p.requires_grad for p in model.parameters())


def test_model_state_is_restored_after_an_error_mid_backward():
    model = tiny_vit()
    x = input_for(model)
    with raising_in_backward(model.blocks[0]):
        before_fused = _fused_flags(model)
        hooks = _hook_count(model)
        with pytest.raises(RuntimeError, match="boom"):
            capture(model, x, Needs(input_grad=True))
    assert _hook_count(model) == hooks - 1
    assert _fused_flags(model) == before_fused
    assert all(p.requires_grad for p in model.parameters())




def test_unknown_activation_name_is_suggested():
    model = tiny_vit()
    x = input_for(model)
    with pytest.raises(InputError, match="did you mean 'blocks.2.norm1'"):
        capture(model, x, Needs(activations=("blocks.2.nrm1",)))
    with pytest.raises(InputError, match="no module named 'blocks.2.norm1.weight'"):  # a parameter, not a module
        capture(model, x, Needs(activations=("blocks.2.norm1.weight",)))
    with pytest.raises(InputError, match="no module named 'blocks.9.norm1'"):
        capture(model, x, Needs(inputs=("blocks.9.norm1",)))


def test_trace_layer_errors():
    model = tiny_vit()
    x = input_for(model)
    trace = capture(model, x, Needs(attn=True, layers=(0,)))
    with pytest.raises(CaptureError, match="not recorded"):
        trace.attn_at(1)
    with pytest.raises(InputError, match="out of range"):
        trace.attn_at(7)
