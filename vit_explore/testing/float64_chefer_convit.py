"""Float64 restatement of Chefer LRP (CVPR 2021; docs/methods.md §4) on ConViT (``timm.models.convit``):
GPSA blocks over the patches, the class token joined by a ``cat``, then MHSA blocks, written out from
the weights and propagated by the reference's autograd rules (``float64_chefer_lrp.ref_*``), one image
at a time.

GPSA, as the reference's layers apply to it: ``A = ((1-σ(g)) P_c + σ(g) P_p) / rowsum``; the row sums
are 1, so the renormalisation is the identity; the gate factors are constants (transparent, like
``scale``); the sum takes the Add rule, ``P_p``'s share stays with the positional parameters; the
content softmax is an identity and ``q kᵀ`` (unscaled) takes the einsum rule. ``qk`` and ``v`` are
two Linears reading ``norm1(x)``: the Clone rule. The join ``cat(cls_token, x)`` takes the Cat rule.
Nothing here calls into ``vit_explore`` outside ``vit_explore.testing``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .float64_chefer_lrp import ref_add, ref_clone, ref_linear, ref_simple
from .float64_model import first_block_input64


def _lin(x: torch.Tensor, mod: Any) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


def _ln(x: torch.Tensor, mod: Any) -> torch.Tensor:
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def _block(blk: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    a, (B, N, C) = blk.attn, x.shape
    H = a.num_heads
    st: dict = {"x_in": x, "y": _ln(x, blk.norm1), "gpsa": hasattr(a, "gating_param")}
    if st["gpsa"]:
        q, k = _lin(st["y"], a.qk).reshape(B, N, 2, H, -1).permute(2, 0, 3, 1, 4)
        v = _lin(st["y"], a.v).reshape(B, N, H, -1).transpose(1, 2)
        pc = ((q @ k.transpose(-1, -2)) * a.scale).softmax(-1)
        pp = _lin(a.rel_indices.double().expand(B, -1, -1, -1), a.pos_proj).permute(0, 3, 1, 2).softmax(-1)
        sg = torch.sigmoid(a.gating_param).view(1, -1, 1, 1)
        mix = (1.0 - sg) * pc + sg * pp
        A = mix / mix.sum(-1, keepdim=True)
        st.update(pc=pc, pp=pp, sg=sg)
    else:
        q, k, v = _lin(st["y"], a.qkv).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
        A = ((q @ k.transpose(-1, -2)) * a.scale).softmax(-1)
    A.retain_grad()
    o = (A @ v).transpose(1, 2).reshape(B, N, C)
    att = _lin(o, a.proj)
    x_mid = x + att
    y2 = _ln(x_mid, blk.norm2)
    h = blk.mlp.act(_lin(y2, blk.mlp.fc1))
    mo = _lin(h, blk.mlp.fc2)
    st.update(q=q, k=k, v=v, A=A, o=o, att=att, x_mid=x_mid, y2=y2, h=h, mo=mo)
    return x_mid + mo, st


def _block_back(blk: Any, st: dict, r: torch.Tensor, last: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The reference's rules through one block: (relevance of its input or None, the halved R_A)."""
    a, H = blk.attn, blk.attn.num_heads
    c1, c2 = ref_add(st["x_mid"].detach(), st["mo"].detach(), r)
    c2 = ref_linear(st["h"], blk.mlp.fc2.weight, c2)
    c2 = ref_linear(st["y2"], blk.mlp.fc1.weight, c2)
    r = ref_clone(st["x_mid"], [c1, c2])
    c1, c2 = ref_add(st["x_in"].detach(), st["att"].detach(), r)
    c2 = ref_linear(st["o"], a.proj.weight, c2)
    B, N, _ = c2.shape
    c2 = c2.reshape(B, N, H, -1).transpose(1, 2)
    cam_a, cam_v = ref_simple(lambda p, w: torch.einsum("bhij,bhjd->bhid", p, w), [st["A"], st["v"]], c2)
    cam_a, cam_v = cam_a / 2, cam_v / 2
    if last:
        return None, cam_a
    c_dots = cam_a
    if st["gpsa"]:  # the renormalisation (row sums 1): identity; the gate: constants; the sum: Add
        c_dots, _ = ref_add(((1 - st["sg"]) * st["pc"]).detach(), (st["sg"] * st["pp"]).detach(), cam_a)
    cam_q, cam_k = ref_simple(lambda p, w: torch.einsum("bhid,bhjd->bhij", p, w), [st["q"], st["k"]], c_dots)
    merged = lambda t: t.transpose(1, 2).reshape(B, N, -1)
    if st["gpsa"]:
        cqk = torch.stack([cam_q / 2, cam_k / 2]).permute(1, 3, 0, 2, 4).reshape(B, N, -1)
        c_y = ref_clone(st["y"], [ref_linear(st["y"], a.qk.weight, cqk), ref_linear(st["y"], a.v.weight, merged(cam_v))])
    else:
        cqkv = torch.stack([cam_q / 2, cam_k / 2, cam_v]).permute(1, 3, 0, 2, 4).reshape(B, N, -1)
        c_y = ref_linear(st["y"], a.qkv.weight, cqkv)
    return ref_clone(st["x_in"], [c1, c_y]), cam_a


def convit_row64(model: torch.nn.Module, x1: torch.Tensor, target: int, start_layer: int = 0) -> torch.Tensor:
    """Chefer LRP of one image x1 (1, 3, H, W) on a ConViT, float64: the read-out row (N,) of
    ``J - I`` on the N = 1 + P tokens (a GPSA block's cam on rows and columns 1…)."""
    m, tokens, own = first_block_input64(model, x1)  # timm's model, read attribute by attribute
    late, saved = m.local_up_to_layer, []
    with torch.enable_grad():
        x = tokens.requires_grad_(True)
        for i, blk in enumerate(m.blocks):
            if i == late:
                cat_in = (m.cls_token, x)
                x = torch.cat(cat_in, dim=1)
            x, st = _block(blk, x)
            saved.append(st)
        tok = _ln(x, m.norm)
        logits = _lin(tok[:, 0], m.head)
        if m.global_pool != "token" or not torch.allclose(logits.detach(), own, rtol=0, atol=1e-9):
            raise AssertionError("the float64 restatement of ConViT is not the model")
        logits[0, target].backward()
    onehot = torch.zeros_like(logits)
    onehot[0, target] = 1.0
    r = ref_linear(tok[:, 0], m.head.weight, onehot)
    (r,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [tok.detach()], r[:, None])
    N = tok.shape[1]
    cams = {}
    for i in range(len(m.blocks) - 1, start_layer - 1, -1):
        r_in, cams[i] = _block_back(m.blocks[i], saved[i], r, last=i == start_layer)
        if r_in is not None and i == late:
            _, r_in = ref_simple(lambda c, p: torch.cat([c, p], dim=1), list(cat_in), r_in)
        if r_in is not None:
            r = r_in
    D = torch.zeros(N, N, dtype=torch.float64)
    for i in range(start_layer, len(m.blocks)):
        part = (saved[i]["A"].grad[0] * cams[i][0]).clamp(min=0).mean(0)
        a_bar = torch.zeros(N, N, dtype=torch.float64)
        a_bar[N - part.shape[0] :, N - part.shape[1] :] = part
        D = a_bar + D + a_bar @ D
    return D[0]
