"""A workaround for torch's CPU BatchNorm backward, part of ``vit_explore.capture``.

In eval mode at batch size 1, ``BatchNorm2d``'s backward on the CPU reads an incoming gradient
that is not contiguous (a map the model then reads as tokens, ``flatten(2).transpose(1, 2)``:
LeViT's stem, XCiT's patch embedding) as if it were, so autograd's input gradient is wrong
(reverse mode disagrees with forward mode and with a central difference; at batch size 2 it
agrees). ``contiguous_bn_grads`` hooks every BatchNorm so that the gradient reaching it is made
contiguous first, which gives the right gradient; the caller removes the hooks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def _contiguous(g: torch.Tensor) -> torch.Tensor:
    return g.contiguous()


def _hook(module: nn.Module, args: tuple, out: object) -> None:
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(_contiguous)


def contiguous_bn_grads(model: nn.Module) -> list[RemovableHandle]:
    """Forward hooks on the model's BatchNorm modules: each output's gradient is made contiguous
    before the BatchNorm's backward reads it. Returns the handles (remove them in ``finally``)."""
    return [m.register_forward_hook(_hook) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
