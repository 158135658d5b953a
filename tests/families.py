"""Tiny seeded timm models of the attention families, and a float64 restatement of their scores."""

import copy

import timm
import torch
import torch.nn.functional as F

# name -> (timm architecture, create_model kwargs); depth 2, small inputs, random weights
FAMILIES = {
    "eva02": ("eva02_tiny_patch14_224", {"img_size": 42}),  # EvaAttention, q/v bias via F.linear, GluMlp (SwiGLU)
    # SwiGLU (fc1_g, fc1_x) with a LayerNorm inside the MLP (scale_mlp)
    "eva02_base": ("eva02_base_patch14_224", {"img_size": 42, "embed_dim": 64, "num_heads": 4}),
    "rope": ("vit_small_patch16_rope_224", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),  # AttentionRope
    "rope_ape": ("vit_small_patch16_rope_ape_224", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),
    "dinov3": ("vit_small_patch16_dinov3", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),  # registers, RoPE
    "beit": ("beit_base_patch16_224", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),  # per-block bias table
    "beitv2": ("beitv2_base_patch16_224", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),
    "relpos": ("vit_relpos_small_patch16_224", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),
    "srelpos": ("vit_srelpos_small_patch16_224", {"img_size": 48, "embed_dim": 64, "num_heads": 4}),  # shared bias
}


def family_model(name, seed=0, num_classes=5):
    arch, kw = FAMILIES[name]
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, depth=2, num_classes=num_classes, **kw).eval()
    with torch.no_grad():  # random non-zero biases, tables and layer scales, so every term matters
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if p.ndim <= 2 and ("bias" in n or "gamma" in n or "table" in n or n.endswith("ls1.gamma")):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m


def family_input(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.patch_embed.img_size, generator=g)


def _norm64(x, mod):
    if isinstance(mod, torch.nn.LayerNorm):
        w = None if mod.weight is None else mod.weight.double()
        b = None if mod.bias is None else mod.bias.double()
        return F.layer_norm(x, mod.normalized_shape, w, b, mod.eps)
    assert isinstance(mod, torch.nn.Identity), type(mod)
    return x


def _rotate64(x, emb, half):
    """y = x cos + rot(x) sin, written out per pair of channels."""
    sin, cos = emb.double().tensor_split(2, -1)
    D = x.shape[-1]
    if half:
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        rot = torch.cat([-x2, x1], dim=-1)
    else:
        rot = torch.empty_like(x)
        rot[..., 0::2] = -x[..., 1::2]
        rot[..., 1::2] = x[..., 0::2]
    return x * cos + rot * sin


def scores64(attn, x, kwargs):
    """Float64 scores (B, H, N, N) of one attention module from its input ``x`` and keyword
    arguments, restated from its weights (not through its forward)."""
    x = x.double()
    B, N, _ = x.shape
    H = attn.num_heads
    if getattr(attn, "qkv", None) is not None:
        W = attn.qkv.weight.double()
        if getattr(attn, "q_bias", None) is not None:
            b = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias]).double()
        else:
            b = None if attn.qkv.bias is None else attn.qkv.bias.double()
    else:
        W = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).double()
        bs = [p.bias if p.bias is not None else torch.zeros(p.out_features) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        b = torch.cat(bs).double()
    q, k, _v = F.linear(x, W, b).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
    ident = torch.nn.Identity()
    q, k = _norm64(q, getattr(attn, "q_norm", ident)), _norm64(k, getattr(attn, "k_norm", ident))
    rope = kwargs.get("rope")
    if rope is not None:
        T, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], rope, half)], dim=2)
        k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], rope, half)], dim=2)
    s = (q * attn.scale) @ k.transpose(-1, -2)
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:  # BEiT: gather the table by the relative position index
        idx = attn.relative_position_index.reshape(-1)
        s = s + table.double()[idx].reshape(N, N, -1).permute(2, 0, 1)
    rel = getattr(attn, "rel_pos", None)
    if rel is not None:
        s = s + rel.get_bias().double()
    for key in ("shared_rel_pos_bias", "shared_rel_pos"):
        if kwargs.get(key) is not None:
            s = s + kwargs[key].double()
    if kwargs.get("attn_mask") is not None:
        s = s + kwargs["attn_mask"].double()
    return s


def model64(model):
    """A float64 copy on timm's unfused attention path (the model's own numbers, in float64)."""
    m = copy.deepcopy(model).double()
    for blk in m.blocks:
        blk.attn.fused_attn = False
    return m


def run64(m, x, detach_attn_input=False):
    """Float64 forward of ``model64``: logits, attention A (through attn_drop, in the graph),
    the restated scores, per block."""
    attns, scores, handles = [], [], []

    def pre(mod, args, kwargs):
        xin = args[0]
        if detach_attn_input:
            xin = xin.detach().requires_grad_(True)
        scores.append(scores64(mod, xin.detach(), kwargs))
        return (xin, *args[1:]), kwargs

    for blk in m.blocks:
        handles.append(blk.attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda mod, a, out: attns.append(out)))
    try:
        xin = x.double().requires_grad_(True)
        logits = m(xin)
    finally:
        for h in handles:
            h.remove()
    return logits, attns, scores
