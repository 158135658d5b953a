"""Float64 restatements of ``intervene(mode="drop")`` on the families whose class token joins after
the patch blocks (CaiT, ConViT), on NaFlexViT and on an attention-pool (MAP) read-out
(``vit_explore.testing``; the timm ViT, rotary and relative-bias families are ``float64_perturb.
dropped64``).

Each function writes the model's forward out again on the float64 copy (``model64``), with the
token sequence cut by plain indexing right after every position embedding, and nothing from
``vit_explore.capture``: a kept patch keeps its own position embedding, and

* CaiT (Touvron et al. 2021): the talking-heads patch blocks run on the kept patches, then the
  class token's class-attention blocks attend over [CLS, kept patches];
* ConViT (d'Ascoli et al. 2021): gated positional self-attention written out,
  ``A = (1-σ(g))·softmax((q·scale) kᵀ) + σ(g)·softmax(pos_proj(r))`` renormalised, with the
  relative offsets r = (dx, dy, dx² + dy²) between the kept patches' own grid cells computed
  here from their row-major indices; the class token joins at ``local_up_to_layer``;
* NaFlexViT: the image-mode embedding (patches and position embedding of the full grid), the
  kept tokens through the blocks (no mask), the pool over the kept patches;
* a MAP head (SigLIP): ``dropped64``, whose forward ends in the model's own attention pool over
  the kept tokens.

``blocked64`` restates ``block_tokens`` on CaiT and ConViT: every attention written out with
-inf added to the blocked columns of the scores each softmax receives (CaiT's talking heads: after
``proj_l``; ConViT's GPSA: the content and the positional softmax), over the patch columns alone
in the blocks before the class token joins.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .float64_model import model64
from .float64_perturb import dropped64

__all__ = ["blocked64", "drop64", "drop_family", "grid64"]


def drop_family(model: nn.Module) -> str | None:
    """``"cait"``, ``"convit"``, ``"naflex"`` or ``"map"`` (a timm VisionTransformer with an
    attention-pool head and plain ``Attention``), the families restated here; else None."""
    if isinstance(getattr(model, "blocks_token_only", None), nn.Module) and hasattr(model, "pos_embed"):
        return "cait"
    if any(hasattr(getattr(b, "attn", None), "gating_param") for b in getattr(model, "blocks", ())):
        return "convit"
    if isinstance(getattr(model, "embeds", None), nn.Module) and getattr(model, "rope", None) is None:
        return "naflex"
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import VisionTransformer

    if (isinstance(model, VisionTransformer) and getattr(model, "global_pool", None) == "map"
            and all(type(b.attn) is Attention for b in model.blocks)):
        return "map"
    return None


def grid64(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """The patch grid (gh, gw) of ``x`` (B, 3, H, W)."""
    pe: Any = getattr(model, "patch_embed", None) or model.embeds
    ps = pe.patch_size
    ph, pw = (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))
    return x.shape[-2] // ph, x.shape[-1] // pw


def drop64(model: nn.Module, x: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Float64 logits (B, C) of ``x`` (B, 3, H, W) with only the patches ``kept`` (row-major, one
    set for every image) and the prefix tokens."""
    fam = drop_family(model)
    if fam is None and isinstance(getattr(model, "embeds", None), nn.Module):
        raise NotImplementedError("no float64 restatement of NaFlexViT with rotary embeddings")
    if fam is None or fam == "map":
        return torch.cat([dropped64(model, x[i : i + 1], kept) for i in range(x.shape[0])])
    m: Any = model64(model)
    idx = torch.tensor(kept, dtype=torch.long)
    with torch.no_grad():
        if fam == "cait":
            return _cait(m, x.double(), idx)
        if fam == "convit":
            return _convit(m, x.double(), idx, grid64(model, x))
        return _naflex(m, x.double(), idx)


def _head(m: Any, t: torch.Tensor, T: int) -> torch.Tensor:
    """The read-out of the normed sequence (B, T + n, C): the class token or the patch mean."""
    pooled = t[:, T:].mean(1) if m.global_pool == "avg" else t[:, 0]
    return m.head(pooled)


def _cait(m: Any, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    t = (m.patch_embed(x) + m.pos_embed)[:, idx]  # each kept patch with its own position embedding
    for blk in m.blocks:  # talking-heads attention over the kept patches
        t = blk(t)
    cls = m.cls_token.expand(x.shape[0], -1, -1)
    for blk in m.blocks_token_only:  # the class token's query over [CLS, kept patches]
        cls = blk(t, cls)
    return _head(m, m.norm(torch.cat([cls, t], dim=1)), 1)


class _GPSA64(nn.Module):
    """ConViT's gated positional self-attention over the kept patches, written out; ``rel``
    (n, n, 3) the offsets (dx, dy, dx² + dy²) from each kept patch (row) to each (column)."""

    def __init__(self, a: Any, rel: torch.Tensor) -> None:
        super().__init__()
        self.a, self.rel = a, rel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a: Any = self.a
        B, n, C = x.shape
        H = a.num_heads
        q, k = a.qk(x).reshape(B, n, 2, H, C // H).permute(2, 0, 3, 1, 4)
        content = (q @ k.transpose(-1, -2) * a.scale).softmax(-1)
        pos = (self.rel @ a.pos_proj.weight.T + a.pos_proj.bias).permute(2, 0, 1).softmax(-1)  # (H, n, n)
        g = torch.sigmoid(a.gating_param).reshape(1, H, 1, 1)
        A = (1 - g) * content + g * pos
        A = A / A.sum(-1, keepdim=True)
        v = a.v(x).reshape(B, n, H, C // H).transpose(1, 2)
        return a.proj((A @ v).transpose(1, 2).reshape(B, n, C))


def _offsets(idx: torch.Tensor, gw: int) -> torch.Tensor:
    """(n, n, 3): ``(col_j - col_i, row_j - row_i, squared distance)`` between kept patches i, j."""
    r, c = (idx // gw).double(), (idx % gw).double()
    dx, dy = c[None, :] - c[:, None], r[None, :] - r[:, None]
    return torch.stack([dx, dy, dx**2 + dy**2], dim=-1)


def _convit(m: Any, x: torch.Tensor, idx: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    t = m.patch_embed(x)
    if m.use_pos_embed:
        t = t + m.pos_embed
    t = t[:, idx]
    rel = _offsets(idx, grid[1])
    for u, blk in enumerate(m.blocks):
        if u == m.local_up_to_layer and m.cls_token is not None:
            t = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), t], dim=1)
        if hasattr(blk.attn, "gating_param"):
            blk.attn = _GPSA64(blk.attn, rel)
        t = blk(t)
    return _head(m, m.norm(t), int(m.num_prefix_tokens))


def _naflex(m: Any, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    t, _ = m.embeds(x)  # image mode: the full grid's patches with their position embedding
    T = int(m.num_prefix_tokens)
    t = m.norm_pre(t[:, torch.cat([torch.arange(T), T + idx])])
    for blk in m.blocks:
        t = blk(t)
    t = m.norm(t)
    if m.attn_pool is not None:
        pooled = m.attn_pool(t if m.pool_include_prefix else t[:, T:])
    elif m.global_pool == "avg":
        pooled = (t if m.pool_include_prefix else t[:, T:]).mean(1)
    elif m.global_pool == "token":
        pooled = t[:, 0]
    else:
        raise NotImplementedError(f"no float64 restatement of NaFlexViT's global_pool={m.global_pool!r}")
    return m.head(m.fc_norm(pooled))


class _Blocked64(nn.Module):
    """One CaiT / ConViT attention written out, with -inf on the blocked columns ``cols`` (T + P,)
    bool of the full sequence (its patch part ``cols[T:]`` while the sequence holds the P patches
    alone); ``rel`` (P, P, 3) the full grid's offsets (GPSA)."""

    def __init__(self, a: Any, cols: torch.Tensor, T: int, rel: torch.Tensor) -> None:
        super().__init__()
        self.a, self.cols, self.T, self.rel = a, cols, T, rel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a: Any = self.a
        B, n, C = x.shape
        H, d = a.num_heads, C // a.num_heads
        cols = self.cols[self.T :] if n == self.cols.numel() - self.T else self.cols
        assert cols.numel() == n
        neg = torch.zeros(n, dtype=torch.float64).masked_fill(cols, float("-inf"))
        heads = lambda t: t.reshape(B, -1, H, d).transpose(1, 2)
        if hasattr(a, "gating_param"):  # GPSA
            q, k = a.qk(x).reshape(B, n, 2, H, d).permute(2, 0, 3, 1, 4)
            content = ((q @ k.transpose(-1, -2)) * a.scale + neg).softmax(-1)
            pos = ((self.rel @ a.pos_proj.weight.T + a.pos_proj.bias).permute(2, 0, 1) + neg).softmax(-1)
            g = torch.sigmoid(a.gating_param).reshape(1, H, 1, 1)
            A = (1 - g) * content + g * pos
            A = A / A.sum(-1, keepdim=True)
            v = heads(a.v(x))
        elif hasattr(a, "proj_l"):  # CaiT talking heads: mix the heads' scores, softmax, mix again
            q, k, v = a.qkv(x).reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4)
            s = torch.einsum("bhqk,gh->bgqk", (q * a.scale) @ k.transpose(-1, -2), a.proj_l.weight)
            A = (s + a.proj_l.bias[:, None, None] + neg).softmax(-1)
            A = torch.einsum("bhqk,gh->bgqk", A, a.proj_w.weight) + a.proj_w.bias[:, None, None]
        elif getattr(a, "qkv", None) is None:  # class attention: the class token's query
            q, k, v = heads(a.q(x[:, :1])), heads(a.k(x)), heads(a.v(x))
            A = ((q * a.scale) @ k.transpose(-1, -2) + neg).softmax(-1)
            return a.proj((A @ v).transpose(1, 2).reshape(B, 1, C))
        else:  # ConViT's MHSA
            q, k, v = a.qkv(x).reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4)
            A = ((q @ k.transpose(-1, -2)) * a.scale + neg).softmax(-1)
        return a.proj((A @ v).transpose(1, 2).reshape(B, n, C))


def blocked64(model: nn.Module, x: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Float64 logits (B, C) of CaiT / ConViT with no query attending to ``tokens`` (indices into
    the full sequence, 0 = CLS, T + p = patch p) in any block."""
    fam = drop_family(model)
    if fam not in ("cait", "convit"):
        raise NotImplementedError(f"no float64 restatement of block_tokens on {type(model).__name__}")
    m: Any = model64(model)
    gh, gw = grid64(model, x)
    T = int(m.num_prefix_tokens)
    cols = torch.zeros(T + gh * gw, dtype=torch.bool)
    cols[tokens] = True
    rel = _offsets(torch.arange(gh * gw), gw)
    blocks = [*m.blocks, *getattr(m, "blocks_token_only", ())]
    for blk in blocks:
        blk.attn = _Blocked64(blk.attn, cols, T, rel)
    with torch.no_grad():
        return m(x.double())
