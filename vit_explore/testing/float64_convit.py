"""Float64 restatements for ConViT (``vit_explore.testing.float64``).

d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive
Biases", ICML 2021 (arXiv:2103.10697). Written from the weights:

* gated positional self-attention (GPSA, the first ``local_up_to_layer`` blocks, over the P
  patch tokens): per head ``A = (1-σ(g))·softmax((q kᵀ)·scale) + σ(g)·softmax(pos_proj(r))``,
  renormalised row by row, with ``r[i, j] = (Δx, Δy, Δx² + Δy²)`` the offset from query patch i
  to key patch j on the (square) grid; ``out = proj(A v)``. There is no single score tensor, so
  S is NaN there (a method that read it would give NaN, not a number);
* MHSA (the blocks after the class token joins): ``A = softmax((q kᵀ)·scale)``.

``run64_convit`` is ``float64_cait.restated_run64`` over these (GPSA blocks laid out on the
1 + P tokens with the class token's row the identity, docs/methods.md §1.3);
``attn_lrp_convit64`` is CP-LRP / AttnLRP with the forward written out (docs/methods.md §11).
Nothing here calls into ``vit_explore`` outside ``vit_explore.testing``.
"""

from __future__ import annotations

import math

import torch

from .float64_cait import (
    Kind,
    Mod,
    Restate,
    Rule,
    _ln,
    attend64,
    half64,
    lin64,
    logits_lrp64,
    mlp64,
    patch_tokens64,
    qkv64,
    restated_run64,
)
from .float64_model import Run64


def is_convit64(m: Mod) -> bool:
    """A ConViT: GPSA blocks (``gating_param``, ``pos_proj``) before the class token joins."""
    return isinstance(getattr(m, "local_up_to_layer", None), int) and any(
        hasattr(b.attn, "gating_param") for b in getattr(m, "blocks", ()))


def offsets64(P: int, device: torch.device | None = None) -> torch.Tensor:
    """(P, P, 3) float64: ``(Δx, Δy, Δx² + Δy²)`` from patch i to patch j, row-major square grid."""
    s = math.isqrt(P)
    if s * s != P:
        raise ValueError(f"ConViT's GPSA assumes a square grid; got {P} patches")
    idx = torch.arange(P, device=device)
    r, c = (idx // s).double(), (idx % s).double()
    dx, dy = c[None, :] - c[:, None], r[None, :] - r[:, None]
    return torch.stack([dx, dy, dx**2 + dy**2], -1)


def gpsa64(attn: Mod, x: torch.Tensor, rule: Rule = None):
    """GPSA on x (B, P, C): output (B, P, C), the renormalised gated mix A (B, H, P, P), S NaN."""
    B, N, C = x.shape
    H = attn.num_heads
    qk, v = lin64(x, attn.qk), lin64(x, attn.v)
    if rule == "attnlrp":
        qk, v = half64(qk), half64(v)
    q, k = qk.reshape(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4)
    v = v.reshape(B, N, H, C // H).transpose(1, 2)
    content = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)
    pos = lin64(offsets64(N, x.device), attn.pos_proj).permute(2, 0, 1).softmax(-1)  # (H, P, P)
    g = torch.sigmoid(attn.gating_param)[None, :, None, None]
    A = (1 - g) * content + g * pos
    A = A / A.sum(-1, keepdim=True)
    return attend64(attn, A, v, rule), A, torch.full_like(A, float("nan"))


def mhsa64(attn: Mod, x: torch.Tensor, rule: Rule = None):
    """ConViT's MHSA on x (B, N, C): output, ``A = softmax(S)``, ``S = (q kᵀ)·scale`` (B, H, N, N)."""
    q, k, v = qkv64(attn, x, rule)
    S = (q @ k.transpose(-1, -2)) * attn.scale
    A = S.softmax(-1)
    return attend64(attn, A, v, rule), A, S


def _gpsa(attn: Mod, x: torch.Tensor):
    return gpsa64(attn, x)


def _mhsa(attn: Mod, x: torch.Tensor):
    return mhsa64(attn, x)


def run64_convit(m64: Mod, x: torch.Tensor, target: torch.Tensor, detach_attn_input: bool = False) -> Run64:
    """``restated_run64`` of ConViT: GPSA blocks over the patches, then MHSA blocks over all tokens."""
    L = m64.local_up_to_layer
    blocks: list[tuple[Mod, Restate, Kind]] = [(b.attn, _gpsa, "patches") if i < L else (b.attn, _mhsa, "all") for i, b in enumerate(m64.blocks)]
    if any(hasattr(b.attn, "gating_param") != (i < L) for i, b in enumerate(m64.blocks)):
        raise ValueError("no float64 restatement of a ConViT whose GPSA blocks are not its first local_up_to_layer")
    return restated_run64(m64, x, target, blocks, detach_attn_input)


def attn_lrp_convit64(m64: Mod, x: torch.Tensor, target: torch.Tensor, rule: Rule = "cp") -> torch.Tensor:
    """Pixel relevance (B, H, W) of CP-LRP / AttnLRP on ConViT (``float64_cait.attn_lrp_cait64``'s
    rules; the class token joins before block ``local_up_to_layer``)."""
    for p in m64.parameters():
        p.requires_grad_(False)
    with torch.enable_grad():
        xi = x.detach().double().requires_grad_(True)
        t = patch_tokens64(m64, xi)
        for i, blk in enumerate(m64.blocks):
            if i == m64.local_up_to_layer:
                t = torch.cat([m64.cls_token.expand(t.shape[0], -1, -1), t], 1)
            fn = gpsa64 if i < m64.local_up_to_layer else mhsa64
            t = t + fn(blk.attn, _ln(t, blk.norm1), rule)[0]
            t = t + mlp64(_ln(t, blk.norm2), blk.mlp)
        logits = logits_lrp64(m64, t)
        with torch.no_grad():
            if not torch.allclose(logits, m64(xi), rtol=0, atol=1e-9):
                raise AssertionError("the float64 restatement of ConViT is not the model")  # rules keep the values
        (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xi)
    return (xi * g).sum(1).detach()


def attn_lrp_family64(model: Mod, x: torch.Tensor, target: torch.Tensor, rule: Rule = "cp") -> torch.Tensor:
    """The attn_lrp map (B, gh, gw) of CaiT or ConViT: the pixel relevance summed within each patch."""
    from .float64_cait import attn_lrp_cait64, is_class_attention64
    from .float64_model import model64

    m64: Mod = model64(model)
    if is_convit64(m64):
        pix = attn_lrp_convit64(m64, x, target, rule)
    elif is_class_attention64(m64) and hasattr(m64, "blocks_token_only"):
        pix = attn_lrp_cait64(m64, x, target, rule)
    else:
        raise ValueError(f"no float64 AttnLRP restatement of {type(model).__name__} here")
    ph, pw = m64.patch_embed.patch_size
    B, H, W = pix.shape
    return pix[:, : H // ph * ph, : W // pw * pw].reshape(B, H // ph, ph, W // pw, pw).sum(dim=(2, 4))
