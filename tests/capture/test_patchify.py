"""capture/patchify.py: the patch embedding's input gradient as one matmul equals the
convolution's own backward (float64), and is used only where it is that gradient."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vit_explore.capture import Needs, capture
from vit_explore.capture.patchify import is_patchify, patchify_grad_hook


class _Embed(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.proj = conv


class _Model(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.patch_embed = _Embed(conv)

    def forward(self, x):
        return self.patch_embed.proj(x)


def _grads(conv: nn.Conv2d, x: torch.Tensor, hooked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model = _Model(conv)
    h = patchify_grad_hook(model) if hooked else None
    try:
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(5))
        (gx,) = torch.autograd.grad(y, xi, g)
    finally:
        if h is not None:
            h.remove()
    return y.detach(), gx


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 4, 16, 16)])
def test_matmul_gradient_equals_the_convolutions_own(shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 6, kernel_size=(4, 2), stride=(4, 2)).double().requires_grad_(False)
    x = torch.randn(shape, dtype=torch.float64)
    y0, g0 = _grads(conv, x, hooked=False)
    y1, g1 = _grads(conv, x, hooked=True)
    assert torch.equal(y0, y1)  # the value is the module's own
    torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
    assert not conv._forward_hooks  # removed


def test_only_patchifying_convolutions_with_frozen_weights_and_whole_patches_are_replaced():
    assert not is_patchify(nn.Conv2d(3, 4, 3, stride=1, padding=1))
    assert not is_patchify(nn.Conv2d(3, 4, 4, stride=4, groups=1, dilation=2))
    assert not is_patchify(nn.Conv2d(4, 4, 4, stride=4, groups=2))
    assert not is_patchify(nn.Conv2d(3, 4, 4, stride=4, padding=1))
    assert is_patchify(nn.Conv2d(3, 4, 4, stride=4))
    assert patchify_grad_hook(nn.Linear(3, 3)) is None
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 4, stride=4).double().requires_grad_(False)
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)  # borders the convolution drops: its own backward
    _, g0 = _grads(conv, x, hooked=False)
    _, g1 = _grads(conv, x, hooked=True)
    assert torch.equal(g0, g1) and torch.equal(g1[..., 8:, :], torch.zeros_like(g1[..., 8:, :]))
    conv.weight.requires_grad_(True)  # a weight gradient wanted: the convolution's own backward
    model = _Model(conv)
    h = patchify_grad_hook(model)
    try:
        xi = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
        model(xi).sum().backward()
    finally:
        h.remove()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_input_gradient_of_a_vit_equals_the_plain_backward():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    tr = capture(m, x, Needs(input_grad=True), target=torch.tensor([1, 4]))
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xi).gather(1, torch.tensor([[1], [4]])).sum(), xi)
    torch.testing.assert_close(tr.input_grad, g, rtol=1e-10, atol=1e-12)
    assert not m.patch_embed.proj._forward_hooks and all(p.requires_grad for p in m.parameters())
