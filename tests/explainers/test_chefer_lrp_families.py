"""Chefer LRP on the attention families against a float64 replica written from the reference's
rules (``ref_*`` of test_chefer_lrp.py, autograd and all), extended as the reference would apply
them: the relative position bias as a second summand of the scores (the reference's Add rule), the
rotary embedding as a Linear per token (alpha=1/beta=0, its matrix from a restatement of the
rotation), a gated MLP's product by the reference's einsum rule (each factor's share halved)."""

import math

import pytest
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.errors import UnsupportedModelError

from ..families import FAMILIES, _norm64, bias64, family_input, family_model, model64, rope_matrices64
from .test_chefer_lrp import ref_add, ref_clone, ref_linear, ref_simple


def _lin(x, mod):
    return F.linear(x, mod.weight, mod.bias)


def _qkv64(a):
    if getattr(a, "qkv", None) is not None:
        if getattr(a, "q_bias", None) is not None:
            return a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        return a.qkv.weight, a.qkv.bias
    projs = (a.q_proj, a.k_proj, a.v_proj)
    bs = [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projs]
    return torch.cat([p.weight for p in projs]), torch.cat(bs)


def _gamma(blk, i):
    ls = getattr(blk, f"ls{i}", None)
    return getattr(ls, "gamma", None) if ls is not None else getattr(blk, f"gamma_{i}", None)


def replica(model, x1, target):
    """Reference 'transformer_attribution' for one image (1, 3, H, W), float64: (N,) read-out row."""
    m = model64(model)
    got = {}
    hs = [m.blocks[0].register_forward_pre_hook(lambda mod, args: got.update(tokens=args[0]))]
    for i, blk in enumerate(m.blocks):
        hs.append(blk.attn.register_forward_pre_hook(
            lambda mod, args, kw, i=i: got.update({i: kw}), with_kwargs=True))
    try:
        with torch.no_grad():
            own_logits = m(x1.double())
    finally:
        for h in hs:
            h.remove()
    ident = torch.nn.Identity()
    x = got["tokens"].detach().requires_grad_(True)
    saved = []
    for i, blk in enumerate(m.blocks):
        a, kw, st = blk.attn, got[i], {"x_in": x}
        B, N, _ = x.shape
        H = a.num_heads
        y = _norm64(x, blk.norm1)
        st["y"] = y
        W, b = _qkv64(a)
        q, k, v = F.linear(y, W, b).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
        qn, kn = _norm64(q, getattr(a, "q_norm", ident)), _norm64(k, getattr(a, "k_norm", ident))
        st.update(qn=qn, kn=kn, v=v, M=None)
        if kw.get("rope") is not None:
            T = a.num_prefix_tokens
            M = rope_matrices64(kw["rope"], getattr(a, "rotate_half", False))
            st.update(M=M, T=T)
            q = torch.cat([qn[:, :, :T], torch.einsum("bhpi,pij->bhpj", qn[:, :, T:], M)], dim=2)
            k = torch.cat([kn[:, :, :T], torch.einsum("bhpi,pij->bhpj", kn[:, :, T:], M)], dim=2)
        else:
            q, k = qn, kn
        st.update(q=q, k=k)
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * a.scale
        bias = bias64(a, kw, N)
        st.update(dots=dots, bias=None if bias is None else bias.expand_as(dots))
        A = (dots if bias is None else dots + bias).softmax(-1)
        A.retain_grad()
        st["A"] = A
        o = torch.einsum("bhij,bhjd->bhid", A, v).transpose(1, 2).reshape(B, N, -1)
        o = _norm64(o, getattr(a, "norm", ident))
        st["proj_in"] = o
        att = _lin(o, a.proj)
        st["att_out"] = att
        g1 = _gamma(blk, 1)
        att = att * g1 if g1 is not None else att
        st["att"] = att
        x = x + att
        st["x_mid"] = x
        y2 = _norm64(x, blk.norm2)
        st["y2"] = y2
        mlp = blk.mlp
        if hasattr(mlp, "fc1_g"):  # SwiGLU
            gi, u = _lin(y2, mlp.fc1_g), _lin(y2, mlp.fc1_x)
            g = F.silu(gi)
            st.update(g=g, u=u, kind="swiglu")
            hdn = g * u
        elif hasattr(mlp, "gate_last"):  # GluMlp
            h1 = _lin(y2, mlp.fc1)
            x1, x2 = h1.chunk(2, dim=-1)
            g, u = (F.silu(x2), x1) if mlp.gate_last else (F.silu(x1), x2)
            st.update(g=g, u=u, kind="glu", gate_last=mlp.gate_last)
            hdn = g * u
        else:
            hdn = F.gelu(_lin(y2, mlp.fc1))
            st["kind"] = "mlp"
        hdn = _norm64(hdn, mlp.norm)
        st["fc2_in"] = hdn
        out = _lin(hdn, mlp.fc2)
        st["mlp_out"] = out
        g2 = _gamma(blk, 2)
        out = out * g2 if g2 is not None else out
        st["mlp"] = out
        x = x + out
        saved.append(st)
    tok = _norm64(x, m.norm)
    T = m.num_prefix_tokens
    if m.global_pool == "avg":
        pooled = _norm64(tok[:, T:].mean(1), m.fc_norm)
    else:
        pooled = _norm64(tok[:, 0], m.fc_norm)
    logits = _lin(pooled, m.head)
    torch.testing.assert_close(logits.detach(), own_logits, rtol=0, atol=1e-9)  # the replica is the model
    logits[0, target].backward()

    onehot = torch.zeros_like(logits)
    onehot[0, target] = 1.0
    tok = tok.detach()
    r = ref_linear(pooled, m.head.weight.detach(), onehot)
    if m.global_pool == "avg":
        (r,) = ref_simple(lambda t: t[:, T:].mean(1), [tok], r)
    else:
        (r,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [tok], r[:, None])
    cams = {}
    for i in range(len(m.blocks) - 1, -1, -1):
        blk, st, a = m.blocks[i], saved[i], m.blocks[i].attn
        c1, c2 = ref_add(st["x_mid"].detach(), st["mlp"].detach(), r)
        g2 = _gamma(blk, 2)
        if g2 is not None:
            c2 = ref_linear(st["mlp_out"], torch.diag(g2.detach()), c2)
        c2 = ref_linear(st["fc2_in"], blk.mlp.fc2.weight.detach(), c2)
        if st["kind"] == "mlp":
            c2 = ref_linear(st["y2"], blk.mlp.fc1.weight.detach(), c2)
        else:
            cg, cu = ref_simple(lambda p, w: p * w, [st["g"], st["u"]], c2)
            cg, cu = cg / 2, cu / 2
            if st["kind"] == "swiglu":
                c2 = ref_clone(st["y2"].detach(), [ref_linear(st["y2"], blk.mlp.fc1_g.weight.detach(), cg),
                                                   ref_linear(st["y2"], blk.mlp.fc1_x.weight.detach(), cu)])
            else:
                c_fc1 = torch.cat([cu, cg] if st["gate_last"] else [cg, cu], dim=-1)
                c2 = ref_linear(st["y2"], blk.mlp.fc1.weight.detach(), c_fc1)
        r = ref_clone(st["x_mid"].detach(), [c1, c2])
        c1, c2 = ref_add(st["x_in"].detach(), st["att"].detach(), r)
        g1 = _gamma(blk, 1)
        if g1 is not None:
            c2 = ref_linear(st["att_out"], torch.diag(g1.detach()), c2)
        c2 = ref_linear(st["proj_in"], a.proj.weight.detach(), c2)
        B, N, _ = c2.shape
        H = a.num_heads
        c2 = c2.reshape(B, N, H, -1).transpose(1, 2)
        cam_a, cam_v = ref_simple(lambda p, w: torch.einsum("bhij,bhjd->bhid", p, w), [st["A"], st["v"]], c2)
        cam_a, cam_v = cam_a / 2, cam_v / 2
        cams[i] = cam_a
        c_dots = cam_a
        if st["bias"] is not None:
            c_dots, _ = ref_add(st["dots"].detach(), st["bias"].detach(), cam_a)
        cam_q, cam_k = ref_simple(lambda p, w: torch.einsum("bhid,bhjd->bhij", p, w), [st["q"], st["k"]], c_dots)
        cam_q, cam_k = cam_q / 2, cam_k / 2
        if st["M"] is not None:  # the rotation: a Linear per patch token
            Tr, M = st["T"], st["M"]
            cq, ck = cam_q.clone(), cam_k.clone()
            for p in range(M.shape[0]):
                cq[:, :, Tr + p] = ref_linear(st["qn"][:, :, Tr + p], M[p].T, cam_q[:, :, Tr + p])
                ck[:, :, Tr + p] = ref_linear(st["kn"][:, :, Tr + p], M[p].T, cam_k[:, :, Tr + p])
            cam_q, cam_k = cq, ck
        cqkv = torch.stack([cam_q, cam_k, cam_v]).permute(1, 3, 0, 2, 4).reshape(B, N, -1)
        c2 = ref_linear(st["y"], _qkv64(a)[0].detach(), cqkv)
        r = ref_clone(st["x_in"].detach(), [c1, c2])
    mats = []
    for i in range(len(m.blocks)):
        grad = saved[i]["A"].grad[0]
        mats.append((grad * cams[i][0]).clamp(min=0).mean(0) + torch.eye(grad.shape[-1], dtype=grad.dtype))
    joint = mats[0]
    for i in range(1, len(mats)):
        joint = mats[i] @ joint
    if m.global_pool == "avg":
        return joint[T:].mean(0)
    return joint[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chefer_lrp_matches_the_float64_replica_exactly(family):
    """In float64 our closed forms (with the captured scores and rotary maps) equal the
    reference's autograd rules to rounding."""
    from vit_explore.capture import capture, inspect_vit
    from vit_explore.capture.rules import lrp_view
    from vit_explore.explainers.chefer_lrp import transformer_attribution

    model = family_model(family).double()
    x = family_input(model, batch=2).double()
    info = inspect_vit(model)
    view = lrp_view(model, info)
    trace = capture(model, x, view.needs(0), target=[1, 4], info=info)
    ours = transformer_attribution(trace, view, 0).flatten(1)
    T = model.num_prefix_tokens
    ref = torch.stack([replica(model, x[b : b + 1], t)[T:] for b, t in enumerate([1, 4])])
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("family", ["eva02_base", "beit", "dinov3"])
def test_chefer_lrp_float32_is_the_float64_map_to_rounding(family):
    model = family_model(family)
    x = family_input(model, batch=2)
    ex = vx.explain(model, x, "chefer_lrp")
    T = model.num_prefix_tokens
    ref = torch.stack([replica(model, x[b : b + 1], int(ex.target[b]))[T:] for b in range(2)])
    scale = ref.abs().amax(dim=1, keepdim=True)  # the rules divide by near-zero sums: float32 conditioning
    torch.testing.assert_close(ex.patch_map.flatten(1).double() / scale, ref / scale, rtol=0, atol=1e-3)


def test_chefer_lrp_batch_equals_per_image():
    model = family_model("eva02_base")
    x = family_input(model, batch=3)
    full = vx.explain(model, x, "chefer_lrp").patch_map
    for b in range(3):
        torch.testing.assert_close(vx.explain(model, x[b : b + 1], "chefer_lrp").patch_map[0], full[b],
                                   rtol=1e-5, atol=1e-7)


def test_chefer_lrp_refuses_post_norm_and_gated_attention():
    m = family_model("eva02", seed=1)
    from timm.models.eva import Eva

    post = Eva(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=3, use_post_norm=True)
    with pytest.raises(UnsupportedModelError, match="EvaBlockPostNorm.*pre-norm"):
        vx.explain(post.eval(), torch.randn(1, 3, 28, 28), "chefer_lrp")
    gated = Eva(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=3, attn_type="gated")
    if gated.blocks[0].attn.gate is not None:
        with pytest.raises(UnsupportedModelError, match="gate"):
            vx.explain(gated.eval(), torch.randn(1, 3, 28, 28), "chefer_lrp")
    assert math.isfinite(float(vx.explain(m, family_input(m, 1), "chefer_lrp").patch_map.sum()))
