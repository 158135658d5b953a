"""Float64 restatement of timm's attention-pool (MAP) head, ``AttentionPoolLatent`` (SigLIP,
``global_pool='map'``), and of its read-out row (docs/methods.md §1.3), for
``vit_explore.testing.float64``. Written from the pool's weights; nothing here calls into
``vit_explore``.

The pool, per image, over the K tokens it is given (all N, or the N - T patches):

    q = q_norm(q(latent))                 (H, Q, d)   Q learned latent queries
    k, v = kv(x + pos_embed)              (H, K, d)   k = k_norm(k)
    S = (q·scale) kᵀ (+ attn_mask)        (H, Q, K)
    A = softmax(S)
    o = proj(A v);  o = o + mlp(norm(o))  (Q, C)
    out = o[0] (pool="token") or mean_q o (pool="avg")

Read-out row: ``p = Σ_q w_q mean_h A[h, q]`` (B, N), ``w`` the latents' weights in ``out``
(``[1, 0, …]`` or ``1/Q``), 0 at the prefix tokens the pool does not see. A token-to-token matrix M
is read out as ``p M``; ``p`` is taken at the input and held fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _ln(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    if isinstance(mod, nn.Identity):
        return x
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    raise ValueError(f"no float64 restatement of a {type(mod).__name__} in the attention pool")


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _apply(x: torch.Tensor, f: nn.Module) -> torch.Tensor:
    return f(x)


@dataclass
class Pool64:
    """The pool of one float64 pass: scores S (B, H, Q, K) restated from the weights, attention
    A = softmax(S) (in the graph of the logits), its gradient G of the target logits (or None),
    the read-out row p (B, N)."""

    S: torch.Tensor
    A: torch.Tensor
    G: torch.Tensor | None
    p: torch.Tensor


def is_map(model: nn.Module) -> bool:
    """Whether the model reads out through timm's attention pool (``global_pool='map'``)."""
    pool = getattr(model, "attn_pool", None)
    return getattr(model, "global_pool", None) == "map" and pool is not None and hasattr(pool, "latent")


def pool64(
    pool: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    ln: Callable[[torch.Tensor, nn.Module], torch.Tensor] = _ln,
    act: Callable[[torch.Tensor, nn.Module], torch.Tensor] = _apply,
    kv_rule: Callable[[torch.Tensor], torch.Tensor] = _same,
    attn_rule: Callable[[torch.Tensor], torch.Tensor] = _same,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pool's output (B, C), scores S (B, H, Q, K) and attention A (B, H, Q, K) on its input
    ``x`` (B, K, C), written out from its weights (module docstring). ``ln`` / ``act`` / ``kv_rule``
    / ``attn_rule``: how LayerNorm, the MLP activation, the ``kv`` output and A enter the graph
    (plain by default; AttnLRP's rules in ``float64_attn_lrp``)."""
    B, K, _ = x.shape
    H = pool.num_heads
    if pool.pos_embed is not None:
        x = x + pool.pos_embed[None]
    lat = pool.latent.expand(B, -1, -1)
    q = lat if isinstance(pool.q, nn.Identity) else F.linear(lat, pool.q.weight, pool.q.bias)
    q = q.reshape(B, -1, H, pool.head_dim).transpose(1, 2)
    kv = kv_rule(F.linear(x, pool.kv.weight, pool.kv.bias))
    k, v = kv.reshape(B, K, 2, H, pool.head_dim).permute(2, 0, 3, 1, 4)
    q, k = ln(q, pool.q_norm), ln(k, pool.k_norm)
    S = (q * pool.scale) @ k.transpose(-1, -2)
    if attn_mask is not None:
        S = S + attn_mask
    A = S.softmax(-1)
    o = (attn_rule(A) @ v).transpose(1, 2).reshape(B, -1, H * pool.head_dim)
    if isinstance(pool.proj, nn.Linear):
        o = F.linear(o, pool.proj.weight, pool.proj.bias)
    if pool.mlp is not None:
        mlp = pool.mlp
        h = act(F.linear(ln(o, pool.norm), mlp.fc1.weight, mlp.fc1.bias), mlp.act)
        o = o + F.linear(ln(h, mlp.norm), mlp.fc2.weight, mlp.fc2.bias)
    out = o[:, 0] if pool.pool == "token" else o.mean(1) if pool.pool == "avg" else o
    return out, S, A


def latent_weights64(pool: nn.Module, Q: int) -> torch.Tensor:
    """(Q,) weights of the latents in the pooled output: the first (``"token"``) or ``1/Q`` each (``"avg"``)."""
    if pool.pool == "avg":
        return torch.full((Q,), 1.0 / Q, dtype=torch.float64)
    if pool.pool == "token":
        return torch.eye(Q, dtype=torch.float64)[0]
    raise ValueError(f"no float64 read-out for an attention pool with pool={pool.pool!r}")


def map_row64(model: nn.Module, A: torch.Tensor, N: int) -> torch.Tensor:
    """The read-out row p (B, N) of the pool's attention A (B, H, Q, K): ``Σ_q w_q mean_h A[:, h, q]``
    over the tokens the pool sees (all N with ``pool_include_prefix``, else the patches after
    the T prefix tokens, which get 0)."""
    p = torch.einsum("q,bhqk->bk", latent_weights64(model.attn_pool, A.shape[2]), A.detach()) / A.shape[1]
    lo = 0 if getattr(model, "pool_include_prefix", False) else int(model.num_prefix_tokens)
    if A.shape[-1] != N - lo:
        raise ValueError(f"the attention pool attends over {A.shape[-1]} tokens, expected {N - lo}")
    return torch.cat([p.new_zeros(p.shape[0], lo), p], dim=1)


def map_hook(m64: nn.Module, store: list[tuple[torch.Tensor, torch.Tensor]]):
    """A forward hook on ``m64.attn_pool`` that replaces its output by ``pool64``'s (after checking
    that they agree), so that the logits depend on the restated A; ``store`` gets (S, A). Returns
    the handle."""

    def hook(mod, args, kwargs, out):
        mine, S, A = pool64(mod, args[0], kwargs.get("attn_mask"))
        scale = float(out.detach().abs().max()) or 1.0
        if not torch.allclose(mine.detach(), out.detach(), rtol=0, atol=1e-12 * scale):
            raise AssertionError("the float64 restatement of the attention pool is not the model's pool")
        store.append((S.detach(), A))
        return mine

    return m64.attn_pool.register_forward_hook(hook, with_kwargs=True)
