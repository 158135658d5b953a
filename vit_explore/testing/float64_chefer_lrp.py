"""Float64 restatement of Chefer LRP ("transformer_attribution"; Chefer, Gur & Wolf, CVPR 2021,
arXiv:2012.09838; docs/methods.md §4) on the timm ViT families, for tests and
``bench/family_table.py``.

The reference's rules (``hila-chefer/Transformer-Explainability``, ``modules/layers_ours.py``)
written again with autograd, one image at a time (``ref_*``), over a float64 forward of the blocks
written out here, extended as the reference would apply them: the score bias (BEiT table, relpos,
shared bias) as the second summand of the scores (its Add rule), the rotary embedding as a Linear
per patch token (alpha=1/beta=0, its matrix from a restatement of the rotation), a gated MLP's
product by its einsum rule (each factor's share halved), layer scale as a Linear with ``diag(γ)``,
the distilled head's two heads by its Add rule. Nothing here calls into ``vit_explore``
outside ``vit_explore.testing``.

The map is the read-out row ``w`` of ``J - I``, ``J = Π_l (Ā_l + I)``, on the patch columns: for a
class token (or the distilled pair) that is the reference's ``J[0, 1:]`` (the identity adds nothing
to a prefix row's patch columns); for a mean-pool read-out it leaves out the read-out's own
identity term ``w I``, a constant ``1/P`` per patch (docs/methods.md §4.4). ``J - I`` is accumulated
as ``D ← Ā + D + Ā D`` so that the constant is never added and subtracted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .float64_model import _norm64, _rotate64, model64, patch_size64, readout64

# ------------------------------------------------------------------ the reference's rules


def ref_sdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's ``safe_divide``, verbatim."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def ref_simple(f, xs: list[torch.Tensor], r: torch.Tensor) -> list[torch.Tensor]:
    """RelPropSimple: ``S = R / f(X)``; ``C = dZ/dX^T S`` (autograd); ``R_X = X * C``."""
    xs = [x.detach().requires_grad_(True) for x in xs]
    with torch.enable_grad():
        z = f(*xs)
        s = ref_sdiv(r, z)
        cs = torch.autograd.grad(z, xs, s)
    return [x.detach() * c for x, c in zip(xs, cs)]


def ref_linear(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``layers_ours.Linear.relprop`` (alpha / beta, bias ignored), autograd and all."""
    beta = alpha - 1
    x = x.detach().requires_grad_(True)
    w = w.detach()
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)

    def f(w1: torch.Tensor, w2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = F.linear(x1, w1), F.linear(x2, w2)
        s1, s2 = ref_sdiv(r, z1 + z2), ref_sdiv(r, z1 + z2)
        c1 = x1 * torch.autograd.grad(z1, x1, s1, retain_graph=True)[0]
        c2 = x2 * torch.autograd.grad(z2, x2, s2, retain_graph=True)[0]
        return c1 + c2

    with torch.enable_grad():
        return (alpha * f(pw, nw, px, nx) - beta * f(nw, pw, px, nx)).detach()


def ref_add(x0: torch.Tensor, x1: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``layers_ours.Add.relprop``: the simple rule, then each branch rescaled to its share
    ``|Σ a| : |Σ b|`` of ``Σ R``."""
    a, b = ref_simple(lambda u, v: u + v, [x0, x1], r)
    a_sum, b_sum = a.sum(), b.sum()
    a_fact = ref_sdiv(a_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    b_fact = ref_sdiv(b_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    return a * ref_sdiv(a_fact, a.sum()), b * ref_sdiv(b_fact, b.sum())


def ref_clone(x: torch.Tensor, rs: list[torch.Tensor]) -> torch.Tensor:
    """``layers_ours.Clone.relprop``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        zs = [x for _ in rs]
        ss = [ref_sdiv(r, z) for r, z in zip(rs, zs)]
        c = torch.autograd.grad(zs, x, ss)[0]
    return x.detach() * c


# ------------------------------------------------------------------ family pieces


def rope_matrices64(emb: torch.Tensor, half: bool) -> torch.Tensor:
    """The rotation (P, D, D) of each patch token as a matrix, ``_rotate64`` applied to the basis."""
    D = emb.shape[-1] // 2
    eye = torch.eye(D, dtype=torch.float64)[:, None, :]  # (D_in, 1, D)
    return _rotate64(eye, emb.double(), half).permute(1, 0, 2)  # (P, D_in, D_out)


def bias64(attn: nn.Module, kwargs: dict, N: int) -> torch.Tensor | None:
    """The additive score bias (H, N, N) of a relative-position family in float64, or None:
    BEiT's table gathered by its relative position index, ``rel_pos``'s bias, the shared bias."""
    out = None
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        idx = attn.relative_position_index.reshape(-1)
        out = table.double()[idx].reshape(N, N, -1).permute(2, 0, 1)
    rel = getattr(attn, "rel_pos", None)
    if rel is not None:
        out = rel.get_bias().double()[0] if out is None else out + rel.get_bias().double()[0]
    for key in ("shared_rel_pos_bias", "shared_rel_pos"):
        if kwargs.get(key) is not None:
            t = kwargs[key].double().reshape(-1, N, N)
            out = t if out is None else out + t
    return out


def qkv64(a: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused (3C, C) weight and (3C,) bias of q, k, v (a ``qkv`` Linear, BEiT's q/v biases,
    or EVA's separate projections)."""
    if getattr(a, "qkv", None) is not None:
        if getattr(a, "q_bias", None) is not None:
            return a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        b = a.qkv.bias if a.qkv.bias is not None else torch.zeros_like(a.qkv.weight[:, 0])
        return a.qkv.weight, b
    projs = (a.q_proj, a.k_proj, a.v_proj)
    bs = [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projs]
    return torch.cat([p.weight for p in projs]), torch.cat(bs)


def gamma64(blk: nn.Module, i: int) -> torch.Tensor | None:
    """Layer scale ``γ_i`` of a block (timm ``ls{i}.gamma``, BEiT / EVA ``gamma_{i}``), or None."""
    ls = getattr(blk, f"ls{i}", None)
    return getattr(ls, "gamma", None) if ls is not None else getattr(blk, f"gamma_{i}", None)


def _lin(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


def _block_kwargs(m: nn.Module, x1: torch.Tensor) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """(tokens into the first block, each attention's keyword arguments, the model's logits)."""
    got: dict = {}
    hs = [m.blocks[0].register_forward_pre_hook(lambda mod, args: got.update(tokens=args[0]))]
    for i, blk in enumerate(m.blocks):
        hs.append(blk.attn.register_forward_pre_hook(lambda mod, args, kw, i=i: got.update({i: kw}), with_kwargs=True))
    try:
        with torch.no_grad():
            logits = m(x1.double())
    finally:
        for h in hs:
            h.remove()
    return got["tokens"], [got[i] for i in range(len(m.blocks))], logits


# ------------------------------------------------------------------ forward with every layer's input


def _forward(m: nn.Module, x: torch.Tensor, kws: list[dict]) -> tuple[list[dict], dict]:
    """The blocks and head written out in float64 from the tokens ``x`` (1, N, C) (requires grad):
    per block the tensors the rules need; the head's (tok, pooled, yh, yd, logits)."""
    ident = nn.Identity()
    saved = []
    for i, blk in enumerate(m.blocks):
        a, kw, st = blk.attn, kws[i], {"x_in": x}
        B, N, _ = x.shape
        H = a.num_heads
        y = _norm64(x, blk.norm1)
        st["y"] = y
        W, b = qkv64(a)
        q, k, v = F.linear(y, W, b).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
        qn, kn = _norm64(q, getattr(a, "q_norm", ident)), _norm64(k, getattr(a, "k_norm", ident))
        st.update(qn=qn, kn=kn, v=v, M=None)
        if kw.get("rope") is not None:
            T = a.num_prefix_tokens
            M = rope_matrices64(kw["rope"], bool(getattr(a, "rotate_half", False)))
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
        g1 = gamma64(blk, 1)
        att = att * g1 if g1 is not None else att
        st["att"] = att
        x = x + att
        st["x_mid"] = x
        y2 = _norm64(x, blk.norm2)
        st["y2"] = y2
        mlp = blk.mlp
        if hasattr(mlp, "fc1_g"):  # SwiGLU: act(fc1_g(x)) * fc1_x(x)
            g, u = mlp.act(_lin(y2, mlp.fc1_g)), _lin(y2, mlp.fc1_x)
            st.update(g=g, u=u, kind="swiglu")
            hdn = g * u
        elif hasattr(mlp, "gate_last"):  # GluMlp: fc1's two halves, one through the activation
            x1, x2 = _lin(y2, mlp.fc1).chunk(2, dim=-1)
            g, u = (mlp.act(x2), x1) if mlp.gate_last else (mlp.act(x1), x2)
            st.update(g=g, u=u, kind="glu", gate_last=mlp.gate_last)
            hdn = g * u
        else:
            hdn = mlp.act(_lin(y2, mlp.fc1))
            st["kind"] = "mlp"
        hdn = _norm64(hdn, getattr(mlp, "norm", ident))
        st["fc2_in"] = hdn
        out = _lin(hdn, mlp.fc2)
        st["mlp_out"] = out
        g2 = gamma64(blk, 2)
        out = out * g2 if g2 is not None else out
        st["mlp"] = out
        x = x + out
        saved.append(st)
    tok = _norm64(x, m.norm)
    T = int(m.num_prefix_tokens)
    head: dict = {"tok": tok}
    if getattr(m, "global_pool", "token") == "avg":
        lo = 0 if getattr(m, "pool_include_prefix", False) else T
        head.update(lo=lo, pooled=_norm64(tok[:, lo:].mean(1), getattr(m, "fc_norm", ident)))
        head["logits"] = _lin(head["pooled"], m.head)
    elif getattr(m, "attn_pool", None) is not None:
        head["pool"] = _pool64(m.attn_pool, tok[:, 0 if getattr(m, "pool_include_prefix", False) else T :])
        head["pooled"] = _norm64(head["pool"]["out"], getattr(m, "fc_norm", ident))  # the head's input
        head["logits"] = _lin(head["pooled"], m.head)
    elif getattr(m, "dist_token", None) is not None and hasattr(m, "head_dist"):
        head.update(yh=_lin(tok[:, 0], m.head), yd=_lin(tok[:, 1], m.head_dist))
        head["logits"] = (head["yh"] + head["yd"]) / 2
    else:
        head["pooled"] = _norm64(tok[:, 0], getattr(m, "fc_norm", ident))
        head["logits"] = _lin(head["pooled"], m.head)
    return saved, head


def _pool64(P: nn.Module, xt: torch.Tensor) -> dict:
    """timm's ``AttentionPoolLatent`` (no pos_embed, no mask) written out in float64 over the tokens
    ``xt`` (1, K, C): the tensors its relevance rules read, and its output ``out`` (1, C)."""
    ident = nn.Identity()
    _, K, C = xt.shape
    H, Q = P.num_heads, P.latent.shape[1]
    q = _lin(P.latent, P.q) if isinstance(P.q, nn.Linear) else P.latent
    qn = _norm64(q.reshape(1, Q, H, -1).transpose(1, 2), P.q_norm)
    k, v = _lin(xt, P.kv).reshape(1, K, 2, H, -1).permute(2, 0, 3, 1, 4)
    kn = _norm64(k, P.k_norm)
    A = torch.einsum("bhqd,bhkd->bhqk", qn * P.scale, kn).softmax(-1)
    A.retain_grad()
    o = torch.einsum("bhqk,bhkd->bhqd", A, v).transpose(1, 2).reshape(1, Q, C)
    z = _lin(o, P.proj)
    y2 = _norm64(z, P.norm)
    hdn = _norm64(P.mlp.act(_lin(y2, P.mlp.fc1)), getattr(P.mlp, "norm", ident))
    mo = _lin(hdn, P.mlp.fc2)
    y = z + mo
    avg = P.pool == "avg"
    return {"xt": xt, "qn": qn, "kn": kn, "v": v, "A": A, "o": o, "z": z, "y2": y2, "hdn": hdn, "mo": mo, "y": y,
            "avg": avg, "out": y.mean(1) if avg else y[:, 0]}


def _pool_relevance64(m: nn.Module, st: dict, r: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's rules through the MAP head from the relevance ``r`` (1, C) of its output:
    (relevance (1, N, C) of the final tokens, the pool's row ``Σ_q w_q E_h[(∇A ⊙ R_A)^+]`` (N,))."""
    P, y = m.attn_pool, st["y"].detach()
    Q = y.shape[1]
    if st["avg"]:
        (r_y,) = ref_simple(lambda t: t.mean(1), [y], r)
    else:
        (r_y,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [y], r[:, None])
    c1, c2 = ref_add(st["z"].detach(), st["mo"].detach(), r_y)
    c2 = ref_linear(st["hdn"], P.mlp.fc2.weight, c2)
    c2 = ref_linear(st["y2"], P.mlp.fc1.weight, c2)
    c = ref_linear(st["o"], P.proj.weight, ref_clone(st["z"], [c1, c2]))
    c = c.reshape(1, Q, P.num_heads, -1).transpose(1, 2)
    cam_a, cam_v = ref_simple(lambda p, w: torch.einsum("bhqk,bhkd->bhqd", p, w), [st["A"], st["v"]], c)
    cam_a, cam_v = cam_a / 2, cam_v / 2
    _, cam_k = ref_simple(lambda p, w: torch.einsum("bhqd,bhkd->bhqk", p, w), [st["qn"], st["kn"]], cam_a)
    K = cam_k.shape[2]
    ckv = torch.stack([cam_k / 2, cam_v]).permute(1, 3, 0, 2, 4).reshape(1, K, -1)
    r_x = ref_linear(st["xt"], P.kv.weight, ckv)
    lw = torch.full((Q,), 1.0 / Q, dtype=torch.float64) if st["avg"] else torch.eye(Q, dtype=torch.float64)[0]
    row = lw @ (st["A"].grad[0] * cam_a[0]).clamp(min=0).mean(0)  # (K,)
    r_tok, w = torch.zeros(1, N, r_x.shape[-1], dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    r_tok[:, N - K :], w[N - K :] = r_x, row
    return r_tok, w


def _head_relevance(m: nn.Module, head: dict, target: int) -> torch.Tensor:
    """Relevance (1, N, C) of the final tokens from the one-hot target (the reference's head:
    Linear rule, IndexSelect; the mean pool's simple rule; the distilled heads' Add rule)."""
    logits, tok = head["logits"], head["tok"].detach()
    onehot = torch.zeros_like(logits)
    onehot[0, target] = 1.0
    if "lo" in head:
        r = ref_linear(head["pooled"], m.head.weight, onehot)  # fc_norm: identity
        (r,) = ref_simple(lambda t: t[:, head["lo"] :].mean(1), [tok], r)
        return r
    if "yd" in head:
        rh, rd = ref_add(head["yh"].detach(), head["yd"].detach(), onehot)
        rh = ref_linear(tok[:, 0], m.head.weight, rh)
        rd = ref_linear(tok[:, 1], m.head_dist.weight, rd)
        (r0,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [tok], rh[:, None])
        (r1,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([1])), [tok], rd[:, None])
        return r0 + r1
    r = ref_linear(head["pooled"], m.head.weight, onehot)
    (r,) = ref_simple(lambda t: torch.index_select(t, 1, torch.tensor([0])), [tok], r[:, None])
    return r


def _attention_relevance(m: nn.Module, saved: list[dict], r: torch.Tensor, start_layer: int) -> dict[int, torch.Tensor]:
    """The halved relevance of every attention (1, H, N, N) from block L-1 down to ``start_layer``."""
    cams = {}
    for i in range(len(m.blocks) - 1, start_layer - 1, -1):
        blk, st, a = m.blocks[i], saved[i], m.blocks[i].attn
        c1, c2 = ref_add(st["x_mid"].detach(), st["mlp"].detach(), r)
        g2 = gamma64(blk, 2)
        if g2 is not None:
            c2 = ref_linear(st["mlp_out"], torch.diag(g2), c2)
        c2 = ref_linear(st["fc2_in"], blk.mlp.fc2.weight, c2)
        if st["kind"] == "mlp":  # the activation: identity
            c2 = ref_linear(st["y2"], blk.mlp.fc1.weight, c2)
        else:
            cg, cu = ref_simple(lambda p, w: p * w, [st["g"], st["u"]], c2)
            cg, cu = cg / 2, cu / 2
            if st["kind"] == "swiglu":
                c2 = ref_clone(st["y2"], [ref_linear(st["y2"], blk.mlp.fc1_g.weight, cg),
                                          ref_linear(st["y2"], blk.mlp.fc1_x.weight, cu)])
            else:
                c_fc1 = torch.cat([cu, cg] if st["gate_last"] else [cg, cu], dim=-1)
                c2 = ref_linear(st["y2"], blk.mlp.fc1.weight, c_fc1)
        r = ref_clone(st["x_mid"], [c1, c2])
        c1, c2 = ref_add(st["x_in"].detach(), st["att"].detach(), r)
        g1 = gamma64(blk, 1)
        if g1 is not None:
            c2 = ref_linear(st["att_out"], torch.diag(g1), c2)
        c2 = ref_linear(st["proj_in"], a.proj.weight, c2)
        B, N, _ = c2.shape
        c2 = c2.reshape(B, N, a.num_heads, -1).transpose(1, 2)
        cam_a, cam_v = ref_simple(lambda p, w: torch.einsum("bhij,bhjd->bhid", p, w), [st["A"], st["v"]], c2)
        cam_a, cam_v = cam_a / 2, cam_v / 2
        cams[i] = cam_a
        if i == start_layer:
            break
        c_dots = cam_a
        if st["bias"] is not None:  # scores = q kᵀ scale + bias: the Add rule
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
        c2 = ref_linear(st["y"], qkv64(a)[0], cqkv)
        r = ref_clone(st["x_in"], [c1, c2])
    return cams


def restates(model: nn.Module) -> bool:
    """Read-outs written out here that the other restatements do not cover (``bench/family_table.py``):
    a timm ViT with its ``AttentionPoolLatent`` (MAP) head over timm ``Attention`` blocks, CaiT, ConViT."""
    if type(model).__name__ == "Cait":  # float64_chefer_cait
        return all(type(b.attn).__name__ == "TalkingHeadAttn" for b in model.blocks) and all(
            type(b.attn).__name__ == "ClassAttn" for b in model.blocks_token_only)
    if type(model).__name__ == "ConVit":  # float64_chefer_convit
        return all(type(b.attn).__name__ in ("GPSA", "MHSA") for b in model.blocks)
    pool = getattr(model, "attn_pool", None)
    return (
        type(pool).__name__ == "AttentionPoolLatent"
        and getattr(pool, "pos_embed", None) is None
        and all(type(b.attn).__name__ == "Attention" for b in getattr(model, "blocks", ()))
    )


def chefer_row64(model: nn.Module, x1: torch.Tensor, target: int, start_layer: int = 0) -> torch.Tensor:
    """Chefer LRP of one image x1 (1, 3, H, W), float64: the read-out row (N,) of ``J - I``
    (all N columns; the map is its patch columns)."""
    m = model64(model)
    for p in m.parameters():
        p.requires_grad_(False)
    tokens, kws, own_logits = _block_kwargs(m, x1)
    with torch.enable_grad():
        saved, head = _forward(m, tokens.detach().requires_grad_(True), kws)
        if not torch.allclose(head["logits"].detach(), own_logits, rtol=0, atol=1e-9):
            raise AssertionError("the float64 restatement of the blocks is not the model")  # the replica is the model
        head["logits"][0, target].backward()
    N = saved[0]["A"].shape[-1]
    if "pool" in head:  # MAP: the pool's relevance-weighted row w, and the map w J (docs/methods.md §4.4)
        onehot = torch.zeros_like(head["logits"])
        onehot[0, target] = 1.0
        r, w = _pool_relevance64(m, head["pool"], ref_linear(head["pooled"], m.head.weight, onehot), N)
    else:
        r, w = _head_relevance(m, head, target), None
    cams = _attention_relevance(m, saved, r, start_layer)
    D = torch.zeros(N, N, dtype=torch.float64)
    for i in range(start_layer, len(m.blocks)):  # J - I, J = (Ā_{L-1}+I) … (Ā_start+I)
        a_bar = (saved[i]["A"].grad[0] * cams[i][0]).clamp(min=0).mean(0)
        D = a_bar + D + a_bar @ D
    return readout64(m, N) @ D if w is None else w @ D + w


def chefer_lrp64(model: nn.Module, x: torch.Tensor, target: torch.Tensor, start_layer: int = 0) -> torch.Tensor:
    """Chefer LRP (B, gh, gw) in float64, image by image (the reference's batch of one)."""
    T = int(model.num_prefix_tokens)
    ph, pw = patch_size64(model)
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    row64 = chefer_row64
    if getattr(model, "blocks_token_only", None) is not None:  # CaiT: its own restatement
        from .float64_chefer_cait import cait_row64 as row64
    elif getattr(model, "local_up_to_layer", None) is not None:  # ConViT
        from .float64_chefer_convit import convit_row64 as row64
    rows = [row64(model, x[b : b + 1], int(target[b]), start_layer)[T:] for b in range(x.shape[0])]
    return torch.stack(rows).reshape(-1, *grid)
