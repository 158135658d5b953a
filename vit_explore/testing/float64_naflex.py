"""Float64 restatement of NaFlexViT's embedding (timm ``NaFlexVit``, ``NaFlexEmbeds``) on an image
batch (B, 3, H, W), for ``vit_explore.testing.float64``. Written from the weights; nothing here
calls into ``vit_explore``.

The patch count follows the input: a (gh, gw) = (H // ph, W // pw) grid (padded up with
``dynamic_img_pad``), patches row-major. Per patch the pixels flattened (ph, pw, C) with
``channels_last`` (else (C, ph, pw)) and projected by the ``proj`` Linear (a Conv2d of stride ph
for the conv embedding), ``norm``, plus the learned (1, h, w, C) position table resized to
(gh, gw) by ``F.interpolate`` (its mode, align_corners, antialias; to (L, L) and cropped when
aspect-preserving) in float64 (timm resizes it in float32); then the class and register tokens
in front, ``norm_pre``. On an image batch there is no padding mask: every patch is valid
(``create_attention_mask(None)`` is None); ``naflex_mask64`` restates the mask of a NaFlex batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_naflex(model: nn.Module) -> bool:
    """Whether the model embeds with NaFlexViT's ``embeds`` module (no ``patch_embed``)."""
    return getattr(model, "patch_embed", None) is None and hasattr(getattr(model, "embeds", None), "pos_embed_type")


def _ln(x: torch.Tensor, mod: nn.Module | None) -> torch.Tensor:
    if mod is None or isinstance(mod, nn.Identity):
        return x
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    raise ValueError(f"no float64 restatement of a {type(mod).__name__} in NaFlexViT's embedding")


def naflex_tokens64(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tokens (B, T + gh·gw, C) entering the first block, restated from the weights (module
    docstring), in the graph of ``x``."""
    e = m.embeds
    x = x.double()
    ph, pw = e.patch_size
    if e.dynamic_img_pad:
        x = F.pad(x, (0, -x.shape[-1] % pw, 0, -x.shape[-2] % ph))
    B, C, H, W = x.shape
    gh, gw = H // ph, W // pw
    x = x[..., : gh * ph, : gw * pw]
    if e.is_linear:
        order = (0, 2, 4, 3, 5, 1) if e.channels_last else (0, 2, 4, 1, 3, 5)
        patches = x.reshape(B, C, gh, ph, gw, pw).permute(*order).reshape(B, gh * gw, -1)
        t = F.linear(_ln(patches, e.norm_input), e.proj.weight, e.proj.bias)
    else:
        t = F.conv2d(x, e.proj.weight, e.proj.bias, stride=(ph, pw)).flatten(2).transpose(1, 2)
    t = _ln(t, e.norm)
    if e.pos_embed_type == "learned":
        table = e.pos_embed  # (1, h, w, C)
        if tuple(table.shape[1:3]) != (gh, gw):
            size = (max(gh, gw),) * 2 if e.pos_embed_ar_preserving else (gh, gw)
            table = F.interpolate(table.permute(0, 3, 1, 2), size=size, mode=e.pos_embed_interp_mode,
                                  align_corners=e.pos_embed_align_corners, antialias=e.pos_embed_antialias)
            table = table[:, :, :gh, :gw].permute(0, 2, 3, 1)
        t = t + table.reshape(1, gh * gw, -1)
    elif e.pos_embed_type != "none":
        raise ValueError(f"no float64 restatement of NaFlexViT's {e.pos_embed_type!r} position embedding")
    prefix = [p.expand(B, -1, -1) for p in (e.cls_token, e.reg_token) if p is not None]
    t = torch.cat([*prefix, t], dim=1)
    return _ln(t, getattr(m, "norm_pre", None))


def naflex_mask64(patch_valid: torch.Tensor, T: int) -> torch.Tensor:
    """The additive mask (B, 1, N, N) of a NaFlex batch: token pair (i, j) allowed (0) when both
    are valid (the T prefix tokens always are), else the float64 minimum."""
    valid = torch.cat([patch_valid.new_ones(patch_valid.shape[0], T), patch_valid], dim=1).bool()
    both = valid[:, None, :, None] & valid[:, None, None, :]
    return torch.zeros(both.shape, dtype=torch.float64).masked_fill(~both, torch.finfo(torch.float64).min)


def embed_hook(m64: nn.Module, x: torch.Tensor):
    """A forward pre-hook on ``m64.blocks[0]`` that replaces its input by ``naflex_tokens64(m64, x)``
    (after checking that they agree to float32's resizing of the position table), so that the
    float64 run starts from the restated embedding. Returns the handle."""

    def pre(mod, args, kwargs):
        mine = naflex_tokens64(m64, x)
        own = args[0].detach()
        scale = float(own.abs().max()) or 1.0
        if mine.shape != own.shape or not torch.allclose(mine.detach(), own, rtol=0, atol=1e-6 * scale):
            raise AssertionError("the float64 restatement of NaFlexViT's embedding is not the model's")
        return (mine, *args[1:]), kwargs

    return m64.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
