"""What every attention adapter says about its module (the base of ``attn_*.py``).

An adapter is chosen by the module's structure (the parameters of its ``forward`` and its
attributes), never by the model's name. All adapters give the same trace (``session.capture``):
the probabilities at the output of ``attn_drop`` (B, H, N, N), the scores at the input of the
one ``softmax`` the forward calls (``tap.ScoreTap``), their gradients, and the module's input.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn


class AttentionAdapter:
    """One attention implementation.

    Attributes:
        family: short name used in messages (``"timm Attention"``, ``"rotary"``, ...).
        score_terms: what the softmax sees, in words (for docs and errors).
        takes_attn_mask: ``forward`` accepts an additive ``attn_mask`` keyword.
    """

    family = "generic"
    score_terms = "(q·scale) kᵀ"
    takes_attn_mask = False
    #: the scores are ``(q·scale) kᵀ + B`` with a bias B that is not a mask (relative positions)
    score_bias = False
    #: each head's rows of the recorded attention are probabilities (softmax rows); False where the
    #: module mixes heads after its softmax (talking heads), with the reason in ``not_probabilities``
    probabilities = True
    not_probabilities = ""
    #: the forward calls one softmax, on the scores (False: ``not_single_softmax`` says why not)
    single_softmax = True
    not_single_softmax = ""
    #: chefer_lrp's relevance pass has a rule for this attention
    lrp_rule = True
    #: the scores depend on each token's grid position through terms the model passes in or holds
    #: (a rotary tensor, a relative position bias): dropping tokens must slice them (``keep.py``)
    keeps_positions = False

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def qkv_called(attn: nn.Module) -> bool:
        """True when the module calls its ``qkv`` Linear (a forward hook on it fires)."""
        return isinstance(getattr(attn, "qkv", None), nn.Linear) and getattr(attn, "q_bias", None) is None

    @staticmethod
    def rope_map(attn: nn.Module, rope: torch.Tensor | None) -> torch.Tensor | None:
        """The rotary embedding as a linear map of each patch token's q and k: (..., P, D, D)
        with ``q_rot[p] = q[p] @ M[p]``; None when the family has none."""
        return None

    @staticmethod
    def gated(attn: nn.Module) -> bool:
        """True when the attention output is multiplied by a sigmoid gate before ``proj``."""
        return getattr(attn, "gate", None) is not None


def forward_params(module: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of ``type(module).forward`` (without ``self``)."""
    fn = type(module).forward
    try:
        return _params_of(fn)  # cached by the function object: a class given a new forward gets its own entry
    except TypeError:  # an unhashable callable
        return _params_of.__wrapped__(fn)


@functools.lru_cache(maxsize=512)
def _params_of(fn: object) -> tuple[str, ...]:
    """``inspect.signature`` costs ~30 µs a call, and inspection asks once per attention module per call."""
    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ()
    return tuple(n for n in sig.parameters if n != "self")


class GenericAttention(AttentionAdapter):
    """Any other module with timm's unfused-path attributes (``qkv``, ``attn_drop``,
    ``fused_attn``): the trace still comes from ``attn_drop`` and the one ``softmax``."""

    family = "timm-style attention"

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return True
