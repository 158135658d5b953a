"""What relevance propagation needs from a timm ViT, and call-scoped LRP gradient rules.

Two pieces, both touching ``nn.Module`` internals (hence here, in ``capture/``):

* ``lrp_view(model, info)`` (in ``lrp_view.py``, re-exported here): the weights and module
  names Chefer's LRP (docs/methods.md §4.3) reads.
* ``lrp_rules(model, info, ...)``: a context manager for AttnLRP / CP-LRP (docs/methods.md §11)
  as modified gradients (LRP = gradient x input). It registers per-module forward hooks
  whose returned outputs have exactly the value of the original output but a modified
  gradient; nothing is patched at class level, and hooks, ``fused_attn``, training flags
  and ``requires_grad`` are put back in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention as TimmAttention
from torch import nn

from ..errors import InputError, UnsupportedModelError
from .adapters import ViTInfo
from .attn_pool import PoolTap
from .hf_zero_shot import UnitNorm
from .lrp_view import LRPBlock, LRPView, lrp_view
from .patchify import patchify_grad_hook
from .state import SavedState

__all__ = ["LRPBlock", "LRPView", "lrp_rules", "lrp_view", "same_value", "scale_grad"]

Variant = Literal["cp", "attnlrp"]


# ----------------------------------------------------------------------------- AttnLRP rules
def same_value(out: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``out``'s value, ``surrogate``'s gradient: ``out.detach() + (s - s.detach())``."""
    return out.detach() + (surrogate - surrogate.detach())


def scale_grad(out: torch.Tensor, factor: float) -> torch.Tensor:
    """``out``'s value with the gradient multiplied by ``factor``."""
    return out.detach() + factor * (out - out.detach())


class _LayerNormIdentity(torch.autograd.Function):
    """The LayerNorm's own output ``out``, with the gradient of ``(x - mu) / stopgrad(sigma) * w``
    (the identity rule): ``g_x = u - mean(u)``, ``u = g w / sigma``, over the normalised dims.

    The hooks of this file that use an autograd function pass it ``out`` detached, so the graph
    the module built for its own output (and the tensors saved for it) is freed at once."""

    @staticmethod
    def forward(ctx, x, out, weight, shape, eps):
        rstd = torch.native_layer_norm(x, shape, None, None, eps)[2]  # 1 / sigma, as the module computed it
        ctx.save_for_backward(rstd, weight)
        ctx.dims = tuple(range(-len(shape), 0))
        return out.detach()

    @staticmethod
    def backward(ctx, g):
        inv, w = ctx.saved_tensors
        u = (g if w is None else g * w) * inv
        return u - u.mean(ctx.dims, keepdim=True), None, None, None, None


def _layer_norm_hook(mod: nn.LayerNorm, args, out):
    """Identity rule: ``y = (x - mu) / stopgrad(sigma) * w + b`` (LXT, docs/methods.md §11)."""
    return _LayerNormIdentity.apply(args[0], out.detach(), mod.weight, list(mod.normalized_shape), mod.eps)


def _unit_norm_hook(mod: nn.Module, args, out):
    """Identity rule of an L2 normalisation: ``y = x / stopgrad(||x||)`` (as for LayerNorm's sigma)."""
    x = args[0]
    return same_value(out, x / x.norm(p=2, dim=-1, keepdim=True).detach())


class _RatioGrad(torch.autograd.Function):
    """``out = f(x)`` with the gradient ``f(x)/x`` (the identity rule of an element-wise
    non-linearity; 1/2 where ``x == 0``, GELU's and SiLU's limit). For finite ``x`` and ``out`` the
    quotient is non-finite only where ``x == 0`` (0/0 or ±f(0)/0), so those take the 1/2."""

    @staticmethod
    def forward(ctx, x, out):
        ctx.save_for_backward(torch.nan_to_num_(out / x, nan=0.5, posinf=0.5, neginf=0.5))  # one tensor kept, not two
        return out.detach()

    @staticmethod
    def backward(ctx, g):
        (ratio,) = ctx.saved_tensors
        return g * ratio, None


def _identity_act_hook(mod: nn.Module, args, out):
    """Identity rule for an element-wise non-linearity: gradient ``f(x)/x`` (detached)."""
    return _RatioGrad.apply(args[0], out.detach())


class _ValueRowsGrad(torch.autograd.Function):
    """A ``qkv`` Linear's output whose input gradient is taken from its v third alone, ``g_v W_v``:
    under CP-LRP q and k are detached (``lrp_rules`` on ``_plain_attention``), so the q and k thirds of the gradient
    are zero and their share of ``g W`` need not be computed."""

    @staticmethod
    def forward(ctx, x, out, w_v):
        ctx.save_for_backward(w_v)
        return out.detach()

    @staticmethod
    def backward(ctx, g):
        (w_v,) = ctx.saved_tensors
        return g[..., -w_v.shape[0]:] @ w_v, None, None


def _value_rows_hook(mod: nn.Linear, args, out):
    return _ValueRowsGrad.apply(args[0], out.detach(), mod.weight[-mod.out_features // 3:])


def _stabilize(d: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """zennit's stabiliser: ``d + eps * sign(d)`` with sign(0) = +1."""
    return d + torch.where(d >= 0, eps, -eps)


def _gamma_hook(gamma: float, op):
    """LRP-gamma as zennit's ``Gamma`` rule (the one LXT's ViT recipe uses), in
    gradient x input form: an output ``z_j > 0`` with relevance ``R_j = z_j g_j`` goes to
    inputs in proportion to ``x+ (w + gamma w+)`` and ``x- (w + gamma w-)``, one ``z_j < 0``
    to ``x+ (w + gamma w-)`` and ``x- (w + gamma w+)``; denominators include the likewise
    modified bias on the first term, stabilised by 1e-6.
    """

    def hook(mod, args, out):
        x = args[0]
        w = mod.weight
        b = mod.bias
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        w_pos, w_neg = w + gamma * wp, w + gamma * wn
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        bp = None if b is None else b + gamma * b.clamp(min=0)
        bn = None if b is None else b + gamma * b.clamp(max=0)
        with torch.no_grad():
            den_pos = op(xp, w_pos, bp) + op(xn, w_neg, None)
            den_neg = op(xp, w_neg, bn) + op(xn, w_pos, None)
            z = out.detach()
            c_pos = z * (z > 0) / _stabilize(den_pos)
            c_neg = z * (z < 0) / _stabilize(den_neg)
        s = (op(xp, w_pos, None) + op(xn, w_neg, None)) * c_pos + (op(xp, w_neg, None) + op(xn, w_pos, None)) * c_neg
        return same_value(out, s)

    return hook


def _conv_op(mod: nn.Conv2d):
    def op(x, w, b):
        return F.conv2d(x, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)

    return op


def _detach_hook(mod, args, out):
    return out.detach()


def _half_grad_hook(mod, args, out):
    return scale_grad(out, 0.5)


def _half_grad_pre_hook(mod, args):
    return (scale_grad(args[0], 0.5), *args[1:])


def _gate_factors(mlp: nn.Module) -> list[nn.Module]:
    """Modules whose outputs are the two factors of a gated MLP's product (SwiGLU: ``fc1_g``,
    ``fc1_x``; GluMlp: ``fc1``, whose output holds both halves); [] for timm's plain Mlp."""
    if isinstance(getattr(mlp, "fc1_g", None), nn.Module) and isinstance(getattr(mlp, "fc1_x", None), nn.Module):
        return [mlp.fc1_g, mlp.fc1_x]
    if hasattr(mlp, "chunk_dim") and hasattr(mlp, "gate_last"):
        return [mlp.fc1]
    return []


def _plain_attention(attn: nn.Module) -> bool:
    """timm's ``Attention`` with its own forward: ``qkv`` (a Linear) -> q, k, v; ``q_norm(q)``,
    ``k_norm(k)`` (modules, called once each) -> softmax(q kᵀ) v, nothing else reading q or k."""
    return (type(attn).forward is TimmAttention.forward and isinstance(getattr(attn, "qkv", None), nn.Linear)
            and isinstance(attn.q_norm, nn.Module) and isinstance(attn.k_norm, nn.Module))


def _adapters(info: ViTInfo):
    from .adapters import adapter_for

    return info.adapters or tuple(adapter_for(a) for a in info.attns)


def _check_norms(model: nn.Module) -> None:
    """Every normalisation layer must be an ``nn.LayerNorm`` (the identity rule is written for it)."""
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if "Norm" in kind and not isinstance(mod, (nn.LayerNorm, nn.Identity, UnitNorm)):
            raise UnsupportedModelError(
                f"{name} is a {kind}; attn_lrp's identity rule is written for LayerNorm only, so the relevance "
                "would not be AttnLRP's. Use chefer_generic or saliency instead."
            )


def _pool_rules(pool: nn.Module, variant: Variant, handles: list, taps: list) -> None:
    """The attention-pool (MAP) head's rules, as a block's: its MLP activation takes the identity
    rule; its attention (no ``attn_drop``: the rule acts on its softmax's output) is detached
    (``"cp"``) or halved together with the ``kv`` output (``"attnlrp"``: k's gradient / 4, v's / 2;
    q comes from the latent parameter alone)."""
    act = getattr(getattr(pool, "mlp", None), "act", None)
    if act is not None:
        handles.append(act.register_forward_hook(_identity_act_hook))
    pool.fused_attn = False
    taps.append(PoolTap(pool, grad_factor=0.0 if variant == "cp" else 0.5))
    if variant != "cp":
        handles.append(pool.kv.register_forward_hook(_half_grad_hook))


@contextmanager
def lrp_rules(
    model: nn.Module,
    info: ViTInfo,
    *,
    variant: Variant = "cp",
    gamma_linear: float = 0.0,
    gamma_conv: float = 0.0,
    enabled: bool = True,
) -> Iterator[nn.Module]:
    """Make ``input x gradient`` of ``model`` compute AttnLRP / CP-LRP, for this block only.

    Rules (docs/methods.md §11): LayerNorm (every ``nn.LayerNorm``; any other norm layer raises)
    -> identity rule (stop-grad through sigma), and the same for the L2 normalisation of a zero-shot
    head (``hf_zero_shot.UnitNorm``: stop-grad through the norm); ``blocks.*.mlp.act`` -> identity rule
    (gradient ``f(x)/x``); gated MLPs (SwiGLU ``act(fc1_g) * fc1_x``, GluMlp) -> uniform rule
    for the product (the gradient at both factors halved); layer scale, rotary embeddings
    and additive score biases are linear maps / constants: plain gradient; attention:
    ``"cp"`` detaches the probabilities ``A`` (relevance only through ``v``), ``"attnlrp"``
    halves the gradient at ``A`` and at the ``qkv`` output, or at ``proj``'s input where the
    family does not call its ``qkv`` module (q, k gradients / 4, v / 2: the uniform rule
    through both matmuls); an attention-pool (MAP) head the same (``_pool_rules``); ``gamma_linear`` / ``gamma_conv`` > 0 put the
    LRP-gamma rule on every ``nn.Linear`` / ``nn.Conv2d`` (0: epsilon = plain gradient x input).
    Attention runs on timm's unfused path for the call; CP-LRP on timm's plain ``Attention``
    detaches q and k at ``q_norm`` / ``k_norm`` (as LXT does for torchvision's ViT), elsewhere the
    rule acts on the probabilities at ``attn_drop``. With ``enabled=False`` nothing is
    hooked (plain gradient x input), but the model is still put in eval mode with frozen
    parameters for the call.

    Yields the model, in eval mode, parameters frozen; all of it is undone on exit.
    """
    if variant not in ("cp", "attnlrp"):
        raise InputError(f"variant must be 'cp' (CP-LRP, for ViTs) or 'attnlrp', got {variant!r}")
    for name, g in (("gamma_linear", gamma_linear), ("gamma_conv", gamma_conv)):
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0:
            raise InputError(f"{name} must be a number >= 0 (0 = epsilon rule), got {g!r}")
    handles: list[torch.utils.hooks.RemovableHandle] = []
    pool = info.pool
    taps: list[PoolTap] = []
    state = SavedState(model, (*info.attns, *([pool] if pool is not None else [])))
    try:
        state.freeze()
        if enabled:
            if info.below:
                raise UnsupportedModelError(
                    f"attn_lrp has no rule for every layer: {info.below}. Use raw_attention or attn_grad_cam on a "
                    "class-attention block, or saliency / integrated_gradients"
                )
            _check_norms(model)
            for name, mod in model.named_modules():
                if isinstance(mod, nn.LayerNorm):
                    handles.append(mod.register_forward_hook(_layer_norm_hook))
                elif isinstance(mod, UnitNorm):  # CLIP's L2 normalisation (hf_zero_shot.py): the same rule
                    handles.append(mod.register_forward_hook(_unit_norm_hook))
                elif isinstance(mod, nn.Linear) and gamma_linear > 0:
                    handles.append(mod.register_forward_hook(_gamma_hook(float(gamma_linear), F.linear)))
                elif isinstance(mod, nn.Conv2d) and gamma_conv > 0:
                    handles.append(mod.register_forward_hook(_gamma_hook(float(gamma_conv), _conv_op(mod))))
            for i, blk in enumerate((*model.blocks, *info.extra_blocks)):  # type: ignore[misc]  # class-attention blocks too (CaiT)
                mlp = getattr(blk, "mlp", None)
                act = getattr(mlp, "act", None)
                if act is None:
                    raise UnsupportedModelError(
                        f"blocks.{i}.mlp is a {type(mlp).__name__} without .act; attn_lrp supports timm's Mlp, "
                        "GluMlp and SwiGLU. Use chefer_generic or saliency instead."
                    )
                handles.append(act.register_forward_hook(_identity_act_hook))
                # gated MLPs: act(g) * u takes the uniform rule (each factor half the relevance);
                # registered after any gamma hook, so it scales the gamma-ruled gradient
                for factor in _gate_factors(mlp):
                    handles.append(factor.register_forward_hook(_half_grad_hook))
            for i, (attn, adapter) in enumerate(zip(info.attns, _adapters(info))):
                if adapter.gated(attn):
                    raise UnsupportedModelError(
                        f"blocks.{i}.attn multiplies its output by a sigmoid gate (attn.gate); attn_lrp has no "
                        "rule for that product here. Use chefer_generic, attn_grad_cam or saliency instead."
                    )
                attn.fused_attn = False  # unfused even with q, k detached: the fused backward computes their gradients anyway
                if variant == "cp" and _plain_attention(attn):
                    # q and k detached where the module normalises them: the probabilities are constants
                    # (nothing of softmax's backward is recorded) and v alone carries the gradient, so
                    # qkv's input gradient needs only its v rows
                    handles += [attn.q_norm.register_forward_hook(_detach_hook),
                                attn.k_norm.register_forward_hook(_detach_hook)]
                    if gamma_linear == 0:
                        handles.append(attn.qkv.register_forward_hook(_value_rows_hook))
                elif variant == "cp":
                    handles.append(attn.attn_drop.register_forward_hook(_detach_hook))
                else:
                    handles.append(attn.attn_drop.register_forward_hook(_half_grad_hook))
                    if adapter.qkv_called(attn):
                        # registered after any gamma hook on qkv, so it scales the gamma-ruled gradient
                        handles.append(attn.qkv.register_forward_hook(_half_grad_hook))
                    else:
                        # qkv is not a called module (EVA/BEiT's F.linear, separate q/k/v projections):
                        # halving the gradient at proj's input halves v's and, with the halving at A,
                        # quarters q's and k's (every map in between is linear: attn.norm takes the
                        # LayerNorm rule, the rotary embedding and score biases are linear / constant)
                        handles.append(attn.proj.register_forward_pre_hook(_half_grad_pre_hook))
            if pool is not None:
                if gamma_linear > 0 and getattr(pool, "gamma_refusal", None):  # hf_pool.HFPool
                    raise UnsupportedModelError(pool.gamma_refusal)
                _pool_rules(pool, variant, handles, taps)
        if not (enabled and gamma_conv > 0) and (h := patchify_grad_hook(model)) is not None:
            handles.append(h)  # epsilon on the patch embedding: its input gradient as one matmul
        yield model
    finally:
        for t in taps:
            t.remove()
        for h in handles:
            h.remove()
        state.restore()
