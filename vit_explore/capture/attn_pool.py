"""The attention-pool (MAP) head: timm's ``AttentionPoolLatent`` (SigLIP, ``global_pool="map"``).

The classifier reads a learned latent query that attends once over all N tokens of the last
block: scores ``(q(latent)·scale) kv(x)_kᵀ`` (+ mask), (B, H, Q, N) for Q latents, softmax, then
``proj(attn @ v)``, ``x + mlp(norm(x))`` and the first latent (``pool="token"``) or the latent
mean (``pool="avg"``). The module has no ``attn_drop``: its probabilities are the output of its
one softmax, recorded with the scores by ``tap.ScoreTap`` (``outputs=``).

Read-out row (docs/methods.md §1.3): ``p = Σ_q w_q mean_h A_pool[:, h, q, :]`` (B, N), with
``w`` the latent weights of the pooling (``[1, 0, …]`` or ``1/Q``). A token-to-token matrix M is
read out as ``p M``, the way a global-average-pool model weights its patch rows uniformly: the
latent's input is ``Σ_j p_j v_j``, so relevance composed over the blocks reaches the latent
through the same weights. Rollout and Chefer's generic rule read ``p J``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import CaptureError
from .attn_base import AttentionAdapter, forward_params
from .tap import ScoreTap


class PoolAttention(AttentionAdapter):
    """A latent-query attention pool over the tokens (``AttentionPoolLatent``'s structure:
    a learned ``latent`` parameter, a ``q`` map of it and a packed ``kv`` Linear)."""

    family = "attention pool (MAP)"
    score_terms = "(q(latent)·scale) k(x)ᵀ (+ attn_mask)"
    takes_attn_mask = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return (
            isinstance(getattr(attn, "latent", None), torch.Tensor)
            and isinstance(getattr(attn, "kv", None), nn.Linear)
            and isinstance(getattr(attn, "q", None), nn.Module)
            and "x" in forward_params(attn)
            and hasattr(attn, "num_heads")
        )


def find_pool(model: nn.Module) -> nn.Module | None:
    """The model's attention-pool head (``model.attn_pool``) if it has the MAP structure, or a view
    that records its own probabilities (``record``: SigLIP's head in transformers, ``hf_pool.py``)."""
    pool = getattr(model, "attn_pool", None)
    if not isinstance(pool, nn.Module):
        return None
    return pool if PoolAttention.matches(pool) or callable(getattr(pool, "record", None)) else None


def latent_weights(pool: nn.Module, q: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(Q,) weights of the latents in the pooled output: the first (``"token"``), the mean (``"avg"``)."""
    w = torch.zeros(q, dtype=dtype, device=device)
    if getattr(pool, "pool", "token") == "avg":
        w[:] = 1.0 / q
    else:
        w[0] = 1.0
    return w


def readout_query(pool: nn.Module, attn: torch.Tensor, n: int, prefix: int) -> torch.Tensor:
    """The read-out row ``p`` (B, N) of the pool's attention (B, H, Q, K) (module docstring): over
    all N tokens, or 0 at the T prefix tokens where the model pools the patches only (K = N - T,
    timm's default without ``pool_include_prefix``)."""
    w = latent_weights(pool, attn.shape[2], attn.dtype, attn.device)
    p = torch.einsum("bhqn,q->bn", attn.detach(), w) / attn.shape[1]
    if p.shape[-1] == n - prefix and prefix:
        p = torch.cat([p.new_zeros(p.shape[0], prefix), p], dim=-1)
    if p.shape[-1] != n:
        raise CaptureError(f"the attention pool attends over {p.shape[-1]} tokens, expected {n} or the {n - prefix} patches")
    return p


class PoolTap:
    """Record the pool's scores (detached) and probabilities (in the graph) for one pass.

    Args:
        pool: the ``AttentionPoolLatent`` module, or a view with ``record`` (``hf_pool.HFPool``, which
            hands over its probabilities but not its scores: ``scores`` stays empty).
        grad_factor: optional rule on the probabilities (``lrp_rules``): their gradient multiplied by
            it (0: detached), their values unchanged.

    ``graph[0]`` is the tensor of the model's graph to differentiate (timm: ``attn[0]`` itself; the view:
    the (B·H, Q, N) tensor its module used, of which ``attn[0]`` is a view).
    """

    def __init__(self, pool: nn.Module, grad_factor: float | None = None) -> None:
        self.scores: list[torch.Tensor] = []
        self.attn: list[torch.Tensor] = []
        record = getattr(pool, "record", None)
        if callable(record):
            self.graph: list[torch.Tensor] = []
            self.tap: ScoreTap | Any = record(self.attn, self.graph, grad_factor)
            return
        self.graph = self.attn
        edit_out: Callable[[torch.Tensor], torch.Tensor] | None = None
        if grad_factor == 0:
            edit_out = _detached
        elif grad_factor is not None:
            f = float(grad_factor)
            edit_out = lambda a: a.detach() + f * (a - a.detach())
        self.tap = ScoreTap(pool, self.scores, detach=True, outputs=self.attn, edit_out=edit_out)

    def remove(self) -> None:
        self.tap.remove()


def _detached(a: torch.Tensor) -> torch.Tensor:
    return a.detach()
