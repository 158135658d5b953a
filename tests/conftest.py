import contextlib

import pytest
import torch

from vit_explore.testing import VARIANTS, tiny_vit

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def input_for(model, batch=3, seed=0, size=None):
    g = torch.Generator().manual_seed(seed)
    h, w = size or model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=g)


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture
def model(variant):
    return tiny_vit(variant)


@pytest.fixture
def x(model):
    return input_for(model)


def model_state(model):
    """Everything a pass must leave as it found it: training flags and hooks (forward,
    pre-forward, backward, by key) of every module, ``requires_grad`` of every parameter,
    and each attention's own ``fused_attn`` attribute."""
    return (
        [
            (m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks))
            for m in model.modules()
        ],
        [p.requires_grad for p in model.parameters()],
        [blk.attn.__dict__.get("fused_attn", "missing") for blk in model.blocks],
    )


def boom(*args):
    raise RuntimeError("boom")


@contextlib.contextmanager
def raising_in_backward(module):
    """Inside the block, backpropagating through ``module``'s output raises ``RuntimeError("boom")``
    (the hook that arms it is removed after the block)."""

    def arm(mod, args, out):
        if out.requires_grad:
            out.register_hook(boom)

    handle = module.register_forward_hook(arm)
    try:
        yield
    finally:
        handle.remove()
