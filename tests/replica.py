"""An independent float64 replica of a timm ViT's blocks and head, written plainly.

It starts from the tokens entering the first block (read off with a plain forward hook),
so it checks everything capture records (attention, scores, gradients, logits) without
sharing any code with vit_explore.
"""

import math

import torch


def tokens_into_blocks(model, x):
    seen = []
    h = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen[0].double()


def _ln(x, mod):
    if isinstance(mod, torch.nn.Identity):
        return x
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight.double() + mod.bias.double()


def _lin(x, mod):
    y = x @ mod.weight.double().T
    return y + mod.bias.double() if mod.bias is not None else y


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _ls(x, mod):
    g = getattr(mod, "gamma", None)
    return x * g.double() if g is not None else x


def replica_forward(model, tokens):
    """Returns (logits (B, C), attention list L x (B, H, N, N), scores list) in float64.

    ``tokens`` may require grad; the attention tensors are graph nodes (retain_grad set).
    """
    attns, scores = [], []
    x = tokens
    for blk in model.blocks:
        a = blk.attn
        B, N, C = x.shape
        h = a.num_heads
        d = C // h
        y = _ln(x, blk.norm1)
        qkv = _lin(y, a.qkv).reshape(B, N, 3, h, d)
        q, k, v = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        p = torch.softmax(s, dim=-1)
        if p.requires_grad:
            p.retain_grad()
        attns.append(p)
        scores.append(s)
        o = (p @ v).transpose(1, 2).reshape(B, N, C)
        x = x + _ls(_lin(o, a.proj), blk.ls1)
        y = _ln(x, blk.norm2)
        x = x + _ls(_lin(_gelu(_lin(y, blk.mlp.fc1)), blk.mlp.fc2), blk.ls2)
    x = _ln(x, model.norm)
    T = model.num_prefix_tokens
    if model.global_pool == "avg":
        pooled = x[:, T:].mean(1)
        logits = _lin(_ln(pooled, model.fc_norm), model.head)
    elif hasattr(model, "head_dist"):
        logits = (_lin(x[:, 0], model.head) + _lin(x[:, 1], model.head_dist)) / 2
    else:
        logits = _lin(x[:, 0], model.head)
    return logits, attns, scores


def readout_rows(m, model):
    """Plain read-out of (..., N, N) matrices -> (..., P) per §1.3."""
    T = model.num_prefix_tokens
    if model.global_pool == "avg":
        row = m[..., T:, :].mean(-2)
    elif hasattr(model, "head_dist"):
        row = (m[..., 0, :] + m[..., 1, :]) / 2
    else:
        row = m[..., 0, :]
    return row[..., T:]
