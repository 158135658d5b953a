"""Module state that a pass changes and must put back: training flags, ``requires_grad``,
``fused_attn``; and a cheap fingerprint of the model for caches.

These run on every intervention and every explainer call, so they walk the module tree
with a plain stack over ``_modules`` (``nn.Module.modules()`` costs about 10x more on a
small ViT, which matters when the forward itself takes 3 ms) and only write the flags
that actually change.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .._modules import submodules

__all__ = ["SavedState", "eval_mode", "model_fingerprint", "scan", "submodules"]


def _parameters(mods: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for m in mods:
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _contiguous_grad(mod: nn.Module, args: tuple, out: object) -> None:
    """Forward hook on a batch norm: its output's gradient made contiguous before the norm's backward.

    torch (2.14, CPU, float32 and float64) computes a wrong input gradient through an eval-mode
    ``BatchNorm2d`` at batch 1 when the incoming gradient has channels-last strides, which is what
    ``flatten(2).transpose(1, 2)`` after it gives (XCiT's and LeViT's patch embeddings): off by
    the size of the gradient itself; at batch 2 it is right. The hook changes no value."""
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(torch.Tensor.contiguous)


class SavedState:
    """Training flags, ``requires_grad`` and ``fused_attn`` of a model, to put back later.

    Args:
        model: any module.
        attns: attention modules whose ``fused_attn`` the pass may switch (their instance
            attribute is restored, or removed again if it was not set on the instance).
        grads: also save ``requires_grad`` of every parameter (for ``freeze``).
        mods: ``submodules(model)`` if the caller already walked the model.
    """

    _MISSING = object()

    def __init__(
        self, model: nn.Module, attns: Sequence[nn.Module] = (), grads: bool = True,
        mods: Sequence[nn.Module] | None = None,
    ) -> None:
        self.model = model
        self.mods = submodules(model) if mods is None else mods
        self.flags = [m.training for m in self.mods]
        self.requires_grad = [(p, p.requires_grad) for p in _parameters(self.mods)] if grads else []
        self.fused = [(a, a.__dict__.get("fused_attn", self._MISSING)) for a in attns]
        self._bn_hooks: list[torch.utils.hooks.RemovableHandle] = []

    def eval(self) -> None:
        """Every module in eval mode (a model already in eval mode is only read)."""
        if any(self.flags):
            for m in self.mods:
                m.training = False

    def freeze(self) -> None:
        """Eval mode and frozen parameters for a pass (``restore`` undoes both); with ``grads``,
        also the batch-norm gradient fix (``_contiguous_grad``) until ``restore``."""
        self.eval()
        for p, flag in self.requires_grad:
            if flag:
                p.requires_grad_(False)
        if self.requires_grad and not self._bn_hooks:
            self._bn_hooks = [m.register_forward_hook(_contiguous_grad) for m in self.mods
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def restore(self) -> None:
        for h in self._bn_hooks:
            h.remove()
        self._bn_hooks = []
        for m, flag in zip(self.mods, self.flags):
            if m.training != flag:
                m.training = flag
        for p, flag in self.requires_grad:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for a, old in self.fused:
            if old is self._MISSING:
                a.__dict__.pop("fused_attn", None)
            else:
                a.fused_attn = old


@contextlib.contextmanager
def eval_mode(model: nn.Module, mods: Sequence[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block; restore each training flag after
    (a model already in eval mode is only read).

    ``mods``: ``submodules(model)`` if the caller already walked the model."""
    state = SavedState(model, grads=False, mods=mods)
    try:
        state.eval()
        yield model
    finally:
        state.restore()


def scan(model: nn.Module) -> tuple[list[nn.Module], tuple]:
    """One walk of the model: ``(submodules(model), model_fingerprint(model))``.

    The fingerprint is a cheap key that changes when parameters or buffers are replaced,
    modified in place (their in-place version counters) or given new storage (``.to()``,
    ``.double()``, ``param.data = ...`` keep the Parameter object and its version counter but
    move its data), or hooks are added or removed anywhere in the model. Used to cache the
    unmodified forward of an image between interventions.
    """
    mods = submodules(model)
    ids: list[int] = []
    versions: list[int] = []
    storage: list[int] = []
    hooks = []
    for m in mods:
        for t in itertools.chain(m._parameters.values(), m._buffers.values()):
            if t is not None:
                ids.append(id(t))
                versions.append(-1 if t.is_inference() else t._version)  # ConViT caches a buffer in inference mode
                storage.append(t.data_ptr())
        if m._forward_hooks or m._forward_pre_hooks:
            hooks.append((id(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks)))
    return mods, (id(model), tuple(ids), tuple(versions), tuple(storage), tuple(hooks))


def model_fingerprint(model: nn.Module) -> tuple:
    """The fingerprint half of ``scan(model)``."""
    return scan(model)[1]
