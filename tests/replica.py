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


def replica_forward(model, tokens, *, detach_attn_input=False, zero_heads=None, block_keys=None,
                    block_layers=None, record=None):
    """Returns (logits (B, C), attention list L x (B, H, N, N), scores list) in float64.

    ``tokens`` may require grad; the attention tensors are graph nodes (retain_grad set).
    Edits, each written plainly: ``detach_attn_input`` cuts the gradient at every attention
    input (AG-CAM); ``zero_heads`` {layer: [heads]} zeroes those heads' outputs;
    ``block_keys`` (token indices) gets score -inf in ``block_layers`` (None: every block);
    ``record`` (a dict) receives each block's norm1 output under ``"norm1"``.
    """
    attns, scores, norm1 = [], [], []
    zero_heads = zero_heads or {}
    x = tokens
    L = len(model.blocks)
    for li, blk in enumerate(model.blocks):
        a = blk.attn
        B, N, C = x.shape
        h = a.num_heads
        d = C // h
        y = _ln(x, blk.norm1)
        norm1.append(y)
        if detach_attn_input:
            y = y.detach().requires_grad_(True)
        qkv = _lin(y, a.qkv).reshape(B, N, 3, h, d)
        q, k, v = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        if block_keys is not None and (block_layers is None or li in [i % L for i in block_layers]):
            s = s.clone()
            s[..., block_keys] = float("-inf")
        p = torch.softmax(s, dim=-1)
        if p.requires_grad:
            p.retain_grad()
        attns.append(p)
        scores.append(s)
        o = p @ v  # (B, h, N, d)
        for hh in zero_heads.get(li, []):
            o[:, hh] = 0
        o = o.transpose(1, 2).reshape(B, N, C)
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
    if record is not None:
        record["norm1"] = norm1
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
