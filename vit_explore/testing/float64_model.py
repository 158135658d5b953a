"""The float64 model run of the restatements (``vit_explore.testing.float64``): a float64 copy on
timm's unfused attention path, its attention, gradients and weight-restated scores per block, and
the read-out row from the model's own attributes. Nothing here calls into ``vit_explore``."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .float64_map import Pool64, is_map, map_hook, map_row64
from .float64_naflex import embed_hook, is_naflex

# --------------------------------------------------------------------------- the float64 model


def model64(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode on timm's unfused attention path."""
    m = copy.deepcopy(model).double().eval()
    for blk in getattr(m, "blocks", ()):
        if hasattr(getattr(blk, "attn", None), "fused_attn"):
            blk.attn.fused_attn = False
    if hasattr(getattr(m, "attn_pool", None), "fused_attn"):
        m.attn_pool.fused_attn = False
    return m


def first_block_input64(model: nn.Module, x1: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A frozen float64 copy (``model64``), the tokens its first block receives for ``x1`` and its
    logits: where the hand-written float64 forwards of CaiT and ConViT start and what they must equal."""
    m: Any = model64(model)
    for p in m.parameters():
        p.requires_grad_(False)
    got: dict = {}
    hook = m.blocks[0].register_forward_pre_hook(lambda mod, args: got.update(tokens=args[0]))
    try:
        with torch.no_grad():
            own = m(x1.double())
    finally:
        hook.remove()
    return m, got["tokens"].detach(), own


def patch_size64(model: nn.Module) -> tuple[int, int]:
    """(ph, pw) of the patch embedding (``patch_embed``; NaFlexViT: ``embeds``)."""
    ps = (model.embeds if is_naflex(model) else model.patch_embed).patch_size
    return (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))


def readout64(model: nn.Module, N: int) -> torch.Tensor:
    """Weights (N,) over the query rows whose weighted sum is the row the classifier reads:
    the class token (``global_pool='token'``), the mean of the class and distillation tokens
    (a distilled DeiT), or the mean of the patch tokens (``'avg'``; every token with
    ``pool_include_prefix``)."""
    T = int(model.num_prefix_tokens)
    w = torch.zeros(N, dtype=torch.float64)
    pool = getattr(model, "global_pool", "token")
    if pool == "token":
        if getattr(model, "dist_token", None) is not None and hasattr(model, "head_dist"):
            w[:2] = 0.5
        else:
            w[0] = 1.0
    elif pool == "avg":
        if getattr(model, "pool_include_prefix", False):
            w[:] = 1.0 / N
        else:
            w[T:] = 1.0 / (N - T)
    else:  # an attention pool's row depends on the image: run64 reads it (float64_map.map_row64)
        raise ValueError(f"no fixed float64 read-out for global_pool={pool!r}")
    return w


def _norm64(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    if isinstance(mod, nn.Identity):
        return x
    raise ValueError(f"no float64 restatement of a {type(mod).__name__} q/k norm")


def _rotate64(x: torch.Tensor, emb: torch.Tensor, half: bool) -> torch.Tensor:
    """``x cos + rot(x) sin`` per pair of channels (interleaved pairs, or the two halves)."""
    sin, cos = emb.tensor_split(2, -1)
    D = x.shape[-1]
    if half:
        rot = torch.cat([-x[..., D // 2 :], x[..., : D // 2]], dim=-1)
    else:
        rot = torch.empty_like(x)
        rot[..., 0::2] = -x[..., 1::2]
        rot[..., 1::2] = x[..., 0::2]
    return x * cos + rot * sin


def scores64(attn: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Scores (B, H, N, N) of one attention module from its float64 input and keyword
    arguments, restated from its weights: ``(rope(q_norm(q))·scale) rope(k_norm(k))ᵀ`` plus
    the BEiT bias table gathered by its relative position index, ``rel_pos``'s bias, the
    model's shared bias and an additive mask."""
    B, N, _ = x.shape
    H = attn.num_heads
    if getattr(attn, "qkv", None) is None:
        lins = (attn.q_proj, attn.k_proj, attn.v_proj)
        W = torch.cat([p.weight for p in lins])
        b = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features, dtype=x.dtype) for p in lins])
    elif getattr(attn, "q_bias", None) is not None:
        W, b = attn.qkv.weight, torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    else:
        W, b = attn.qkv.weight, attn.qkv.bias
    q, k, _v = F.linear(x, W, b).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
    ident = nn.Identity()
    q, k = _norm64(q, getattr(attn, "q_norm", ident)), _norm64(k, getattr(attn, "k_norm", ident))
    rope = kwargs.get("rope")
    if rope is not None:
        T, half = attn.num_prefix_tokens, bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], rope, half)], dim=2)
        k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], rope, half)], dim=2)
    s = (q * attn.scale) @ k.transpose(-1, -2)
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        idx = attn.relative_position_index.reshape(-1)
        s = s + table[idx].reshape(N, N, -1).permute(2, 0, 1)
    rel = getattr(attn, "rel_pos", None)
    if rel is not None:
        s = s + rel.get_bias()
    for key in ("shared_rel_pos_bias", "shared_rel_pos", "attn_mask"):
        if kwargs.get(key) is not None:
            s = s + kwargs[key]
    return s


@dataclass
class Run64:
    """One float64 pass: logits (B, C); per block the attention A (B, H, N, N) at ``attn_drop``'s
    output, its gradient G of the target logits, the restated scores S; the read-out weights w
    (N,), or (B, N) for an attention pool, whose own pass is ``pool`` (``float64_map``)."""

    logits: torch.Tensor
    A: list[torch.Tensor]
    G: list[torch.Tensor]
    S: list[torch.Tensor]
    w: torch.Tensor
    T: int
    grid: tuple[int, int]
    pool: Pool64 | None = None


def run64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, detach_attn_input: bool = False) -> Run64:
    """Run ``m64`` (``model64``) on ``x``; gradients of ``Σ_b logits[b, target[b]]``.
    ``detach_attn_input``: each attention's input detached (AG-CAM's graph). CaiT, XCiT and
    ConViT: their attention restated from the weights (``float64_cait``, ``float64_convit``)."""
    from .float64_cait import is_class_attention64, run64_class_attention  # they build on this module
    from .float64_convit import is_convit64, run64_convit

    if is_class_attention64(m64):
        return run64_class_attention(m64, x, target, detach_attn_input)
    if is_convit64(m64):
        return run64_convit(m64, x, target, detach_attn_input)
    attns: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []

    def pre(mod, args, kwargs):
        xin = args[0].detach().requires_grad_(True) if detach_attn_input else args[0]
        scores.append(scores64(mod, xin.detach(), kwargs).detach())
        return (xin, *args[1:]), kwargs

    handles = []
    pooled: list[tuple[torch.Tensor, torch.Tensor]] = []  # the attention pool's (S, A), restated
    xin = x.detach().double().requires_grad_(True)
    if is_map(m64):
        handles.append(map_hook(m64, pooled))
    if is_naflex(m64):
        handles.append(embed_hook(m64, xin))
    for blk in m64.blocks:
        handles.append(blk.attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda mod, a, out: attns.append(out)))
    try:
        with torch.enable_grad():
            logits = m64(xin)
            G = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), [*attns, *(a for _, a in pooled)])
    finally:
        for h in handles:
            h.remove()
    ph, pw = patch_size64(m64)
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    N = attns[0].shape[-1]
    pool = None
    if pooled:
        (S, A), = pooled
        pool = Pool64(S, A.detach(), G[-1], map_row64(m64, A, N))
    return Run64(logits.detach(), [a.detach() for a in attns], list(G[: len(attns)]), scores,
                 pool.p if pool is not None else readout64(m64, N), int(m64.num_prefix_tokens), grid, pool)
