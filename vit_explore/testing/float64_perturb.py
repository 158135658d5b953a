"""Float64 restatements of the gradient and perturbation methods (saliency, integrated gradients,
Grad-CAM, occlusion) and of ``intervene``'s token drop and noise (``vit_explore.testing.float64``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .float64_model import _norm64, _rotate64, model64, patch_size64


def _patch(m64: nn.Module) -> tuple[int, int]:
    return patch_size64(m64)


def _grid(m64: nn.Module, x: torch.Tensor) -> tuple[int, int, int, int]:
    ph, pw = _patch(m64)
    return x.shape[-2] // ph, x.shape[-1] // pw, ph, pw


def _patch_sum(m64: nn.Module, pixel: torch.Tensor) -> torch.Tensor:
    """(B, H, W) pixel map summed within each patch: (B, gh, gw)."""
    ph, pw = _patch(m64)
    B, H, W = pixel.shape
    return pixel[:, : H // ph * ph, : W // pw * pw].reshape(B, H // ph, ph, W // pw, pw).sum(dim=(2, 4))


class GradientCheckError(ValueError):
    """Autograd's input gradient of the model disagrees with a float64 central difference."""


def _input_grad(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``∂y_t/∂x`` (B, 3, H, W) by autograd, checked per image against the float64 central
    difference ``(y(x + εv) - y(x - εv)) / 2ε`` along a seeded random direction v (ε = 1e-6,
    agreement to 1e-5 relative): an autograd that is wrong for this model (as timm's XCiT is at
    batch size 1) raises ``GradientCheckError`` instead of giving a wrong reference."""
    x = x.detach().double()
    with torch.enable_grad():
        xin = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m64(xin).gather(1, target[:, None]).sum(), xin)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        hi = m64(x + eps * v).gather(1, target[:, None])[:, 0]
        lo = m64(x - eps * v).gather(1, target[:, None])[:, 0]
    fd, ad = (hi - lo) / (2 * eps), (g * v).flatten(1).sum(1)
    if not bool(((fd - ad).abs() <= 1e-5 * ad.abs().clamp_min(fd.abs()) + 1e-9).all()):
        raise GradientCheckError(
            f"autograd's input gradient fails a float64 finite-difference check (directional derivative "
            f"{ad.tolist()} by autograd, {fd.tolist()} by central difference)"
        )
    return g


def saliency64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. 2014: ``max_c |∂y_t/∂x_c|`` per pixel, summed within each patch."""
    return _patch_sum(m64, _input_grad(m64, x, target).abs().amax(1))


def integrated_gradients64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int) -> torch.Tensor:
    """Sundararajan et al. 2017 from the all-zero baseline, trapezoid rule on ``steps`` points
    ``α_k = k/(steps-1)``: ``x ⊙ Σ_k w_k ∇y_t(α_k x)``, summed over channels and within each patch."""
    total = torch.zeros_like(x, dtype=torch.float64)
    for k in range(steps):
        w = (0.5 if k in (0, steps - 1) else 1.0) / (steps - 1)
        total += w * _input_grad(m64, k / (steps - 1) * x.double(), target)
    return _patch_sum(m64, (x.double() * total).sum(1))


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
    """Zeiler & Fergus 2014 with one-patch windows: ``p_t(x) - p_t(x with the patch's pixels
    set to 0)`` per patch (softmax probability)."""
    gh, gw, ph, pw = _grid(m64, x)
    x = x.double()
    with torch.no_grad():
        base = m64(x).softmax(-1).gather(1, target[:, None])[:, 0]
        out = torch.zeros(x.shape[0], gh, gw, dtype=torch.float64)
        for r in range(gh):
            for c in range(gw):
                y = x.clone()
                y[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = 0
                out[:, r, c] = base - m64(y).softmax(-1).gather(1, target[:, None])[:, 0]
    return out


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
    ``N(0, σ²)`` noise drawn from ``torch.Generator().manual_seed(seed)`` (float32 draws)."""
    m = model64(model)
    ph, pw = m.patch_embed.patch_size
    gw = x.shape[-1] // pw
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    y = x.clone()
    for p in patches:
        r, c = divmod(p, gw)
        y[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = noise[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
    with torch.no_grad():
        return m(y.double())


