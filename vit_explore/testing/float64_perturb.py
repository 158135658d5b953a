"""Float64 restatements of the gradient and perturbation methods (saliency, integrated gradients,
Grad-CAM, occlusion) and of ``intervene``'s token drop and noise (``vit_explore.testing.float64``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .float64_agnostic import (
    GradientCheckError,
    integrated_gradients_cells64,
    noised_cells64,
    occlusion_cells64,
    saliency_cells64,
)
from .float64_model import _norm64, _rotate64, model64, patch_size64

__all__ = ["GradientCheckError", "dropped64", "grad_cam64", "integrated_gradients64", "noised64", "occlusion64",
           "saliency64"]


def _patch(m64: nn.Module) -> tuple[int, int]:
    return patch_size64(m64)


def _grid(m64: nn.Module, x: torch.Tensor) -> tuple[int, int, int, int]:
    ph, pw = _patch(m64)
    return x.shape[-2] // ph, x.shape[-1] // pw, ph, pw


def saliency64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. 2014 on the patch grid (``float64_agnostic.saliency_cells64``)."""
    gh, gw, ph, pw = _grid(m64, x)
    return saliency_cells64(m64, x, target, (gh, gw), (ph, pw))


def integrated_gradients64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int) -> torch.Tensor:
    """Sundararajan et al. 2017 on the patch grid (``float64_agnostic.integrated_gradients_cells64``)."""
    gh, gw, ph, pw = _grid(m64, x)
    return integrated_gradients_cells64(m64, x, target, steps, (gh, gw), (ph, pw))


def grad_cam64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al. 2017 on the patch tokens entering the last block (its ``norm1`` output):
    ``ReLU(Σ_c α_c A_c)``, ``α_c`` the target's gradient averaged over the patches."""
    gh, gw, _, _ = _grid(m64, x)
    got = []
    h = m64.blocks[-1].norm1.register_forward_hook(lambda m, a, o: got.append(o))
    try:
        with torch.enable_grad():
            logits = m64(x.detach().double())
            (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), got[0])
    finally:
        h.remove()
    T = int(m64.num_prefix_tokens)
    a, g = got[0].detach()[:, T:], g[:, T:]
    return torch.einsum("bpc,bc->bp", a, g.mean(1)).clamp(min=0).reshape(-1, gh, gw)


def occlusion64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Zeiler & Fergus 2014 with one-patch windows (``float64_agnostic.occlusion_cells64``)."""
    gh, gw, ph, pw = _grid(m64, x)
    return occlusion_cells64(m64, x, target, (gh, gw), (ph, pw))


# --------------------------------------------------------------------------- interventions


class _KeptAttention(nn.Module):
    """Float64 attention of one block on the kept tokens ``rows`` (n,) of a sequence of ``full``,
    written out: qkv, q/k norm, the full rotary tensor's rows of the kept patches, ``(q·scale) kᵀ``
    plus the full bias's kept rows and columns, softmax, ``@ v``, the optional scale norm and
    sigmoid gate, ``proj``."""

    def __init__(self, attn: nn.Module, rows: torch.Tensor, T: int, full: int) -> None:
        super().__init__()
        self.attn, self.rows, self.T, self.full = attn, rows, T, full

    def forward(self, x: torch.Tensor, **kw) -> torch.Tensor:
        a, rows, T = self.attn, self.rows, self.T
        B, n, _ = x.shape
        H = a.num_heads
        if getattr(a, "qkv", None) is None:
            lins = (a.q_proj, a.k_proj, a.v_proj)
            W = torch.cat([p.weight for p in lins])
            b = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features, dtype=x.dtype) for p in lins])
        elif getattr(a, "q_bias", None) is not None:
            W, b = a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        else:
            W, b = a.qkv.weight, a.qkv.bias
        q, k, v = F.linear(x, W, b).reshape(B, n, 3, H, -1).permute(2, 0, 3, 1, 4)
        ident = nn.Identity()
        q, k = _norm64(q, getattr(a, "q_norm", ident)), _norm64(k, getattr(a, "k_norm", ident))
        rope = kw.get("rope")
        if rope is not None:
            r = rope[..., rows[T:] - T, :]  # (…, P, 2D): the kept patches' rows
            half = bool(getattr(a, "rotate_half", False))
            q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], r, half)], dim=2)
            k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], r, half)], dim=2)
        s = (q * a.scale) @ k.transpose(-1, -2) + _bias64(a, kw, self.full)[:, rows][:, :, rows]
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, n, -1)
        if not isinstance(getattr(a, "norm", ident), nn.Identity):
            y = a.norm(y)
        if getattr(a, "gate", None) is not None:
            y = y * a.gate(x).sigmoid()
        return a.proj(y)


def _bias64(attn: nn.Module, kwargs: dict, N: int) -> torch.Tensor:
    """The additive score bias (H, N, N) of the full sequence (zero where the family has none)."""
    out = torch.zeros(attn.num_heads, N, N, dtype=torch.float64)
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        out = out + table[attn.relative_position_index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)
    rel = getattr(attn, "rel_pos", None)
    if rel is not None:
        out = out + rel.get_bias().reshape(-1, N, N)
    for key in ("shared_rel_pos_bias", "shared_rel_pos"):
        if kwargs.get(key) is not None:
            out = out + kwargs[key].reshape(-1, N, N)
    return out


def dropped64(model: nn.Module, x: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Float64 logits of ``x`` (1, 3, H, W) with only patches ``kept`` and the prefix tokens: the
    sequence cut at the first block's input (after every position embedding), each block's
    attention written out on the kept tokens with their original positions' terms."""
    m = model64(model)
    T = int(m.num_prefix_tokens)
    ph, pw = m.patch_embed.patch_size
    P = (x.shape[-2] // ph) * (x.shape[-1] // pw)
    rows = torch.tensor([*range(T), *(T + p for p in kept)], dtype=torch.long)
    for blk in m.blocks:
        blk.attn = _KeptAttention(blk.attn, rows, T, T + P)
    h = m.blocks[0].register_forward_pre_hook(lambda mod, args: (args[0][:, rows], *args[1:]))
    try:
        with torch.no_grad():
            return m(x.double())
    finally:
        h.remove()


def noised64(model: nn.Module, x: torch.Tensor, patches: list[int], seed: int = 0, sigma: float = 0.1) -> torch.Tensor:
    """Float64 logits of ``x`` (B, 3, H, W) with the pixels of ``patches`` (row-major) replaced by
    seeded noise (``float64_agnostic.noised_cells64``)."""
    gh, gw, ph, pw = _grid(model, x)
    return noised_cells64(model, x, patches, (gh, gw), (ph, pw), seed, sigma)
