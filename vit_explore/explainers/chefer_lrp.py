"""Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization", CVPR 2021
(arXiv:2012.09838; docs/methods.md §4): LRP relevance of every attention map, weighted by its
gradient, rolled out ("transformer_attribution").

The relevance pass is ours, over timm's modules, driven by the inputs and outputs of every
layer recorded in one captured pass (no copy of the model with ``relprop`` methods). The
rules are those of the reference's ``modules/layers_ours.py`` (§4.3), as closed forms
instead of one autograd call per layer, batched (the reference only does batch 1):

* Linear, alpha=1/beta=0, bias ignored, common denominator:
  ``S = sdiv(R, x+ W+^T + x- W-^T)``, ``R_x = x+ (S W+) + x- (S W-)``, computed as
  ``(x W^T + |x| |W|^T) / 2`` (``x W^T`` from the recorded layer output inside the blocks) and
  ``(x (S W) + |x| (S |W|)) / 2`` (three matmuls per layer instead of the reference's eight).
* Bilinear einsums (``A v`` and the unscaled ``q k^T``), the "simple" rule:
  ``S = sdiv(R, Z)``, ``R_A = A (S v^T)``, ``R_v = v (A^T S)``, each halved.
* Residual Add: ``a = x0 sdiv(R, Z)``, ``b = x1 sdiv(R, Z)``, rescaled so the branches share
  ``sum R`` in proportion to ``|sum a| : |sum b|``; the sums run over the whole tensor of
  one image (the reference's batch of 1).
* Clone: ``R_x = x (sdiv(R1, x) + sdiv(R2, x))``; LayerNorm, GELU, softmax, dropout: identity.
* Head: Linear rule on the one-hot target, then the CLS token (IndexSelect rule
  ``R_x0 = x0 sdiv(R, x0)``).

Beyond the reference (it only has CLS ViTs), documented choices:

* distilled (DeiT): ``logits = (head(x_0) + head_dist(x_1)) / 2``; the constant 1/2 is
  transparent, the sum takes the Add rule (so the two heads share the target's relevance
  in proportion to ``|head_t| : |head_dist_t|``), then each head's Linear rule and the
  IndexSelect rule put it on token 0 and token 1.
* global average pool: the mean over the pooled tokens takes the reference's rule for
  average pools (the "simple" rule): ``R_x[n] = x[n] sdiv(R, mean) / P``; ``fc_norm`` is
  an identity like every LayerNorm. The map is the read-out row of ``J - I`` (see
  ``transformer_attribution``): the identity's own ``1/P`` per patch is left out.
* register tokens: nothing special (they are tokens; the map reads patch columns only).
* LayerScale ``y = gamma * x``: the Linear alpha=1/beta=0 rule with the diagonal weight
  ``diag(gamma)``: ``R_x = R (x gamma)^+ / ((x gamma)^+ + 1e-9)``, i.e. relevance passes where
  ``x gamma > 0`` and is dropped where the contribution is negative.
* ``q_norm`` / ``k_norm`` / the attention's ``norm`` (LayerNorms or identities): identity.
* read-outs and attention families the reference has not (docs/methods.md §4.3, §4.4): the MAP
  head (``_pool_relevance``; the map ``w J`` with ``w`` the pool's own cam row), CaiT's talking heads
  and class-attention blocks (``_chefer_class_attn.py``), ConViT's GPSA (Add rule between the gated
  content and positional softmaxes) with the class token joining by a ``cat`` (Cat rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..capture.adapters import ViTInfo
from ..capture.rules import LRPBlock, LRPView, lrp_view
from ..capture.session import Trace, capture
from ..targets import TargetLike, needs_class
from ._chefer_class_attn import class_block_relevance
from ._fusion import check_start_layer
from ._lrp_rules import _xw, add_rule, clone_rule, linear_rule, positive_head_mean, scale_rule, sdiv, weight_buffers
from ._registry import ExplainerResult, register_explainer


def _pool_relevance(trace: Trace, view: LRPView, r_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MAP head (``AttentionPoolLatent``) by the block rules, from the relevance ``r_pooled`` (B, C)
    of its output: the first latent's IndexSelect rule (or the latent mean's simple rule), the Add
    rule of ``y = z + mlp(norm(z))`` with the MLP's Linear rules and the Clone at ``z``, ``proj``'s
    Linear rule, the ``A v`` and ``q kᵀ`` products (each share halved; the latent's query share
    stays with the latent, a parameter), ``kv``'s Linear rule. Returns (relevance (B, N, C) of the
    final tokens, the pool's read-out row ``Σ_q w_q E_h[(∇A_pool ⊙ R_A_pool)^+]`` (B, N))."""
    pool, pp = view.pool, "attn_pool"
    assert pool is not None and trace.pool_attn is not None and trace.pool_attn_grad is not None
    acts, ins, bs = trace.activations, trace.inputs, pool.biases
    z, mlp_out = acts[f"{pp}.proj"], acts[f"{pp}.mlp"]  # proj_drop: identity
    y = z + mlp_out
    r_y = torch.zeros_like(y)
    if pool.avg:
        r_y = y * (sdiv(r_pooled, y.mean(dim=1)) / y.shape[1])[:, None]
    else:
        r_y[:, 0] = y[:, 0] * sdiv(r_pooled, y[:, 0])
    r_res, r_mlp = add_rule(z, mlp_out, r_y)
    r_mlp = linear_rule(ins[f"{pp}.mlp.fc2"], r_mlp, pool.fc2, _xw(mlp_out, bs["fc2"]))  # GELU: identity
    r_mlp = linear_rule(ins[f"{pp}.mlp.fc1"], r_mlp, pool.fc1, _xw(acts[f"{pp}.mlp.fc1"], bs["fc1"]))  # norm: identity
    r_z = clone_rule(z, r_res, r_mlp)
    r_o = linear_rule(ins[f"{pp}.proj"], r_z, pool.proj, _xw(z, bs["proj"]))
    attn = trace.pool_attn  # (B, H, Q, K)
    B, H, Q, K = attn.shape
    x, kv_out = ins[f"{pp}.kv"], acts[f"{pp}.kv"]
    _, v = kv_out.reshape(B, K, 2, H, -1).permute(2, 0, 3, 1, 4)
    r_o = r_o.reshape(B, Q, H, -1).transpose(1, 2)
    s = sdiv(r_o, attn @ v).mul_(0.5)
    r_a = attn * (s @ v.transpose(-1, -2))
    r_v = v * (attn.transpose(-1, -2) @ s)
    q, k = acts[f"{pp}.q_norm"], acts[f"{pp}.k_norm"]  # q_norm, k_norm, softmax: identity
    s = sdiv(r_a, q @ k.transpose(-1, -2))  # the unscaled q kᵀ
    r_k = k * (s.transpose(-1, -2) @ q) / 2
    r_kv = torch.stack([r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(B, K, -1)
    r_x = linear_rule(x, r_kv, pool.kv, _xw(kv_out, bs["kv"]))
    a_bar = positive_head_mean(trace.pool_attn_grad, r_a)  # (B, Q, K)
    lw = torch.full((Q,), 1.0 / Q, dtype=a_bar.dtype, device=a_bar.device)
    if not pool.avg:
        lw = torch.zeros_like(lw)
        lw[0] = 1.0
    row = torch.einsum("bqk,q->bk", a_bar, lw)
    T = view.num_prefix if pool.prefix_skipped else 0
    r_tok, w = r_x.new_zeros(B, T + K, r_x.shape[-1]), row.new_zeros(B, T + K)
    r_tok[:, T:], w[:, T:] = r_x, row
    return r_tok, w


def _head_relevance(trace: Trace, view: LRPView) -> torch.Tensor:
    """Relevance (B, N, C) of the final tokens (output of ``norm``) from the one-hot target."""
    tokens = trace.activations["norm"]
    logits = trace.activations["head"]
    onehot = F.one_hot(trace.target, logits.shape[-1]).to(tokens.dtype)
    r_tok = torch.zeros_like(tokens)
    if view.readout in ("cls", "cls_dist"):
        heads = [("head", view.head, 0)]
        r_out = [onehot]
        if view.head_dist is not None:
            heads.append(("head_dist", view.head_dist, 1))
            r_out = list(add_rule(trace.activations["head"], trace.activations["head_dist"], onehot))
        for (name, w, tok), r in zip(heads, r_out):
            r_in = linear_rule(trace.inputs[name], r, w)  # (B, C); fc_norm/head_drop: identity
            x0 = tokens[:, tok]
            r_tok[:, tok] = x0 * sdiv(r_in, x0)  # IndexSelect
        return r_tok
    r_pooled = linear_rule(trace.inputs["head"], onehot, view.head)  # fc_norm: identity
    lo = view.num_prefix if view.readout == "avg" else 0
    pooled = tokens[:, lo:]
    s = sdiv(r_pooled, pooled.mean(dim=1)) / pooled.shape[1]
    r_tok[:, lo:] = pooled * s[:, None, :]
    return r_tok


def _token_rows(r: torch.Tensor) -> torch.Tensor | None:
    """Token rows (n,) where the relevance ``r`` (B, N, C) is non-zero in some image, or None
    when that is most of them. Above the top block only the read-out tokens carry relevance
    (the CLS token, or the two distilled ones), and every rule up to the attention matmuls is
    token-wise (zero relevance in, zero out; the Add rule's sums ignore zeros), so the top
    block's MLP and projection run on those rows alone: the same numbers, a fraction of the cost."""
    rows = torch.nonzero(r.ne(0).any(dim=2).any(dim=0)).reshape(-1)
    return rows if len(rows) * 2 <= r.shape[1] else None


def rotary_rule(x: torch.Tensor, r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Alpha=1/beta=0 rule of the rotary embedding, a linear map per token: ``y[p] = x[p] @ M[p]``.

    x, r: (B, H, P, D); m: (..., P, D, D) (``Trace.rope``). The Linear rule with each token's own
    weight ``M[p]ᵀ``: ``S = sdiv(R, x+ M+ + x- M-)``, ``R_x = x+ (S M+ᵀ) + x- (S M-ᵀ)``.
    """
    mp, mn = m.clamp(min=0), m.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)

    def apply(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (t.unsqueeze(-2) @ w).squeeze(-2)

    s = sdiv(r, apply(xp, mp) + apply(xn, mn))
    return xp * apply(s, mp.transpose(-1, -2)) + xn * apply(s, mn.transpose(-1, -2))


def product_rule(g: torch.Tensor, u: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's rule for a product of two tensors (its einsum "simple" rule, each share
    halved, as it does for ``A v`` and ``q kᵀ``), here element-wise ``h = g ⊙ u``:
    ``S = sdiv(R, h)``, ``R_g = g (S u) / 2``, ``R_u = u (S g) / 2``."""
    s = sdiv(r, g * u)
    return g * (s * u) / 2, u * (s * g) / 2


def _mlp_relevance(trace: Trace, blk: LRPBlock, r: torch.Tensor, tok) -> torch.Tensor:
    """Relevance at the MLP's input from the relevance ``r`` at fc2's input (``mlp.norm`` and
    the activation take the identity rule; a gated MLP's product takes ``product_rule``)."""
    p, acts, ins, bs = blk.prefix, trace.activations, trace.inputs, blk.biases
    if blk.mlp_kind == "mlp":  # GELU: identity
        return linear_rule(tok(ins[f"{p}.mlp.fc1"]), r, blk.fc1, _xw(tok(acts[f"{p}.mlp.fc1"]), bs["fc1"]))
    g = tok(acts[f"{p}.mlp.act"])  # act(gate)
    if blk.mlp_kind == "swiglu":  # act(fc1_g(x)) * fc1_x(x), x used twice: Clone
        r_g, r_u = product_rule(g, tok(acts[f"{p}.mlp.fc1_x"]), r)
        x = tok(ins[f"{p}.mlp.fc1_g"])
        r1 = linear_rule(x, r_g, blk.fc1, _xw(tok(acts[f"{p}.mlp.fc1_g"]), bs["fc1"]))
        r2 = linear_rule(x, r_u, blk.fc1_x, _xw(tok(acts[f"{p}.mlp.fc1_x"]), bs["fc1_x"]))
        return clone_rule(x, r1, r2)
    h1 = tok(acts[f"{p}.mlp.fc1"])  # GluMlp: fc1's output holds both halves
    x1, x2 = h1.chunk(2, dim=-1)
    if blk.gate_last:  # x1 * act(x2)
        r_g, r_u = product_rule(g, x1, r)
        r_fc1 = torch.cat([r_u, r_g], dim=-1)
    else:  # act(x1) * x2
        r_g, r_u = product_rule(g, x2, r)
        r_fc1 = torch.cat([r_g, r_u], dim=-1)
    return linear_rule(tok(ins[f"{p}.mlp.fc1"]), r_fc1, blk.fc1, _xw(h1, bs["fc1"]))


def _rotate(x: torch.Tensor, m: torch.Tensor | None, skip: int) -> torch.Tensor:
    """q or k (B, H, N, D) rotated by ``Trace.rope`` on the tokens after the first ``skip``."""
    if m is None:
        return x
    return torch.cat([x[:, :, :skip], (x[:, :, skip:].unsqueeze(-2) @ m).squeeze(-2)], dim=2)


def _block_relevance(
    trace: Trace, blk: LRPBlock, r: torch.Tensor, attn: torch.Tensor, last: bool, layer: int | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Relevance through one block ``layer`` (None: read from ``blk.prefix``): returns (relevance
    of the block input or None if ``last``, the halved attention relevance R_A (B, H, N, N))."""
    p = blk.prefix
    layer = int(p.rsplit(".", 1)[-1]) if layer is None else layer
    acts, ins = trace.activations, trace.inputs
    rows, n_tok = _token_rows(r), r.shape[1]

    def tok(t: torch.Tensor) -> torch.Tensor:  # the rows that carry relevance
        return t if rows is None else t[:, rows]

    def full(t: torch.Tensor) -> torch.Tensor:  # back to every token, zeros elsewhere
        if rows is None:
            return t
        out = t.new_zeros(t.shape[0], n_tok, t.shape[2])
        out[:, rows] = t
        return out

    def scaled(t: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:  # layer scale, as the block applies it
        return t if g is None else t * g

    x_in, x_mid = tok(ins[p]), tok(ins[f"{p}.norm2"])
    bs = blk.biases
    # x_out = x_mid + ls2(mlp(norm2(x_mid)))
    mlp_out = tok(acts[f"{p}.mlp"])
    r_res, r_mlp = add_rule(x_mid, scaled(mlp_out, blk.ls2), tok(r))
    r_mlp = scale_rule(mlp_out, r_mlp, blk.ls2)
    r_mlp = linear_rule(tok(ins[f"{p}.mlp.fc2"]), r_mlp, blk.fc2, _xw(mlp_out, bs["fc2"]))
    r_mlp = _mlp_relevance(trace, blk, r_mlp, tok)  # norm2: identity
    r_mid = clone_rule(x_mid, r_res, r_mlp)
    # x_mid = x_in + ls1(attn(norm1(x_in)))
    attn_out = tok(acts[f"{p}.attn"])
    r_res, r_att = add_rule(x_in, scaled(attn_out, blk.ls1), r_mid)
    r_att = scale_rule(attn_out, r_att, blk.ls1)
    r_att = linear_rule(tok(ins[f"{p}.attn.proj"]), r_att, blk.proj, _xw(attn_out, bs["proj"]))
    r_att = full(r_att)  # attn.norm: identity
    B, N, _ = r_att.shape
    h = blk.num_heads
    x_attn = ins[f"{p}.attn"]
    if blk.qkv_called:
        qkv_out = acts[f"{p}.attn.qkv"]
        qkv_xw = _xw(qkv_out, bs["qkv"])
    else:  # the module's own F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))
        qkv_xw = F.linear(x_attn, blk.qkv)
        qkv_out = qkv_xw if bs["qkv"] is None else qkv_xw + bs["qkv"]
    q0, k0, v = qkv_out.reshape(B, N, 3, h, -1).permute(2, 0, 3, 1, 4)
    r_att = r_att.reshape(B, N, h, -1).transpose(1, 2)  # b n (h d) -> b h n d
    s = sdiv(r_att, attn @ v).mul_(0.5)  # the halving on (N, d), not on (N, N): exact (a power of 2)
    r_a = attn * (s @ v.transpose(-1, -2))
    if last:
        return None, r_a
    r_v = v * (attn.transpose(-1, -2) @ s)
    if blk.qk_norm_modules:  # q_norm / k_norm: identity; softmax, attn_drop: identity
        q0, k0 = acts[f"{p}.attn.q_norm"], acts[f"{p}.attn.k_norm"]
    m = trace.rope[layer] if blk.rope and trace.rope is not None else None
    q, k = _rotate(q0, m, blk.rope_prefix), _rotate(k0, m, blk.rope_prefix)
    z = q @ k.transpose(-1, -2)  # the unscaled q k^T, as the reference's einsum
    r_z = r_a
    if blk.gate is not None:  # ConViT GPSA: A = ((1-σ(g)) P_c + σ(g) P_p) / rowsum, the row sums 1: identity
        sg = torch.sigmoid(blk.gate)[None, :, None, None]
        p_c = (z * blk.scale).softmax(-1)  # the content softmax, as the module computes it
        p_p = acts[f"{p}.attn.pos_proj"].permute(0, 3, 1, 2).softmax(-1)
        r_z, _ = add_rule((1 - sg) * p_c, sg * p_p, r_a)  # the positional share stays with pos_proj; softmax: identity
    if blk.talking is not None:  # CaiT: A = proj_w(softmax(proj_l(scores))), Linears over the head axis
        w_l, w_w = blk.talking
        r_p = linear_rule(ins[f"{p}.attn.proj_w"], r_a.permute(0, 2, 3, 1), w_w)  # softmax: identity
        r_z = linear_rule(ins[f"{p}.attn.proj_l"], r_p, w_l).permute(0, 3, 1, 2)
    if blk.score_bias:  # scores = z * scale + B: the Add rule, B's share is absorbed
        zs = z * blk.scale
        r_z, _ = add_rule(zs, trace.scores_at(layer) - zs, r_a)
    s = sdiv(r_z, z)
    r_q = q * (s @ k) / 2
    r_k = k * (s.transpose(-1, -2) @ q) / 2
    if m is not None:  # back through the rotation of the patch tokens (the prefix is not rotated)
        T = blk.rope_prefix
        r_q = torch.cat([r_q[:, :, :T], rotary_rule(q0[:, :, T:], r_q[:, :, T:], m)], dim=2)
        r_k = torch.cat([r_k[:, :, :T], rotary_rule(k0[:, :, T:], r_k[:, :, T:], m)], dim=2)
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(B, N, -1)
    r_att = linear_rule(x_attn, r_qkv, blk.qkv, qkv_xw)  # q_norm / k_norm, norm1: identity
    return clone_rule(ins[p], full(r_res), r_att), r_a


def transformer_attribution(trace: Trace, view: LRPView, start_layer: int = 0) -> torch.Tensor:
    """Chefer's map from a captured trace (§4.4).

    Per block ``l >= start_layer``: ``Ā_l = E_h[(∇A_l ⊙ R_A_l)^+]`` (clamp per head, then the
    head mean; ``R_A`` is the halved relevance of the attention probabilities). Rollout
    with the identity and no row normalisation, ``J = (Ā_{L-1}+I) ... (Ā_start+I)``; the map
    is the read-out row ``w`` of ``J - I`` over the patch columns, computed as a vector product
    from the read-out row down, ``d ← d + (w + d) Ā``. For a class token that is the reference's
    ``J[:, 0, 1:]`` (``w I`` has no patch column); for a mean pool it leaves out the constant
    ``1/P`` that ``w I`` would add to every patch and that swamps ``Ā`` (docs/methods.md §4.4).

    Args:
        trace: captured with ``view.needs(start_layer)``.
        view: ``lrp_view(model, info)``.
        start_layer: first block of the rollout (0: the reference's default; 1: Chefer's evaluation).

    Returns:
        (B, gh, gw), raw.
    """
    with weight_buffers():
        return _transformer_attribution(trace, view, start_layer)


def _transformer_attribution(trace: Trace, view: LRPView, start_layer: int) -> torch.Tensor:
    L = len(view.blocks)
    layout = trace.layout
    w, d = None, None
    if view.class_blocks:
        return _class_attention_attribution(trace, view, start_layer)
    if view.pool is not None:  # MAP: w is the pool's own relevance-weighted row, which the map includes (§4.4)
        logits = trace.activations["head"]
        onehot = F.one_hot(trace.target, logits.shape[-1]).to(logits.dtype)
        r, w = _pool_relevance(trace, view, linear_rule(trace.inputs["head"], onehot, view.head))
        d = torch.zeros_like(w)
    else:
        r = _head_relevance(trace, view)
    late, T = view.late_prefix, view.num_prefix
    for i in range(L - 1, start_layer - 1, -1):
        a = trace.attn_at(i)
        if late is not None and i < late:  # ConViT: a block before the class token joins, over the patches
            r_next, r_p = _block_relevance(trace, view.blocks[i], r, a[:, :, T:, T:], last=i == start_layer, layer=i)
            r_a = torch.zeros_like(a)
            r_a[:, :, T:, T:] = r_p
        else:
            r_next, r_a = _block_relevance(trace, view.blocks[i], r, a, last=i == start_layer, layer=i)
        if r_next is not None and i == late:  # u = cat(cls_token, x): the reference's Cat rule
            u = trace.inputs[view.blocks[i].prefix]
            r_next = (u * sdiv(r_next, u))[:, T:]
        if r_next is not None:
            r = r_next
        a_bar = positive_head_mean(trace.attn_grad_at(i), r_a)  # (B, N, N)
        if w is None or d is None:
            w = layout.readout_weights(a_bar.dtype, a_bar.device).expand(a_bar.shape[0], -1)
            d = torch.zeros_like(w)
        d = d + ((w + d)[:, None, :] @ a_bar)[:, 0]  # w (J - I), the read-out's own identity term left out
    if view.pool is not None:
        assert w is not None and d is not None
        d = d + w  # the pool is a layer without a residual: its row is part of the map, w J
    return layout.patch_columns(d)


def _class_attention_attribution(trace: Trace, view: LRPView, start_layer: int) -> torch.Tensor:
    """CaiT (§4.4): the class blocks from the top, then the talking-heads patch blocks over the
    patch tokens; every cam laid out on the N = 1 + P tokens as the trace lays out the attention
    (a class block's on row 0, a patch block's on rows and columns 1…, zeros elsewhere), so that
    ``J = Π (Ā_l + I)`` and the read-out row of ``J - I`` are those of §4.4."""
    depth, T = len(view.blocks), view.num_prefix
    r = _head_relevance(trace, view)  # (B, N, C) at the final norm's output; norm: identity
    u = trace.inputs["norm"]  # cat(x_cls, x): the reference's Cat rule
    r = u * sdiv(r, u)
    r_cls, r_x = r[:, :T], [r[:, T:]]
    w = trace.layout.readout_weights(r.dtype, r.device).expand(r.shape[0], -1)
    d = torch.zeros_like(w)
    for i in range(depth + len(view.class_blocks) - 1, start_layer - 1, -1):
        a, g = trace.attn_at(i), trace.attn_grad_at(i)
        r_a = torch.zeros_like(a)
        if i >= depth:
            r_cls, r_xi, r_a[:, :, :T] = class_block_relevance(trace, view.class_blocks[i - depth], r_cls, a[:, :, :T])
            r_x.append(r_xi)
        else:
            if i == depth - 1:  # the patch tokens feed every class block and the final cat: Clone
                x = _patch_stage_output(trace, view)
                r = x * sum((sdiv(ri, x) for ri in r_x), torch.zeros_like(x))
            r_in, r_a[:, :, T:, T:] = _block_relevance(trace, view.blocks[i], r, a[:, :, T:, T:], last=i == start_layer,
                                                       layer=i)
            if r_in is not None:
                r = r_in
        a_bar = positive_head_mean(g, r_a)
        d = d + ((w + d)[:, None, :] @ a_bar)[:, 0]
    return trace.layout.patch_columns(d)


def _patch_stage_output(trace: Trace, view: LRPView) -> torch.Tensor:
    """The patch tokens (B, P, C) after the patch blocks: the patches of the first class block's ``u``."""
    return trace.inputs[f"{view.class_blocks[0].prefix}.norm1"][:, view.num_prefix :]


@register_explainer(
    "chefer_lrp",
    kind="model",
    class_specific=True,
    paper="Chefer, Gur & Wolf, Transformer Interpretability Beyond Attention Visualization, CVPR 2021",
    reference="hila-chefer/Transformer-Explainability (LRP.generate_LRP, method='transformer_attribution')",
)
def chefer_lrp(
    model: nn.Module, x: torch.Tensor, *, target: TargetLike, info: ViTInfo, start_layer: int = 0
) -> ExplainerResult:
    """Relevance- and gradient-weighted attention rollout ("transformer_attribution").

    One forward and one backward pass (from block ``start_layer`` on) record every layer's
    input, the attention and its gradient; then ``transformer_attribution``.

    Args:
        x: (B, 3, H, W).
        target: class per image (None: top-1).
        start_layer: first block of the rollout (0: the reference default; 1: the paper's evaluation).

    Returns:
        ``ExplainerResult`` with ``patch_map`` (B, gh, gw), raw.
    """
    needs_class(
        target, "chefer_lrp (its relevance starts from a one-hot vector at the class logits, Chefer et al. 2021)",
        "a callable's score has no logit to put the one on. Use chefer_generic (the rule Chefer et al. apply to "
        "CLIP, ICCV 2021), attn_lrp (relevance from the score's gradient x output) or a class target "
        "(vx.zero_shot for CLIP / SigLIP)",
    )
    view = lrp_view(model, info)
    start = check_start_layer(start_layer, info.num_layers)
    trace = capture(model, x, view.needs(start), target=target, info=info)
    pm = transformer_attribution(trace, view, start)
    return ExplainerResult(pm, logits=trace.logits, target=trace.target, layout=trace.layout)
