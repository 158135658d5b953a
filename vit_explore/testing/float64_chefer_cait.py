"""Float64 restatement of Chefer LRP (CVPR 2021; docs/methods.md §4) on CaiT (``timm.models.cait``):
talking-heads patch blocks, then class-attention blocks, written out from the weights and
propagated by the reference's autograd rules (``float64_chefer_lrp.ref_*``), one image at a time.

Extensions, as the reference's layers would apply them: ``proj_l`` and ``proj_w`` (Linears over the
head axis around the softmax) take its Linear rule; the cam of a talking-heads block is the
relevance of the tensor that multiplies v (``proj_w``'s output, where the reference saves its
attention and gradient, after ``attn_drop``); a class block's ``u = cat(x_cls, x)`` takes its Cat
rule, its ``q`` on ``y_0`` the IndexSelect rule, and the three Linears reading ``y`` its Clone rule.
Nothing here calls into ``vit_explore`` outside ``vit_explore.testing``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .float64_chefer_lrp import ref_add, ref_clone, ref_linear, ref_simple
from .float64_model import first_block_input64


def _lin(x: torch.Tensor, mod: Any) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


def _ln(x: torch.Tensor, mod: Any) -> torch.Tensor:
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:  # b n (h d) -> b h n d
    return t.reshape(t.shape[0], t.shape[1], H, -1).transpose(1, 2)


def _merged(t: torch.Tensor) -> torch.Tensor:  # b h n d -> b n (h d)
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def _block_tail(blk: Any, x: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A CaiT block after its attention (patch or class block alike): from the merged heads ``o``
    and the residual stream ``x``: (proj(o), x + γ₁·proj(o), its norm2, the MLP's hidden, the MLP's output)."""
    att = _lin(o, blk.attn.proj)
    mid = x + blk.gamma_1 * att
    y2 = _ln(mid, blk.norm2)
    h = blk.mlp.act(_lin(y2, blk.mlp.fc1))
    return att, mid, y2, h, _lin(h, blk.mlp.fc2)


def _forward(m: Any, x: torch.Tensor) -> tuple[list[dict], list[dict], dict]:
    """CaiT written out from the patch tokens ``x`` (1, P, C): per patch block and per class
    block the tensors the rules read; the head's (tok, pooled, logits)."""
    pb, cb = [], []
    for blk in m.blocks:
        a, H = blk.attn, blk.attn.num_heads
        st: dict = {"x_in": x, "y": _ln(x, blk.norm1)}
        q, k, v = _lin(st["y"], a.qkv).reshape(1, x.shape[1], 3, H, -1).permute(2, 0, 3, 1, 4)
        s0 = (q * a.scale) @ k.transpose(-1, -2)
        s1 = _lin(s0.permute(0, 2, 3, 1), a.proj_l).permute(0, 3, 1, 2)
        p = s1.softmax(-1)
        A = _lin(p.permute(0, 2, 3, 1), a.proj_w).permute(0, 3, 1, 2)
        A.retain_grad()
        o = _merged(A @ v)
        att, x_mid, y2, h, mo = _block_tail(blk, x, o)
        x = x_mid + blk.gamma_2 * mo
        st.update(q=q, k=k, v=v, s0=s0, p=p, A=A, o=o, att=att, x_mid=x_mid, y2=y2, h=h, mo=mo)
        pb.append(st)
    xp, cls = x, m.cls_token
    for blk in m.blocks_token_only:
        a, H = blk.attn, blk.attn.num_heads
        u = torch.cat([cls, xp], dim=1)
        y = _ln(u, blk.norm1)
        q, k, v = _heads(_lin(y[:, :1], a.q), H), _heads(_lin(y, a.k), H), _heads(_lin(y, a.v), H)
        A = ((q * a.scale) @ k.transpose(-1, -2)).softmax(-1)
        A.retain_grad()
        o = _merged(A @ v)
        att, c_mid, y2, h, mo = _block_tail(blk, cls, o)
        cb.append({"cls": cls, "xp": xp, "y": y, "q": q, "k": k, "v": v, "A": A, "o": o, "att": att,
                   "c_mid": c_mid, "y2": y2, "h": h, "mo": mo})
        cls = c_mid + blk.gamma_2 * mo
        cb[-1]["c_out"] = cls
    tok = _ln(torch.cat([cls, xp], dim=1), m.norm)
    if m.global_pool != "token":
        raise ValueError("the CaiT restatement reads the class token (global_pool='token')")
    pooled = tok[:, 0]
    return pb, cb, {"tok": tok, "pooled": pooled, "logits": _lin(pooled, m.head), "xp": xp}


def _mlp_back(blk: Any, st: dict, x_mid: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``out = x_mid + γ2·mlp(norm2(x_mid))`` back to ``x_mid``: Add, LayerScale (diag Linear), fc2,
    GELU (identity), fc1, norm2 (identity), Clone."""
    c1, c2 = ref_add(x_mid.detach(), (blk.gamma_2 * st["mo"]).detach(), r)
    c2 = ref_linear(st["mo"], torch.diag(blk.gamma_2), c2)
    c2 = ref_linear(st["h"], blk.mlp.fc2.weight, c2)
    c2 = ref_linear(st["y2"], blk.mlp.fc1.weight, c2)
    return ref_clone(x_mid, [c1, c2])


def _attn_back(blk: Any, st: dict, x_in: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Back through ``x_in + γ₁·proj(A v)``: the residual's share, then the cams of A and v (the
    halved product rule), each (B, H, ·, ·)."""
    c1, c2 = ref_add(x_in.detach(), (blk.gamma_1 * st["att"]).detach(), r)
    c2 = ref_linear(st["att"], torch.diag(blk.gamma_1), c2)
    c2 = _heads(ref_linear(st["o"], blk.attn.proj.weight, c2), blk.attn.num_heads)
    cam_a, cam_v = ref_simple(lambda p, w: torch.einsum("bhij,bhjd->bhid", p, w), [st["A"], st["v"]], c2)
    return c1, cam_a / 2, cam_v / 2


def cait_row64(model: nn.Module, x1: torch.Tensor, target: int, start_layer: int = 0) -> torch.Tensor:
    """Chefer LRP of one image x1 (1, 3, H, W) on a CaiT, float64: the read-out row (N,) of
    ``J - I`` on the N = 1 + P tokens (a class block's cam on row 0, a patch block's on rows and
    columns 1…), ``J = Π_l (Ā_l + I)`` over the patch blocks then the class blocks."""
    m, tokens, own = first_block_input64(model, x1)  # timm's model, read attribute by attribute
    with torch.enable_grad():
        pb, cb, head = _forward(m, tokens.requires_grad_(True))
        if not torch.allclose(head["logits"].detach(), own, rtol=0, atol=1e-9):
            raise AssertionError("the float64 restatement of CaiT is not the model")
        head["logits"][0, target].backward()
    onehot = torch.zeros_like(head["logits"])
    onehot[0, target] = 1.0
    r = ref_linear(head["pooled"], m.head.weight, onehot)  # head_drop: identity
    (r,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [head["tok"].detach()], r[:, None])
    r_cls, r_x = ref_simple(lambda c, p: torch.cat([c, p], dim=1), [cb[-1]["c_out"], head["xp"]], r)  # Cat; norm: id.
    r_xs = [r_x]
    depth, P = len(pb), head["xp"].shape[1]
    N = P + 1
    cams: dict[int, torch.Tensor] = {}
    for j in range(len(cb) - 1, -1, -1):
        blk, st = m.blocks_token_only[j], cb[j]
        a = blk.attn
        r = _mlp_back(blk, st, st["c_mid"], r_cls)
        c1, cam_a, cam_v = _attn_back(blk, st, st["cls"], r)
        cams[depth + j] = cam_a
        cam_q, cam_k = ref_simple(lambda p, w: torch.einsum("bhid,bhjd->bhij", p, w), [st["q"], st["k"]], cam_a)
        y = st["y"]
        r_q = ref_linear(y[:, :1], a.q.weight, _merged(cam_q / 2))
        (r_q,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [y], r_q)
        r_u = ref_clone(y, [r_q, ref_linear(y, a.k.weight, _merged(cam_k / 2)), ref_linear(y, a.v.weight, _merged(cam_v))])
        r_c, r_x = ref_simple(lambda c, p: torch.cat([c, p], dim=1), [st["cls"], st["xp"]], r_u)  # norm1: identity
        r_cls = ref_clone(st["cls"], [c1, r_c])
        r_xs.append(r_x)
    r = ref_clone(head["xp"], r_xs)
    for i in range(depth - 1, start_layer - 1, -1):
        blk, st = m.blocks[i], pb[i]
        a = blk.attn
        r = _mlp_back(blk, st, st["x_mid"], r)
        c1, cam_a, cam_v = _attn_back(blk, st, st["x_in"], r)
        cams[i] = cam_a
        if i == start_layer:
            break
        c = ref_linear(st["p"].permute(0, 2, 3, 1), a.proj_w.weight, cam_a.permute(0, 2, 3, 1))  # softmax: identity
        c = ref_linear(st["s0"].permute(0, 2, 3, 1), a.proj_l.weight, c).permute(0, 3, 1, 2)
        cam_q, cam_k = ref_simple(lambda p, w: torch.einsum("bhid,bhjd->bhij", p, w), [st["q"], st["k"]], c)
        cqkv = torch.stack([cam_q / 2, cam_k / 2, cam_v]).permute(1, 3, 0, 2, 4).reshape(1, P, -1)
        r = ref_clone(st["x_in"], [c1, ref_linear(st["y"], a.qkv.weight, cqkv)])
    D = torch.zeros(N, N, dtype=torch.float64)
    for i in range(start_layer, depth + len(cb)):
        grad = (pb[i]["A"] if i < depth else cb[i - depth]["A"]).grad[0]
        a_bar = torch.zeros(N, N, dtype=torch.float64)
        part = (grad * cams[i][0]).clamp(min=0).mean(0)
        if i < depth:
            a_bar[1:, 1:] = part
        else:
            a_bar[:1] = part
        D = a_bar + D + a_bar @ D
    return D[0]
