"""The pre-softmax scores, taken from inside an attention module's own forward.

Every attention family computes its scores differently (timm's ``Attention``: ``(q·scale) kᵀ``
plus an optional mask; EVA / RoPE: after the rotary embedding; BEiT / relpos: plus a relative
position bias), but all of them then call ``softmax`` once on the (B, H, N, N) scores. A
``torch.overrides.TorchFunctionMode`` that is active only while one attention module runs
(entered by a forward pre-hook, left by the forward hook, and in any case by ``close()``)
records the tensor handed to that ``softmax``: exactly the scores the model used, every bias
and mask included, without restating any of the model's arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ScoreTap"]

_SOFTMAX = {torch.Tensor.softmax, torch.softmax, F.softmax, torch.Tensor.log_softmax}


class _Mode(TorchFunctionMode):
    def __init__(
        self, store: list[torch.Tensor], detach: bool, edit: Callable[[torch.Tensor], torch.Tensor] | None,
        outputs: list[torch.Tensor] | None = None, edit_out: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.detach = detach
        self.edit = edit
        self.outputs = outputs
        self.edit_out = edit_out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SOFTMAX and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            if self.edit is not None:
                args = (self.edit(args[0]), *args[1:])
            self.store.append(args[0].detach() if self.detach else args[0])
            out = func(*args, **(kwargs or {}))
            if self.edit_out is not None:
                out = self.edit_out(out)
            if self.outputs is not None:
                self.outputs.append(out)  # in the autograd graph (a module without attn_drop: the probabilities)
            return out
        return func(*args, **(kwargs or {}))


class ScoreTap:
    """Record the input of every 4-D ``softmax`` called inside ``module``'s forward.

    Args:
        module: an attention module (its own forward only; submodules run inside it).
        store: list the scores (B, H, N, N) are appended to.
        detach: store detached tensors (True) or the tensors of the autograd graph.
        edit: if given, the softmax receives ``edit(scores)`` instead (e.g. an additive mask
            for a family whose forward takes none); the edited scores are stored.
        outputs: if given, the softmax outputs (the probabilities, not detached) are appended
            (for a module with no ``attn_drop`` to hook, e.g. ``AttentionPoolLatent``).
        edit_out: if given, the forward continues with ``edit_out(probabilities)`` (an LRP rule).

    Use ``handles()`` for the two hooks, and call ``close()`` in ``finally`` (it leaves the
    mode if the forward raised between the two hooks).
    """

    def __init__(
        self, module: nn.Module, store: list[torch.Tensor], detach: bool = True,
        edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
        outputs: list[torch.Tensor] | None = None,
        edit_out: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.mode = _Mode(store, detach, edit, outputs, edit_out)
        self.inside = False
        self._handles = [
            module.register_forward_pre_hook(self._enter),
            module.register_forward_hook(self._leave),
        ]

    def _enter(self, module, args):
        if not self.inside:
            self.mode.__enter__()
            self.inside = True

    def _leave(self, module, args, out):
        self.close()

    def close(self) -> None:
        """Leave the mode if still inside (a forward that raised); idempotent."""
        if self.inside:
            self.inside = False
            self.mode.__exit__(None, None, None)

    def remove(self) -> None:
        """``close()`` and remove both hooks."""
        self.close()
        for h in self._handles:
            h.remove()
        self._handles = []
