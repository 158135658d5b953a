"""Module-state plumbing: the module walk, the fingerprint, eval mode and its restoration."""

import copy

import pytest
import torch
from torch import nn

from vit_explore.capture.state import SavedState, eval_mode, model_fingerprint, scan, submodules
from vit_explore.testing import tiny_vit


def test_eval_mode_leaves_an_eval_model_alone():
    model = tiny_vit("vanilla").eval()
    with eval_mode(model):
        model.blocks[0].train()  # switched on inside the block: switched off again
    assert not any(m.training for m in model.modules())


def test_scan_is_one_walk_of_both():
    model = tiny_vit("vanilla")
    mods, fp = scan(model)
    assert mods == submodules(model) and fp == model_fingerprint(model)


def test_submodules_is_modules_as_a_set():
    model = tiny_vit("registers")
    shared = nn.Linear(2, 2)
    model.extra_a, model.extra_b = shared, shared  # a module reachable twice is listed once
    got = submodules(model)
    assert len(got) == len({id(m) for m in got})
    assert {id(m) for m in got} == {id(m) for m in model.modules()}


def test_fingerprint_sees_in_place_edits_and_hooks():
    model = tiny_vit("vanilla")
    fp = model_fingerprint(model)
    assert model_fingerprint(model) == fp
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] += 1.0
    fp2 = model_fingerprint(model)
    assert fp2 != fp
    h = model.blocks[0].attn.register_forward_hook(lambda *a: None)
    assert model_fingerprint(model) != fp2
    h.remove()
    assert model_fingerprint(model) == fp2
    model.head = nn.Linear(model.head.in_features, model.head.out_features)  # a replaced parameter
    assert model_fingerprint(model) != fp2


@pytest.mark.parametrize("raise_inside", [False, True])
def test_eval_mode_restores_every_flag(raise_inside):
    model = tiny_vit("vanilla").train()
    model.blocks[0].eval()  # mixed flags
    before = [m.training for m in model.modules()]
    try:
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            model.blocks[1].train()  # changed inside the block: put back too
            model.blocks[0].train()
            if raise_inside:
                raise RuntimeError("boom")
    except RuntimeError:
        assert raise_inside
    assert [m.training for m in model.modules()] == before


def test_saved_state_freeze_and_restore():
    model = tiny_vit("vanilla").train()
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    attn = model.blocks[1].attn
    attn.__dict__.pop("fused_attn", None)
    had_class_attr = "fused_attn" in type(attn).__dict__ or hasattr(type(attn), "fused_attn")
    grads = [p.requires_grad for p in model.parameters()]
    state = SavedState(model, [attn])
    state.freeze()
    attn.fused_attn = False
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())
    state.restore()
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(m.training for m in model.modules())
    assert "fused_attn" not in attn.__dict__  # the instance attribute is removed again
    assert hasattr(attn, "fused_attn") == had_class_attr


def test_input_gradient_through_a_batch_norm_at_batch_1_is_right():
    """XCiT's patch embedding ends in an eval BatchNorm2d followed by ``flatten(2).transpose(1, 2)``;
    torch's batch-1 backward through it is wrong without the capture layer's fix (state.py)."""
    import timm

    from vit_explore.capture.classifier import capture_classifier, inspect_classifier

    torch.manual_seed(0)
    model = timm.create_model("xcit_nano_12_p16_224", pretrained=False, num_classes=5, img_size=64, depth=2).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    m64 = copy.deepcopy(model).double()
    x = torch.randn(1, 3, 64, 64)
    g = capture_classifier(model, x, input_grad=True, target=1, info=inspect_classifier(model)).input_grad
    for seed in range(2):  # float64 central differences of the logit along random directions
        d = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        h = 1e-5
        with torch.no_grad():
            fd = float((m64(x.double() + h * d)[0, 1] - m64(x.double() - h * d)[0, 1]) / (2 * h))
        got = float((g.double() * d).sum())
        assert abs(got - fd) <= 1e-3 * abs(fd) + 1e-7, (got, fd)
    assert not any(m._forward_hooks for m in model.modules())  # the fix's hooks are gone after the pass
