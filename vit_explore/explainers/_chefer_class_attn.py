"""Chefer LRP (CVPR 2021; docs/methods.md §4.3) through CaiT's class-attention blocks
(``LayerScaleBlockClassAttn`` over ``ClassAttn``), with the reference's rules.

A class block updates the class token only: ``u = [x_cls, x]``, ``y = norm1(u)``,
``x_mid = x_cls + γ1·proj(A v)`` with ``A = softmax((q(y_0)·scale) k(y)ᵀ)`` (B, H, 1, N), then
``x_out = x_mid + γ2·mlp(norm2(x_mid))``; the patch tokens ``x`` pass unchanged into every
class block and into the final ``cat``.
"""

from __future__ import annotations

import torch

from ..capture.lrp_view import LRPClassBlock
from ..capture.session import Trace
from ._lrp_rules import _xw, add_rule, clone_rule, linear_rule, scale_rule, sdiv


def class_block_relevance(
    trace: Trace, blk: LRPClassBlock, r_cls: torch.Tensor, attn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relevance through one class block from the relevance ``r_cls`` (B, 1, C) of its output.

    The rules of the blocks (§4.3): Add and LayerScale, the MLP's Linear rules, Clone at ``x_mid``;
    ``proj`` (Linear); ``A v`` (halved; ``R_A`` is the block's cam); the unscaled ``q kᵀ`` (halved);
    the three Linears ``q`` (on ``y_0``, an IndexSelect), ``k`` and ``v`` reading ``y`` merged by the
    Clone rule; ``norm1`` identity; the ``cat`` (the reference's Cat rule, ``u ⊙ sdiv(R, u)``) splits
    ``u``'s relevance into the class token's (merged with the residual's by Clone) and the patches'.

    Args:
        attn: the block's attention row (B, H, 1, N) (row 0 of the trace's layout).

    Returns:
        (relevance (B, 1, C) of the class token entering the block, relevance (B, P, C) the block
        gives the patch tokens, the halved attention relevance R_A (B, H, 1, N)).
    """
    p, acts, ins, bs = blk.prefix, trace.activations, trace.inputs, blk.biases
    u = ins[f"{p}.norm1"]  # cat(x_cls, x), (B, N, C)
    x_cls = u[:, :1]
    x_mid, mlp_out, attn_out = ins[f"{p}.norm2"], acts[f"{p}.mlp"], acts[f"{p}.attn"]
    r_res, r_mlp = add_rule(x_mid, mlp_out * blk.gamma2, r_cls)
    r_mlp = scale_rule(mlp_out, r_mlp, blk.gamma2)
    r_mlp = linear_rule(ins[f"{p}.mlp.fc2"], r_mlp, blk.fc2, _xw(mlp_out, bs["fc2"]))  # GELU: identity
    r_mlp = linear_rule(ins[f"{p}.mlp.fc1"], r_mlp, blk.fc1, _xw(acts[f"{p}.mlp.fc1"], bs["fc1"]))  # norm2: identity
    r_mid = clone_rule(x_mid, r_res, r_mlp)
    r_res, r_att = add_rule(x_cls, attn_out * blk.gamma1, r_mid)
    r_att = scale_rule(attn_out, r_att, blk.gamma1)
    r_att = linear_rule(ins[f"{p}.attn.proj"], r_att, blk.proj, _xw(attn_out, bs["proj"]))
    B, H, _, N = attn.shape
    C = r_att.shape[-1]
    heads = lambda t, n: t.reshape(B, n, H, -1).transpose(1, 2)
    merged = lambda t: t.transpose(1, 2).reshape(B, -1, C)
    q_out, k_out, v_out = acts[f"{p}.attn.q"], acts[f"{p}.attn.k"], acts[f"{p}.attn.v"]
    q, k, v = heads(q_out, 1), heads(k_out, N), heads(v_out, N)
    s = sdiv(heads(r_att, 1), attn @ v).mul_(0.5)
    r_a = attn * (s @ v.transpose(-1, -2))
    r_v = v * (attn.transpose(-1, -2) @ s)
    s = sdiv(r_a, q @ k.transpose(-1, -2))  # softmax, attn_drop: identity; the unscaled q kᵀ
    r_q = q * (s @ k) / 2
    r_k = k * (s.transpose(-1, -2) @ q) / 2
    y = ins[f"{p}.attn"]  # norm1(u)
    r_yq = torch.zeros_like(y)
    y0 = y[:, :1]
    r_yq[:, :1] = y0 * sdiv(linear_rule(y0, merged(r_q), blk.q, _xw(q_out, bs["q"])[:, None]), y0)  # IndexSelect
    r_yk = linear_rule(y, merged(r_k), blk.k, _xw(k_out, bs["k"]))
    r_yv = linear_rule(y, merged(r_v), blk.v, _xw(v_out, bs["v"]))
    r_u = y * (sdiv(r_yq, y) + sdiv(r_yk, y) + sdiv(r_yv, y))  # Clone of y into q, k, v; norm1: identity
    r_u = u * sdiv(r_u, u)  # the reference's Cat rule
    return clone_rule(x_cls, r_res, r_u[:, :1]), r_u[:, 1:], r_a
