"""Float64 restatement of AttnLRP / CP-LRP (Achtibat et al., ICML 2024, arXiv:2402.05602;
docs/methods.md §11) on the timm ViT families, for tests and ``bench/family_table.py``.

A float64 forward written out with the rules applied by hand as modified gradients: LayerNorm
(every one: ``norm_pre``, the blocks', q_norm / k_norm / scale norms, ``norm``, ``fc_norm``) with
sigma detached, the activation's identity rule (gradient ``f(x)/x``), a gated MLP's product with
the uniform rule (each factor's gradient halved), the rotary embedding and the score bias as plain
linear maps / constants, layer scale as a product with a constant; CP-LRP detaches A, AttnLRP
halves A and q, k, v. The patch embedding, position embedding and prefix tokens are the model's
own modules (plain gradient: a convolution and additions). Relevance = input x gradient. Nothing
here calls into ``vit_explore`` outside ``vit_explore.testing``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .float64_chefer_lrp import bias64, gamma64, qkv64
from .float64_map import is_map, pool64
from .float64_model import _rotate64, model64, patch_size64
from .float64_naflex import is_naflex


def _half(t: torch.Tensor) -> torch.Tensor:
    """The uniform rule: value ``t``, gradient halved."""
    return 0.5 * t + 0.5 * t.detach()


def _ln(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    """LayerNorm with sigma detached (the identity rule); Identity passes through."""
    if isinstance(mod, nn.Identity):
        return x
    if not isinstance(mod, nn.LayerNorm):
        raise TypeError(f"no float64 AttnLRP restatement of a {type(mod).__name__}")
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + mod.eps).detach()
    y = (x - mu) / sigma
    return y * mod.weight + mod.bias if mod.weight is not None else y


def _act(x: torch.Tensor, f: nn.Module) -> torch.Tensor:
    """The activation's identity rule: value ``f(x)``, gradient ``f(x)/x`` (1/2 at x = 0)."""
    out = f(x)
    ratio = torch.where(x != 0, out / torch.where(x != 0, x, torch.ones_like(x)), torch.full_like(x, 0.5))
    return x * ratio.detach()


def _lin(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


def _embedded(m: nn.Module, xi: torch.Tensor) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """The tokens entering ``norm_pre`` (or the first block), in the graph of ``xi``, each
    attention's keyword arguments (rope, shared bias) and the logits, from a plain run."""
    got: dict = {}
    pre = getattr(m, "norm_pre", None)
    if pre is not None and not isinstance(pre, nn.Identity) and not isinstance(pre, nn.LayerNorm):
        raise ValueError(f"no float64 AttnLRP restatement of norm_pre={type(pre).__name__}")
    pn = getattr(m.embeds if is_naflex(m) else m.patch_embed, "norm", None)
    if pn is not None and not isinstance(pn, nn.Identity):
        raise ValueError(f"no float64 AttnLRP restatement of patch_embed.norm={type(pn).__name__}")
    entry = pre if isinstance(pre, nn.LayerNorm) else m.blocks[0]

    def stop(mod, args):  # the embedding is the model's own; everything after is written out below
        got["tokens"] = args[0]
        raise StopIteration

    h = entry.register_forward_pre_hook(stop)
    try:
        m(xi)
    except StopIteration:
        pass
    finally:
        h.remove()
    kws: dict = {}
    hs = [blk.attn.register_forward_pre_hook(lambda mod, a, kw, i=i: kws.update({i: kw}), with_kwargs=True)
          for i, blk in enumerate(m.blocks)]
    try:
        with torch.no_grad():
            own = m(xi.detach())
    finally:
        for hh in hs:
            hh.remove()
    t = got["tokens"]
    return (_ln(t, pre) if isinstance(pre, nn.LayerNorm) else t), [kws[i] for i in range(len(m.blocks))], own


def attn_lrp_pixels64(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rule: str = "cp") -> torch.Tensor:
    """Pixel relevance (B, H, W) in float64 of ``rule`` ``"cp"`` (CP-LRP) or ``"attnlrp"``:
    ``Σ_c x ⊙ ∂y_t/∂x`` with the modified gradients of the module docstring."""
    if rule not in ("cp", "attnlrp"):
        raise ValueError(f"rule must be 'cp' or 'attnlrp', got {rule!r}")
    m = model64(model)
    for p in m.parameters():
        p.requires_grad_(False)
    ident = nn.Identity()
    with torch.enable_grad():
        xi = x.detach().double().requires_grad_(True)
        t, kws, own = _embedded(m, xi)
        for blk, kw in zip(m.blocks, kws):
            a = blk.attn
            B, N, _ = t.shape
            H = a.num_heads
            W, b = qkv64(a)
            qkv = F.linear(_ln(t, blk.norm1), W, b)
            if rule == "attnlrp":
                qkv = _half(qkv)
            q, k, v = qkv.reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
            q, k = _ln(q, getattr(a, "q_norm", ident)), _ln(k, getattr(a, "k_norm", ident))
            if kw.get("rope") is not None:
                T, half = a.num_prefix_tokens, bool(getattr(a, "rotate_half", False))
                q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], kw["rope"], half)], dim=2)
                k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], kw["rope"], half)], dim=2)
            s = (q * a.scale) @ k.transpose(-1, -2)
            bias = bias64(a, kw, N)
            A = (s if bias is None else s + bias).softmax(-1)
            A = A.detach() if rule == "cp" else _half(A)
            o = _ln((A @ v).transpose(1, 2).reshape(B, N, -1), getattr(a, "norm", ident))
            att = _lin(o, a.proj)
            g1 = gamma64(blk, 1)
            t = t + (att * g1 if g1 is not None else att)
            y2 = _ln(t, blk.norm2)
            mlp = blk.mlp
            if hasattr(mlp, "fc1_g"):
                hdn = _act(_half(_lin(y2, mlp.fc1_g)), mlp.act) * _half(_lin(y2, mlp.fc1_x))
            elif hasattr(mlp, "gate_last"):
                x1, x2 = _half(_lin(y2, mlp.fc1)).chunk(2, dim=-1)
                hdn = x1 * _act(x2, mlp.act) if mlp.gate_last else _act(x1, mlp.act) * x2
            else:
                hdn = _act(_lin(y2, mlp.fc1), mlp.act)
            out = _lin(_ln(hdn, getattr(mlp, "norm", ident)), mlp.fc2)
            g2 = gamma64(blk, 2)
            t = t + (out * g2 if g2 is not None else out)
        t = _ln(t, m.norm)
        T = int(m.num_prefix_tokens)
        fc_norm = getattr(m, "fc_norm", ident)
        if is_map(m):  # the attention pool takes the block rules (docs/methods.md §1.3, §11)
            lo = 0 if getattr(m, "pool_include_prefix", False) else T
            pooled, _, _ = pool64(m.attn_pool, t[:, lo:], ln=_ln, act=_act, kv_rule=(lambda z: z) if rule == "cp" else _half,
                                  attn_rule=(lambda a: a.detach()) if rule == "cp" else _half)
            logits = _lin(_ln(pooled, fc_norm), m.head)
        elif getattr(m, "global_pool", "token") == "avg":
            lo = 0 if getattr(m, "pool_include_prefix", False) else T
            logits = _lin(_ln(t[:, lo:].mean(1), fc_norm), m.head)
        elif getattr(m, "dist_token", None) is not None and hasattr(m, "head_dist"):
            logits = (_lin(t[:, 0], m.head) + _lin(t[:, 1], m.head_dist)) / 2
        else:
            logits = _lin(_ln(t[:, 0], fc_norm), m.head)
        if not torch.allclose(logits.detach(), own, rtol=0, atol=1e-9):
            raise AssertionError("the float64 restatement of the blocks is not the model")  # rules keep the values
        (g,) = torch.autograd.grad(logits.gather(1, torch.as_tensor(target)[:, None]).sum(), xi)
    return (xi * g).sum(1).detach()


def attn_lrp64(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rule: str = "cp") -> torch.Tensor:
    """The map (B, gh, gw): ``attn_lrp_pixels64`` summed within each patch."""
    pix = attn_lrp_pixels64(model, x, target, rule)
    ph, pw = patch_size64(model)
    B, H, W = pix.shape
    return pix[:, : H // ph * ph, : W // pw * pw].reshape(B, H // ph, ph, W // pw, pw).sum(dim=(2, 4))
