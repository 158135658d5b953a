"""Per-head attribution of a class logit: direct logit attribution and single-head ablation.

Direct logit attribution (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"; for ViTs as in ViT Prisma, Joseph et al. 2023): the residual stream after the last
block is a sum of terms (the embedding, every head's output through ``attn.proj`` and
LayerScale, every ``proj`` bias, every MLP output); with the scale of the final LayerNorm(s)
frozen at its value on this input (as ViT Prisma and TransformerLens do), the read-out is
linear in that sum, so the target logit splits exactly into one term per part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .capture.ablation import ablate_heads, forward_logits
from .capture.adapters import ViTInfo
from .capture.hf import as_vit
from .capture.residual import Stream, check_decomposable, record_stream
from .lens import _prepare
from .targets import TargetLike, resolve_target

__all__ = ["HeadAttribution", "head_attribution"]


@dataclass(frozen=True)
class HeadAttribution:
    """Attribution of the target logit to every head. Shapes: B images, L blocks, H heads.

    Attributes:
        direct: (B, L, H) each head's direct contribution to the target logit.
        ablation: (B, L, H) change of the target's probability when that head alone is
            switched off (``ablated - original``), or None if not asked.
        target: (B,) the class attributed.
        logit: (B,) the model's target logit.
        prob: (B,) the model's target probability.
        embed: (B,) direct term of the embedded tokens (input of block 0).
        attn_bias: (B, L) direct term of each block's ``attn.proj`` bias.
        mlp: (B, L) direct term of each block's MLP.
        bias: (B,) the constant: final norm shifts and the head's bias.

    ``direct.sum((1, 2)) + embed + attn_bias.sum(1) + mlp.sum(1) + bias == logit``.
    """

    direct: torch.Tensor
    ablation: torch.Tensor | None
    target: torch.Tensor
    logit: torch.Tensor
    prob: torch.Tensor
    embed: torch.Tensor
    attn_bias: torch.Tensor
    mlp: torch.Tensor
    bias: torch.Tensor

    def reconstruction(self) -> torch.Tensor:
        """(B,) the sum of every direct term (equals ``logit`` up to rounding)."""
        return self.direct.sum((1, 2)) + self.embed + self.attn_bias.sum(1) + self.mlp.sum(1) + self.bias


def _ln_sigma(v: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + ln.eps)


def _center(u: torch.Tensor) -> torch.Tensor:
    return u - u.mean(-1, keepdim=True)


def _readout_directions(
    model: nn.Module, info: ViTInfo, final: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, const)``: G (B, N, D) with ``logit = sum_n <G_n, r_n> + const`` for the final stream
    ``r`` (B, N, D), float64, the LayerNorm scales frozen at their values on ``final``."""
    r = final.double()
    B, N, D = r.shape
    norm, fc = getattr(model, "norm", nn.Identity()), getattr(model, "fc_norm", nn.Identity())
    normed = norm(final).double() if isinstance(norm, nn.LayerNorm) else r
    G = torch.zeros(B, N, D, dtype=torch.float64, device=r.device)
    if info.readout == "cls_dist":  # DeiT: (head(y_0) + head_dist(y_1)) / 2, no fc_norm
        G[:, 0] = 0.5 * model.head.weight.double()[target]
        G[:, 1] = 0.5 * model.head_dist.weight.double()[target]
        const = 0.5 * (_bias(model.head, target) + _bias(model.head_dist, target))
    elif info.readout == "cls_avg":  # Hugging Face DINOv2: head(concat(y_0, mean of the patch rows))
        u, T = model.head.weight.double()[target], info.num_prefix  # (B, 2D)
        G[:, 0] = u[:, :D]
        G[:, T:] = u[:, None, D:] / (N - T)
        const = _bias(model.head, target)
    else:
        u = model.head.weight.double()[target]  # (B, D)
        const = _bias(model.head, target)
        T = info.num_prefix
        w = torch.zeros(N, dtype=torch.float64, device=r.device)
        if info.readout == "cls":
            w[0] = 1.0
        elif info.readout == "avg":
            w[T:] = 1.0 / (N - T)
        else:
            w[:] = 1.0 / N
        if isinstance(fc, nn.LayerNorm):
            pooled = (normed * w[:, None]).sum(1)
            const = const + u @ fc.bias.double() if fc.bias is not None else const
            u = _center(u * fc.weight.double()) / _ln_sigma(pooled, fc)
        G = w[None, :, None] * u[:, None, :]
    if isinstance(norm, nn.LayerNorm):
        if norm.bias is not None:
            const = const + (G @ norm.bias.double()).sum(1)
        G = _center(G * norm.weight.double()) / _ln_sigma(r, norm)
    return G, const


def _bias(lin: nn.Module, target: torch.Tensor) -> torch.Tensor:
    b = getattr(lin, "bias", None)
    if b is None:
        return torch.zeros(target.shape[0], dtype=torch.float64, device=target.device)
    return b.double()[target]


@torch.no_grad()
def _direct_terms(model: nn.Module, info: ViTInfo, st: Stream, target: torch.Tensor) -> dict[str, torch.Tensor]:
    G, const = _readout_directions(model, info, st.resid[-1], target)
    B = G.shape[0]
    heads, attn_bias, mlp = [], [], []
    for i, blk in enumerate(model.blocks):
        attn = info.attns[i]
        H = int(attn.num_heads)
        gamma = getattr(blk.ls1, "gamma", None)
        Gg = G * gamma.double() if gamma is not None else G
        W = attn.proj.weight.double()  # (D, D_in)
        M = Gg @ W  # (B, N, D_in)
        o = st.heads[i].double()
        heads.append((M * o).reshape(B, o.shape[1], H, -1).sum((1, 3)))
        b = attn.proj.bias
        attn_bias.append((Gg @ b.double()).sum(1) if b is not None else torch.zeros_like(const))
        mlp.append((G * st.mlp_out[i].double()).sum((1, 2)))
    return {
        "direct": torch.stack(heads, 1),  # (B, L, H)
        "embed": (G * st.resid[0].double()).sum((1, 2)),
        "attn_bias": torch.stack(attn_bias, 1),
        "mlp": torch.stack(mlp, 1),
        "bias": const,
    }


def head_attribution(model: nn.Module, x: torch.Tensor, target: TargetLike = None, *,
                     ablation: bool = True) -> HeadAttribution:
    """Attribute the target logit (and probability) of ``x`` to every attention head.

    Args:
        model: a timm ViT with pre-norm blocks (``Block``, LayerScale blocks); CLS,
            distilled, registers and global-average-pool read-outs.
        x: (B, 3, H, W) preprocessed images.
        target: class per image (None: each image's top-1).
        ablation: also run the L * H single-head ablations (one batched pass each).

    ``.direct``: each head's direct logit attribution through the residual stream, with the
    final LayerNorm's scale frozen at its value on this input (as ViT Prisma and
    TransformerLens do; the head's effect through later blocks is not counted). Computed in
    float64 from one recorded pass. ``.ablation``: the change of the target's probability when
    that head alone is switched off (``vx.ablate_heads``: its output zeroed before ``proj``).

    Raises:
        UnsupportedModelError: post-norm blocks or a norm inside the attention before ``proj``
            (the per-head split would not be exact); ``ablation`` alone still applies there.
    """
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    info, x, _ = _prepare(model, x)
    check_decomposable(model, info)
    st = record_stream(model, x, parts=True, info=info)
    tgt = resolve_target(target, st.logits)
    terms = _direct_terms(model, info, st, tgt)
    probs = st.logits.double().softmax(-1)
    p0 = probs.gather(1, tgt[:, None])[:, 0]
    abl = None
    if ablation:
        B, L, H = terms["direct"].shape
        abl = torch.zeros(B, L, H, dtype=torch.float64, device=x.device)
        for layer in range(L):
            for h in range(H):
                with ablate_heads(model, {layer: [h]}):
                    lg = forward_logits(model, x)
                abl[:, layer, h] = lg.double().softmax(-1).gather(1, tgt[:, None])[:, 0] - p0
    return HeadAttribution(
        direct=terms["direct"],
        ablation=abl,
        target=tgt,
        logit=st.logits.double().gather(1, tgt[:, None])[:, 0],
        prob=p0,
        embed=terms["embed"],
        attn_bias=terms["attn_bias"],
        mlp=terms["mlp"],
        bias=terms["bias"],
    )
