"""A plain float64 replica of a timm ViT's residual stream and read-out, for the teaching views.

Built on tests/replica.py's layer functions; shares no code with vit_explore.
"""

import math

import torch

from tests.replica import _gelu, _lin, _ln, _ls


def _ln_frozen(x, mod, like):
    """LayerNorm of ``x`` with the mean subtracted from ``x`` but the scale taken from ``like`` (detached)."""
    if isinstance(mod, torch.nn.Identity):
        return x
    sigma = torch.sqrt(like.detach().var(-1, unbiased=False, keepdim=True) + mod.eps)
    return (x - x.mean(-1, keepdim=True)) / sigma * mod.weight.double() + mod.bias.double()


def stream(model, tokens, *, zero_heads=None, patch_block=None, patch_head=None):
    """Run the blocks in float64 from ``tokens`` (B, N, C).

    ``patch_block``: (layer, values (B, N, C), token idx or None) replaces the input of that block;
    ``patch_head``: (layer, head, values (B, N, C) head outputs, token idx or None).
    Returns {"resid": L+1 tensors, "heads": L tensors (B, H, N, d), "logits"}.
    """
    zero_heads = zero_heads or {}
    resid, heads = [], []
    x = tokens
    for li, blk in enumerate(model.blocks):
        if patch_block is not None and patch_block[0] == li:
            _, v, idx = patch_block
            x = x.clone()
            if idx is None:
                x[:] = v
            else:
                x[:, idx] = v[:, idx]
        resid.append(x)
        a = blk.attn
        B, N, C = x.shape
        h = a.num_heads
        d = C // h
        y = _ln(x, blk.norm1)
        qkv = _lin(y, a.qkv).reshape(B, N, 3, h, d)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        p = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), dim=-1)
        o = p @ v  # (B, h, N, d)
        for hh in zero_heads.get(li, []):
            o[:, hh] = 0
        if patch_head is not None and patch_head[0] == li:
            _, hh, vals, idx = patch_head
            vh = vals.reshape(B, N, h, d).transpose(1, 2)[:, hh]
            o = o.clone()
            if idx is None:
                o[:, hh] = vh
            else:
                o[:, hh, idx] = vh[:, idx]
        heads.append(o)
        x = x + _ls(_lin(o.transpose(1, 2).reshape(B, N, C), a.proj), blk.ls1)
        x = x + _ls(_lin(_gelu(_lin(_ln(x, blk.norm2), blk.mlp.fc1)), blk.mlp.fc2), blk.ls2)
    resid.append(x)
    return {"resid": resid, "heads": heads, "logits": readout(model, x)}


def readout(model, x, frozen_like=None):
    """Logits of a final stream (B, N, C) as the model reads out; with ``frozen_like`` (a stream),
    every LayerNorm's scale is frozen at its value on ``frozen_like``."""
    T = model.num_prefix_tokens

    def ln(v, mod, like):
        return _ln(v, mod) if frozen_like is None else _ln_frozen(v, mod, like)

    like = x if frozen_like is None else frozen_like
    y = ln(x, model.norm, like)
    y_like = _ln(like, model.norm)
    if hasattr(model, "head_dist"):
        return (_lin(y[:, 0], model.head) + _lin(y[:, 1], model.head_dist)) / 2
    if model.global_pool == "avg":
        pooled, pooled_like = y[:, T:].mean(1), y_like[:, T:].mean(1)
    else:
        pooled, pooled_like = y[:, 0], y_like[:, 0]
    return _lin(ln(pooled, model.fc_norm, pooled_like), model.head)


def per_token(model, x):
    """Every token (B, N, C) read out on its own -> (B, N, classes)."""
    y = _ln(x, model.norm)
    if hasattr(model, "head_dist"):
        return (_lin(y, model.head) + _lin(y, model.head_dist)) / 2
    return _lin(_ln(y, model.fc_norm), model.head)
