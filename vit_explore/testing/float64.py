"""Float64 restatements of the attention methods (and of saliency, integrated gradients, Grad-CAM,
occlusion, token drop and noise), for tests and ``bench/family_table.py``.

Each function restates a method's math, written again from its paper / docs/methods.md, over
the attention, gradients and scores of the model run in float64 on timm's unfused attention
path (``run64``): nothing here calls into ``vit_explore.explainers`` or ``vit_explore.capture``.
The scores are restated from the attention module's weights (``scores64``: qkv, q/k norm, the
rotary embedding of the patch tokens, every additive relative position bias), not taken from
the model's softmax. The read-out row is derived from the timm model's own attributes
(``global_pool``, a distillation head, ``num_prefix_tokens``).

Families: timm ``Attention`` (ViT, DeiT, DINOv2, CLIP, SigLIP-GAP, ...), EVA / EVA-02 / RoPE /
DINOv3 (rotary), BEiT / BEiT v2 and relpos / srelpos (relative position bias).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "METHODS64",
    "Run64",
    "ag_cam64",
    "attention_flow64",
    "attn_grad_cam64",
    "chefer_generic64",
    "close_to",
    "dropped64",
    "grad_cam64",
    "integrated_gradients64",
    "model64",
    "noised64",
    "occlusion64",
    "raw_attention64",
    "readout64",
    "reference64",
    "rollout64",
    "run64",
    "saliency64",
    "scores64",
    "tam64",
    "vit_cx64",
]


# --------------------------------------------------------------------------- the float64 model


def model64(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode on timm's unfused attention path."""
    m = copy.deepcopy(model).double().eval()
    for blk in m.blocks:
        blk.attn.fused_attn = False
    return m


def readout64(model: nn.Module, N: int) -> torch.Tensor:
    """Weights (N,) over the query rows whose weighted sum is the row the classifier reads:
    the class token (``global_pool='token'``), the mean of the class and distillation tokens
    (a distilled DeiT), or the mean of the patch tokens (``'avg'``; every token with
    ``pool_include_prefix``)."""
    T = int(model.num_prefix_tokens)
    w = torch.zeros(N, dtype=torch.float64)
    pool = getattr(model, "global_pool", "token")
    if pool == "token":
        if getattr(model, "dist_token", None) is not None and hasattr(model, "head_dist"):
            w[:2] = 0.5
        else:
            w[0] = 1.0
    elif pool == "avg":
        if getattr(model, "pool_include_prefix", False):
            w[:] = 1.0 / N
        else:
            w[T:] = 1.0 / (N - T)
    else:
        raise ValueError(f"no float64 read-out for global_pool={pool!r}")
    return w


def _norm64(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    if isinstance(mod, nn.Identity):
        return x
    raise ValueError(f"no float64 restatement of a {type(mod).__name__} q/k norm")


def _rotate64(x: torch.Tensor, emb: torch.Tensor, half: bool) -> torch.Tensor:
    """``x cos + rot(x) sin`` per pair of channels (interleaved pairs, or the two halves)."""
    sin, cos = emb.tensor_split(2, -1)
    D = x.shape[-1]
    if half:
        rot = torch.cat([-x[..., D // 2 :], x[..., : D // 2]], dim=-1)
    else:
        rot = torch.empty_like(x)
        rot[..., 0::2] = -x[..., 1::2]
        rot[..., 1::2] = x[..., 0::2]
    return x * cos + rot * sin


def scores64(attn: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Scores (B, H, N, N) of one attention module from its float64 input and keyword
    arguments, restated from its weights: ``(rope(q_norm(q))·scale) rope(k_norm(k))ᵀ`` plus
    the BEiT bias table gathered by its relative position index, ``rel_pos``'s bias, the
    model's shared bias and an additive mask."""
    B, N, _ = x.shape
    H = attn.num_heads
    if getattr(attn, "qkv", None) is None:
        lins = (attn.q_proj, attn.k_proj, attn.v_proj)
        W = torch.cat([p.weight for p in lins])
        b = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features, dtype=x.dtype) for p in lins])
    elif getattr(attn, "q_bias", None) is not None:
        W, b = attn.qkv.weight, torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    else:
        W, b = attn.qkv.weight, attn.qkv.bias
    q, k, _v = F.linear(x, W, b).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
    ident = nn.Identity()
    q, k = _norm64(q, getattr(attn, "q_norm", ident)), _norm64(k, getattr(attn, "k_norm", ident))
    rope = kwargs.get("rope")
    if rope is not None:
        T, half = attn.num_prefix_tokens, bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], rope, half)], dim=2)
        k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], rope, half)], dim=2)
    s = (q * attn.scale) @ k.transpose(-1, -2)
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        idx = attn.relative_position_index.reshape(-1)
        s = s + table[idx].reshape(N, N, -1).permute(2, 0, 1)
    rel = getattr(attn, "rel_pos", None)
    if rel is not None:
        s = s + rel.get_bias()
    for key in ("shared_rel_pos_bias", "shared_rel_pos", "attn_mask"):
        if kwargs.get(key) is not None:
            s = s + kwargs[key]
    return s


@dataclass
class Run64:
    """One float64 pass: logits (B, C); per block the attention A (B, H, N, N) at ``attn_drop``'s
    output, its gradient G of the target logits, the restated scores S; the read-out weights w."""

    logits: torch.Tensor
    A: list[torch.Tensor]
    G: list[torch.Tensor]
    S: list[torch.Tensor]
    w: torch.Tensor
    T: int
    grid: tuple[int, int]


def run64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, detach_attn_input: bool = False) -> Run64:
    """Run ``m64`` (``model64``) on ``x``; gradients of ``Σ_b logits[b, target[b]]``.
    ``detach_attn_input``: each attention's input detached (AG-CAM's graph)."""
    attns: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []

    def pre(mod, args, kwargs):
        xin = args[0].detach().requires_grad_(True) if detach_attn_input else args[0]
        scores.append(scores64(mod, xin.detach(), kwargs).detach())
        return (xin, *args[1:]), kwargs

    handles = []
    for blk in m64.blocks:
        handles.append(blk.attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda mod, a, out: attns.append(out)))
    try:
        with torch.enable_grad():
            xin = x.detach().double().requires_grad_(True)
            logits = m64(xin)
            G = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attns)
    finally:
        for h in handles:
            h.remove()
    ph, pw = m64.patch_embed.patch_size
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    N = attns[0].shape[-1]
    return Run64(logits.detach(), [a.detach() for a in attns], list(G), scores, readout64(m64, N),
                 int(m64.num_prefix_tokens), grid)


def _patches(r: Run64, v: torch.Tensor) -> torch.Tensor:
    """(B, N) token vector -> (B, gh, gw) patch entries."""
    return v[:, r.T :].reshape(v.shape[0], *r.grid)


def _row(r: Run64, m: torch.Tensor) -> torch.Tensor:
    """Read-out row ``w M`` of (B, N, N) matrices: (B, N)."""
    return torch.einsum("n,bnm->bm", r.w, m)


def _hat(a: torch.Tensor) -> torch.Tensor:
    """``rownorm(a + I)`` of (..., N, N)."""
    a = a + torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(-1, keepdim=True)


# --------------------------------------------------------------------------- the methods


def raw_attention64(r: Run64) -> torch.Tensor:
    """The last block's head-mean attention, read-out row (Chefer et al. 2021's baseline)."""
    return _patches(r, _row(r, r.A[-1].mean(1)))


def rollout64(r: Run64) -> torch.Tensor:
    """Abnar & Zuidema 2020: ``J = Â_{L-1} … Â_0``, ``Â = rownorm(E_h A + I)``; read-out row of J."""
    J = torch.eye(r.A[0].shape[-1], dtype=torch.float64).expand(r.A[0].shape[0], -1, -1)
    for a in r.A:
        J = _hat(a.mean(1)) @ J
    return _patches(r, _row(r, J))


def attention_flow64(r: Run64) -> torch.Tensor:
    """Abnar & Zuidema 2020: max-flow (networkx) on the layered graph with capacities
    ``Â_l[f, t]`` from token f of layer l+1 to token t of layer l, from a source feeding the
    read-out tokens of the top layer (capacity w), to each input token; normalised to sum 1."""
    import networkx as nx

    L, B = len(r.A), r.A[0].shape[0]
    N = r.A[0].shape[-1]
    out = []
    for b in range(B):
        g = nx.DiGraph()
        for i in range(1, L + 1):
            ah = _hat(r.A[i - 1][b].mean(0)).numpy()
            for f in range(N):
                for t in range(N):
                    g.add_edge((i, f), (i - 1, t), capacity=float(ah[f, t]))
        for f in range(N):
            if r.w[f] > 0:
                g.add_edge("s", (L, f), capacity=float(r.w[f]))
        flows = np.array([nx.maximum_flow_value(g, "s", (0, t)) for t in range(N)])
        out.append(torch.from_numpy(flows / flows.sum()))
    return _patches(r, torch.stack(out))


def chefer_generic64(r: Run64) -> torch.Tensor:
    """Chefer, Gur & Wolf, ICCV 2021: ``R = I``; ``R ← R + E_h[(∇A ⊙ A)^+] R`` for every block,
    first block first; read-out row of R."""
    B, N = r.A[0].shape[0], r.A[0].shape[-1]
    R = torch.eye(N, dtype=torch.float64).repeat(B, 1, 1)
    for a, g in zip(r.A, r.G):
        R = R + (g * a).clamp(min=0).mean(1) @ R
    return _patches(r, _row(r, R))


def attn_grad_cam64(r: Run64) -> torch.Tensor:
    """Grad-CAM on the last attention (Chefer et al. 2021's baseline): per head the read-out
    row's patch columns a_h, g_h of A and ∇A; ``w_h = mean(g_h)``; ``(E_h w_h a_h)^+``."""
    a = torch.stack([_patches(r, _row(r, r.A[-1][:, h])) for h in range(r.A[-1].shape[1])], 1)
    g = torch.stack([_patches(r, _row(r, r.G[-1][:, h])) for h in range(r.G[-1].shape[1])], 1)
    w = g.mean(dim=(-2, -1), keepdim=True)
    return (w * a).mean(1).clamp(min=0)


def ag_cam64(r: Run64) -> torch.Tensor:
    """Leem & Seo, AAAI 2024: ``Σ_l Σ_h`` read-out row of ``ReLU(∇A) ⊙ σ(S)``, with ∇A from the
    graph whose attention inputs are detached (``run64(..., detach_attn_input=True)``)."""
    total = 0
    for g, s in zip(r.G, r.S):
        m = g.clamp(min=0) * torch.sigmoid(s)
        total = total + sum(_patches(r, _row(r, m[:, h])) for h in range(m.shape[1]))
    return total


def tam64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Yuan et al. 2021 (Transition Attention Maps): states ``s = w E_h A_{L-1}``, then
    ``s ← s E_h A_i + s`` for i = L-2 … 0; weights ``w E_h[(mean_α ∇A_{L-1}(α x))^+]`` over
    ``α ∈ linspace(0, 1, steps)``; the product on the patch columns."""
    r = run64(m64, x, target)
    grads = [run64(m64, float(a) * x.double(), target).G[-1] for a in np.linspace(0, 1, steps)]
    W = _row(r, (sum(grads) / steps).clamp(min=0).mean(1))
    s = _row(r, r.A[-1].mean(1))
    for i in range(len(r.A) - 2, -1, -1):
        s = torch.einsum("bn,bnm->bm", s, r.A[i].mean(1)) + s
    return _patches(r, s * W)


def vit_cx64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, seed: int = 0, threshold: float = 0.1,
             sigma: float = 0.1) -> torch.Tensor:
    """Xie et al., ViT-CX (IJCAI 2023), per image: the last block's ``norm1`` patch features
    upsampled bilinearly to the input size, min-max normalised per channel; channels merged by
    complete-linkage clustering of their cosine distances (threshold); each cluster's summed
    masks min-max normalised; mask k scored ``p_c(x M_k + ε_k (1 - M_k)) - p_c(x + ε_k (1 - M_k))
    + p_c(x)`` with ``ε_k = σ randn`` (seeded generator); the saliency
    ``(1/K) Σ_k score_k M_k / Σ_k M_k``; the map is its mean over each patch."""
    from sklearn.cluster import AgglomerativeClustering

    T = int(m64.num_prefix_tokens)
    ph, pw = m64.patch_embed.patch_size
    out = []
    for b in range(x.shape[0]):
        x1 = x[b : b + 1].double()
        feats = []
        h = m64.blocks[-1].norm1.register_forward_hook(lambda m, a, o, feats=feats: feats.append(o.detach()))
        try:
            with torch.no_grad():
                p = m64(x1).softmax(-1)[0]
        finally:
            h.remove()
        c = int(target[b])
        H, W = x1.shape[-2:]
        gh, gw = H // ph, W // pw
        fm = feats[0][0, T:].T.reshape(-1, gh, gw)
        up = F.interpolate(fm[None], size=(H, W), mode="bilinear", align_corners=False)[0].reshape(fm.shape[0], -1)
        mn, mx = up.min(1, keepdim=True).values, up.max(1, keepdim=True).values
        mm = (up - mn) / (mx - mn)
        nrm = torch.linalg.norm(mm, dim=1)
        sim = torch.nan_to_num((mm @ mm.T) / (nrm[:, None] * nrm[None, :]))
        labels = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="precomputed",
                                         linkage="complete").fit((1 - sim).numpy()).labels_
        K = len(set(labels))
        merged = torch.zeros(K, H * W, dtype=torch.float64)
        for i, lab in enumerate(labels):
            merged[lab] += torch.nan_to_num(mm[i])
        lo, hi = merged.min(1, keepdim=True).values, merged.max(1, keepdim=True).values
        masks = torch.nan_to_num((merged - lo) / (hi - lo)).reshape(K, H, W)
        eps = torch.randn(K, 3, H, W, generator=torch.Generator().manual_seed(seed)).double() * sigma
        with torch.no_grad():
            pk = m64(x1 * masks[:, None] + eps * (1 - masks[:, None])).softmax(-1)[:, c]
            pr = m64(x1 + eps * (1 - masks[:, None])).softmax(-1)[:, c]
        score = pk - pr + p[c]
        sal = (score[:, None, None] * masks / masks.sum(0)).sum(0) / K
        out.append(F.avg_pool2d(sal[None, None], (ph, pw))[0, 0, :gh, :gw])
    return torch.stack(out)


# --------------------------------------------------------------------------- gradient and perturbation methods


def _grid(m64: nn.Module, x: torch.Tensor) -> tuple[int, int, int, int]:
    ph, pw = m64.patch_embed.patch_size
    return x.shape[-2] // ph, x.shape[-1] // pw, ph, pw


def _patch_sum(m64: nn.Module, pixel: torch.Tensor) -> torch.Tensor:
    """(B, H, W) pixel map summed within each patch: (B, gh, gw)."""
    ph, pw = m64.patch_embed.patch_size
    B, H, W = pixel.shape
    return pixel[:, : H // ph * ph, : W // pw * pw].reshape(B, H // ph, ph, W // pw, pw).sum(dim=(2, 4))


def _input_grad(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xin = x.detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(m64(xin).gather(1, target[:, None]).sum(), xin)
    return g


def saliency64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. 2014: ``max_c |∂y_t/∂x_c|`` per pixel, summed within each patch."""
    return _patch_sum(m64, _input_grad(m64, x, target).abs().amax(1))


def integrated_gradients64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int) -> torch.Tensor:
    """Sundararajan et al. 2017 from the all-zero baseline, trapezoid rule on ``steps`` points
    ``α_k = k/(steps-1)``: ``x ⊙ Σ_k w_k ∇y_t(α_k x)``, summed over channels and within each patch."""
    total = torch.zeros_like(x, dtype=torch.float64)
    for k in range(steps):
        w = (0.5 if k in (0, steps - 1) else 1.0) / (steps - 1)
        total += w * _input_grad(m64, k / (steps - 1) * x.double(), target)
    return _patch_sum(m64, (x.double() * total).sum(1))


def grad_cam64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al. 2017 on the patch tokens entering the last block (its ``norm1`` output):
    ``ReLU(Σ_c α_c A_c)``, ``α_c`` the target's gradient averaged over the patches."""
    gh, gw, _, _ = _grid(m64, x)
    got = []
    h = m64.blocks[-1].norm1.register_forward_hook(lambda m, a, o: got.append(o))
    try:
        with torch.enable_grad():
            logits = m64(x.detach().double())
            (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), got[0])
    finally:
        h.remove()
    T = int(m64.num_prefix_tokens)
    a, g = got[0].detach()[:, T:], g[:, T:]
    return torch.einsum("bpc,bc->bp", a, g.mean(1)).clamp(min=0).reshape(-1, gh, gw)


def occlusion64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Zeiler & Fergus 2014 with one-patch windows: ``p_t(x) - p_t(x with the patch's pixels
    set to 0)`` per patch (softmax probability)."""
    gh, gw, ph, pw = _grid(m64, x)
    x = x.double()
    with torch.no_grad():
        base = m64(x).softmax(-1).gather(1, target[:, None])[:, 0]
        out = torch.zeros(x.shape[0], gh, gw, dtype=torch.float64)
        for r in range(gh):
            for c in range(gw):
                y = x.clone()
                y[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = 0
                out[:, r, c] = base - m64(y).softmax(-1).gather(1, target[:, None])[:, 0]
    return out


# --------------------------------------------------------------------------- interventions


class _KeptAttention(nn.Module):
    """Float64 attention of one block on the kept tokens ``rows`` (n,) of a sequence of ``full``,
    written out: qkv, q/k norm, the full rotary tensor's rows of the kept patches, ``(q·scale) kᵀ``
    plus the full bias's kept rows and columns, softmax, ``@ v``, the optional scale norm and
    sigmoid gate, ``proj``."""

    def __init__(self, attn: nn.Module, rows: torch.Tensor, T: int, full: int) -> None:
        super().__init__()
        self.attn, self.rows, self.T, self.full = attn, rows, T, full

    def forward(self, x: torch.Tensor, **kw) -> torch.Tensor:
        a, rows, T = self.attn, self.rows, self.T
        B, n, _ = x.shape
        H = a.num_heads
        if getattr(a, "qkv", None) is None:
            lins = (a.q_proj, a.k_proj, a.v_proj)
            W = torch.cat([p.weight for p in lins])
            b = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features, dtype=x.dtype) for p in lins])
        elif getattr(a, "q_bias", None) is not None:
            W, b = a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        else:
            W, b = a.qkv.weight, a.qkv.bias
        q, k, v = F.linear(x, W, b).reshape(B, n, 3, H, -1).permute(2, 0, 3, 1, 4)
        ident = nn.Identity()
        q, k = _norm64(q, getattr(a, "q_norm", ident)), _norm64(k, getattr(a, "k_norm", ident))
        rope = kw.get("rope")
        if rope is not None:
            r = rope[rows[T:] - T]
            half = bool(getattr(a, "rotate_half", False))
            q = torch.cat([q[:, :, :T], _rotate64(q[:, :, T:], r, half)], dim=2)
            k = torch.cat([k[:, :, :T], _rotate64(k[:, :, T:], r, half)], dim=2)
        s = (q * a.scale) @ k.transpose(-1, -2) + _bias64(a, kw, self.full)[:, rows][:, :, rows]
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, n, -1)
        if not isinstance(getattr(a, "norm", ident), nn.Identity):
            y = a.norm(y)
        if getattr(a, "gate", None) is not None:
            y = y * a.gate(x).sigmoid()
        return a.proj(y)


def _bias64(attn: nn.Module, kwargs: dict, N: int) -> torch.Tensor:
    """The additive score bias (H, N, N) of the full sequence (zero where the family has none)."""
    out = torch.zeros(attn.num_heads, N, N, dtype=torch.float64)
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        out = out + table[attn.relative_position_index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)
    rel = getattr(attn, "rel_pos", None)
    if rel is not None:
        out = out + rel.get_bias().reshape(-1, N, N)
    for key in ("shared_rel_pos_bias", "shared_rel_pos"):
        if kwargs.get(key) is not None:
            out = out + kwargs[key].reshape(-1, N, N)
    return out


def dropped64(model: nn.Module, x: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Float64 logits of ``x`` (1, 3, H, W) with only patches ``kept`` and the prefix tokens: the
    sequence cut at the first block's input (after every position embedding), each block's
    attention written out on the kept tokens with their original positions' terms."""
    m = model64(model)
    T = int(m.num_prefix_tokens)
    ph, pw = m.patch_embed.patch_size
    P = (x.shape[-2] // ph) * (x.shape[-1] // pw)
    rows = torch.tensor([*range(T), *(T + p for p in kept)])
    for blk in m.blocks:
        blk.attn = _KeptAttention(blk.attn, rows, T, T + P)
    h = m.blocks[0].register_forward_pre_hook(lambda mod, args: (args[0][:, rows], *args[1:]))
    try:
        with torch.no_grad():
            return m(x.double())
    finally:
        h.remove()


def noised64(model: nn.Module, x: torch.Tensor, patches: list[int], seed: int = 0, sigma: float = 0.1) -> torch.Tensor:
    """Float64 logits of ``x`` (B, 3, H, W) with the pixels of ``patches`` (row-major) replaced by
    ``N(0, σ²)`` noise drawn from ``torch.Generator().manual_seed(seed)`` (float32 draws)."""
    m = model64(model)
    ph, pw = m.patch_embed.patch_size
    gw = x.shape[-1] // pw
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    y = x.clone()
    for p in patches:
        r, c = divmod(p, gw)
        y[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = noise[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
    with torch.no_grad():
        return m(y.double())


#: method -> the explain() keywords its restatement assumes (the methods' defaults, spelled out)
METHODS64: dict[str, dict] = {
    "raw_attention": {}, "rollout": {}, "attention_flow": {}, "chefer_generic": {}, "attn_grad_cam": {},
    "ag_cam": {}, "tam": {"steps": 20}, "vit_cx": {"seed": 0},
    "saliency": {}, "integrated_gradients": {"steps": 8}, "grad_cam": {}, "occlusion": {},
}


def reference64(model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor) -> torch.Tensor:
    """The float64 restatement (B, gh, gw) of ``method`` (a key of ``METHODS64``) for ``target`` (B,)."""
    m64 = model64(model)
    if method == "tam":
        return tam64(m64, x, target, steps=METHODS64["tam"]["steps"])
    if method == "vit_cx":
        return vit_cx64(m64, x, target, seed=METHODS64["vit_cx"]["seed"])
    if method == "integrated_gradients":
        return integrated_gradients64(m64, x, target, METHODS64[method]["steps"])
    if method in ("saliency", "grad_cam", "occlusion"):
        return {"saliency": saliency64, "grad_cam": grad_cam64, "occlusion": occlusion64}[method](m64, x, target)
    r = run64(m64, x, target, detach_attn_input=method == "ag_cam")
    fn = {"raw_attention": raw_attention64, "rollout": rollout64, "attention_flow": attention_flow64,
          "chefer_generic": chefer_generic64, "attn_grad_cam": attn_grad_cam64, "ag_cam": ag_cam64}[method]
    return fn(r)


#: the tolerance of ``close_to``: |got - ref| <= RTOL |ref| + ATOL max|ref| + FLOOR[method]
RTOL, ATOL = 1e-4, 1e-4
#: an absolute floor where the method subtracts two float32 probabilities (4 float32 ulps of 1.0)
FLOOR: dict[str, float] = {"occlusion": 4 * 2.0**-23}


def close_to(got: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> tuple[bool, float]:
    """Whether a float32 map equals its float64 restatement to ``RTOL`` relative, ``ATOL``
    times the map's largest magnitude and ``floor`` absolute; and the largest error relative to
    that magnitude."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape:
        return False, float("inf")
    scale = float(ref.abs().max()) or 1.0
    err = (got - ref).abs()
    ok = bool((err <= RTOL * ref.abs() + ATOL * scale + floor).all())
    return ok, float(err.max()) / scale
