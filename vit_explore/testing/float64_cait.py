"""Float64 restatements for CaiT and XCiT's class-attention stage (``vit_explore.testing.float64``).

Touvron et al., "Going deeper with Image Transformers", ICCV 2021 (arXiv:2103.17239); El-Nouby
et al., "XCiT", NeurIPS 2021 (arXiv:2106.09681). Written from the weights:

* talking heads (CaiT's patch blocks): ``S = proj_l((q·scale) kᵀ)`` (a Linear over the head
  axis), ``A = proj_w(softmax(S))`` (B, H, P, P), ``out = proj(A v)``;
* class attention (CaiT's ``blocks_token_only``, XCiT's ``cls_attn_blocks``): the class token's
  query over [CLS, patches], ``S = (q(x_0)·scale) k(x)ᵀ`` (B, H, 1, N), ``A = softmax(S)``.

``restated_run64`` runs the float64 model with each recorded attention replaced by its
restatement (checked equal to the module's own output and attention), so the gradients are those
of the restated A, and lays every block out on the N = 1 + P tokens of the read-out as
docs/methods.md §1.3 says: a class block is row 0 of an otherwise identity matrix, a block that
runs before the class token exists fills rows and columns 1… with the class token's row the
identity; gradients 0 and scores -inf (0 on the diagonal) where the block passes a token
unchanged. XCiT's patch stage (cross-covariance attention) has no token attention: only its
class-attention blocks are recorded. ``attn_lrp_cait64``: CP-LRP / AttnLRP on CaiT, the forward
written out with the rules of docs/methods.md §11. Nothing here calls into ``vit_explore``
outside ``vit_explore.testing``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .float64_model import Run64, readout64

#: a timm module reached by attribute (torch types ``nn.Module.__getattr__`` as ``Tensor | Module``)
Mod = Any
#: how a recorded block's (B, H, q, k) attention sits on the N tokens
Kind = Literal["all", "class", "patches"]
#: (module, its float64 input) -> (output, A, S)
Restate = Callable[[Mod, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Rule = Literal["cp", "attnlrp"] | None


def half64(t: torch.Tensor) -> torch.Tensor:
    """The uniform rule: value ``t``, gradient halved."""
    return 0.5 * t + 0.5 * t.detach()


def ruled64(a: torch.Tensor, rule: Rule) -> torch.Tensor:
    """The attention under an LRP rule: detached (CP-LRP), gradient halved (AttnLRP), or as is."""
    return a.detach() if rule == "cp" else half64(a) if rule == "attnlrp" else a


def lin64(x: torch.Tensor, mod: Mod) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


def qkv64(attn: Mod, x: torch.Tensor, rule: Rule = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, N, D) from the fused ``attn.qkv`` Linear on x (B, N, C), each share's gradient
    halved under AttnLRP's uniform rule."""
    B, N, C = x.shape
    qkv = lin64(x, attn.qkv)
    if rule == "attnlrp":
        qkv = half64(qkv)
    q, k, v = qkv.reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def attend64(attn: Mod, a: torch.Tensor, v: torch.Tensor, rule: Rule = None) -> torch.Tensor:
    """``proj(A v)`` with the heads merged: a (B, H, q, N) under ``rule``, v (B, H, N, D) -> (B, q, C)."""
    o = ruled64(a, rule) @ v
    return lin64(o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1), attn.proj)


def _heads(t: torch.Tensor, lin: Mod) -> torch.Tensor:
    """A Linear over the head axis of (B, H, q, k)."""
    return torch.einsum("gh,bhqk->bgqk", lin.weight, t) + lin.bias[None, :, None, None]


def talking_heads64(attn: Mod, x: torch.Tensor, rule: Rule = None):
    """``TalkingHeadAttn`` on x (B, P, C): output (B, P, C), ``A = proj_w(softmax(S))`` and
    ``S = proj_l((q·scale) kᵀ)``, both (B, H, P, P)."""
    q, k, v = qkv64(attn, x, rule)
    S = _heads((q * attn.scale) @ k.transpose(-1, -2), attn.proj_l)
    A = _heads(S.softmax(-1), attn.proj_w)
    return attend64(attn, A, v, rule), A, S


def class_attention64(attn: Mod, x: torch.Tensor, rule: Rule = None):
    """``ClassAttn`` on x (B, N, C) = [CLS, patches]: the class token's output (B, 1, C),
    ``A = softmax(S)`` and ``S = (q(x_0)·scale) k(x)ᵀ``, both (B, H, 1, N)."""
    B, N, C = x.shape
    H = attn.num_heads
    q, k, v = lin64(x[:, :1], attn.q), lin64(x, attn.k), lin64(x, attn.v)
    if rule == "attnlrp":
        q, k, v = half64(q), half64(k), half64(v)
    q = q.reshape(B, 1, H, C // H).transpose(1, 2)
    k, v = (t.reshape(B, N, H, C // H).transpose(1, 2) for t in (k, v))
    S = (q * attn.scale) @ k.transpose(-1, -2)
    A = S.softmax(-1)
    return attend64(attn, A, v, rule), A, S


def class_blocks64(m: Mod) -> tuple[Mod, ...]:
    """CaiT's ``blocks_token_only`` or XCiT's ``cls_attn_blocks`` (() for other models)."""
    for name in ("blocks_token_only", "cls_attn_blocks"):
        seq = getattr(m, name, None)
        if isinstance(seq, nn.Module) and len(list(seq.children())):
            return tuple(seq.children())
    return ()


def is_class_attention64(m: Mod) -> bool:
    """CaiT or XCiT: class-attention blocks after the patch blocks."""
    return bool(class_blocks64(m))


def lay_out64(t: torch.Tensor, n: int, kind: Kind, fill: Literal["attn", "grad", "scores"]) -> torch.Tensor:
    """A block's (B, H, q, k) attention, gradient or scores on all ``n`` tokens (module docstring)."""
    if kind == "all":
        return t
    B, H = t.shape[:2]
    eye = torch.eye(n, dtype=t.dtype, device=t.device)
    base = {"attn": eye, "grad": torch.zeros_like(eye),
            "scores": torch.full_like(eye, float("-inf")).fill_diagonal_(0.0)}[fill]
    out = base.expand(B, H, n, n).clone()
    if kind == "class":
        out[:, :, :1, :] = t
    else:
        out[:, :, 1:, 1:] = t
    return out


def _grid64(m: Mod, x: torch.Tensor) -> tuple[int, int]:
    ps = m.patch_embed.patch_size
    ph, pw = (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))
    return x.shape[-2] // ph, x.shape[-1] // pw


def restated_run64(m64: Mod, x: torch.Tensor, target: torch.Tensor,
                   blocks: Sequence[tuple[Mod, Restate, Kind]], detach_attn_input: bool = False) -> Run64:
    """Run ``m64`` (``model64``) on ``x`` with every attention module of ``blocks`` replaced by
    its float64 restatement; A, its gradient of ``Σ_b logits[b, target[b]]`` and S per block,
    laid out on the 1 + P tokens. Raises AssertionError where a restatement is not the module."""
    As: list[torch.Tensor] = []
    Ss: list[torch.Tensor] = []
    own: list[torch.Tensor] = []

    def hook(fn: Restate):
        def h(mod, args, out):
            xin = args[0].detach().requires_grad_(True) if detach_attn_input else args[0]
            o, a, s = fn(mod, xin)
            scale = float(out.detach().abs().max())
            if not torch.allclose(o, out, rtol=1e-9, atol=1e-12 * scale) or not torch.allclose(
                    a, own[-1], rtol=1e-9, atol=1e-12):
                raise AssertionError(f"the float64 restatement of {type(mod).__name__} is not the model's")
            As.append(a)
            Ss.append(s.detach())
            return o
        return h

    handles = []
    try:
        for attn, fn, _ in blocks:
            if hasattr(attn, "fused_attn"):
                attn.fused_attn = False  # the float64 copy's: its attn_drop sees the attention
            handles.append(attn.attn_drop.register_forward_hook(lambda mod, a, out: own.append(out.detach())))
            handles.append(attn.register_forward_hook(hook(fn)))
        with torch.enable_grad():
            logits = m64(x.detach().double())
            G = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), As)
    finally:
        for h in handles:
            h.remove()
    grid = _grid64(m64, x)
    n = int(m64.num_prefix_tokens) + grid[0] * grid[1]
    kinds = [k for _, _, k in blocks]
    return Run64(logits.detach(), [lay_out64(a.detach(), n, k, "attn") for a, k in zip(As, kinds)],
                 [lay_out64(g, n, k, "grad") for g, k in zip(G, kinds)],
                 [lay_out64(s, n, k, "scores") for s, k in zip(Ss, kinds)], readout64(m64, n),
                 int(m64.num_prefix_tokens), grid)


def _th(attn: Mod, x: torch.Tensor):
    return talking_heads64(attn, x)


def _ca(attn: Mod, x: torch.Tensor):
    return class_attention64(attn, x)


def run64_class_attention(m64: Mod, x: torch.Tensor, target: torch.Tensor,
                          detach_attn_input: bool = False) -> Run64:
    """``restated_run64`` of CaiT (talking-heads patch blocks, then class blocks) or XCiT (its
    class blocks only: the patch stage has no token attention)."""
    cls: list[tuple[Mod, Restate, Kind]] = [(b.attn, _ca, "class") for b in class_blocks64(m64)]
    if hasattr(m64, "cls_attn_blocks"):  # XCiT
        return restated_run64(m64, x, target, cls, detach_attn_input)
    if not all(hasattr(b.attn, "proj_l") for b in m64.blocks):
        raise ValueError("no float64 restatement of CaiT patch blocks other than TalkingHeadAttn")
    patches: list[tuple[Mod, Restate, Kind]] = [(b.attn, _th, "patches") for b in m64.blocks]
    return restated_run64(m64, x, target, [*patches, *cls], detach_attn_input)


def _ln(x: torch.Tensor, mod: Mod) -> torch.Tensor:
    """LayerNorm with sigma detached (the identity rule)."""
    if not isinstance(mod, nn.LayerNorm):
        raise TypeError(f"no float64 AttnLRP restatement of a {type(mod).__name__}")
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps).detach()
    return (x - mu) / sigma * mod.weight + mod.bias


def mlp64(x: torch.Tensor, mlp: Mod) -> torch.Tensor:
    """timm's Mlp with the activation's identity rule (gradient ``f(x)/x``, 1/2 at 0)."""
    h = lin64(x, mlp.fc1)
    out = mlp.act(h)
    ratio = torch.where(h != 0, out / torch.where(h != 0, h, torch.ones_like(h)), torch.full_like(h, 0.5))
    if not isinstance(mlp.norm, nn.Identity):
        raise TypeError("no float64 AttnLRP restatement of an Mlp with a norm")
    return lin64(h * ratio.detach(), mlp.fc2)


def logits_lrp64(m: Mod, t: torch.Tensor) -> torch.Tensor:
    """The final norm and the head: class token, or the mean of the patch tokens (``avg``)."""
    t = _ln(t, m.norm)
    return lin64(t[:, int(m.num_prefix_tokens):].mean(1) if m.global_pool == "avg" else t[:, 0], m.head)


def patch_tokens64(m: Mod, xi: torch.Tensor) -> torch.Tensor:
    """The model's own patch embedding plus its position embedding (plain gradient)."""
    if not isinstance(getattr(m.patch_embed, "norm", nn.Identity()), nn.Identity):
        raise TypeError("no float64 AttnLRP restatement of a patch embedding norm")
    t = m.patch_embed(xi)
    return t + m.pos_embed if getattr(m, "pos_embed", None) is not None else t


def attn_lrp_cait64(m64: Mod, x: torch.Tensor, target: torch.Tensor, rule: Rule = "cp") -> torch.Tensor:
    """Pixel relevance (B, H, W) of CP-LRP (``"cp"``: A detached) or AttnLRP (``"attnlrp"``: A
    and q, k, v gradients halved) on CaiT: ``Σ_c x ⊙ ∂y_t/∂x`` through the forward written out
    with LayerNorm's sigma detached and the MLP activation's identity rule (layer scale: a product
    with a constant)."""
    for p in m64.parameters():
        p.requires_grad_(False)
    with torch.enable_grad():
        xi = x.detach().double().requires_grad_(True)
        t = patch_tokens64(m64, xi)
        for blk in m64.blocks:
            t = t + blk.gamma_1 * talking_heads64(blk.attn, _ln(t, blk.norm1), rule)[0]
            t = t + blk.gamma_2 * mlp64(_ln(t, blk.norm2), blk.mlp)
        c = m64.cls_token.expand(t.shape[0], -1, -1)
        for blk in m64.blocks_token_only:
            c = c + blk.gamma_1 * class_attention64(blk.attn, _ln(torch.cat([c, t], 1), blk.norm1), rule)[0]
            c = c + blk.gamma_2 * mlp64(_ln(c, blk.norm2), blk.mlp)
        logits = logits_lrp64(m64, torch.cat([c, t], 1))
        with torch.no_grad():
            if not torch.allclose(logits, m64(xi), rtol=0, atol=1e-9):
                raise AssertionError("the float64 restatement of CaiT is not the model")  # rules keep the values
        (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xi)
    return (xi * g).sum(1).detach()
