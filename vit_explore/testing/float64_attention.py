"""Float64 restatements of the attention methods over a ``Run64`` (``vit_explore.testing.float64``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .float64_cait import class_blocks64
from .float64_model import Run64, patch_size64, run64


def _patches(r: Run64, v: torch.Tensor) -> torch.Tensor:
    """(B, N) token vector -> (B, gh, gw) patch entries."""
    return v[:, r.T :].reshape(v.shape[0], *r.grid)


def _row(r: Run64, m: torch.Tensor) -> torch.Tensor:
    """Read-out row ``w M`` of (B, N, N) matrices: (B, N) (``w`` (N,), or (B, N): an attention pool's row)."""
    return torch.einsum("bn,bnm->bm", r.w.expand(m.shape[0], -1), m)


def _hat(a: torch.Tensor) -> torch.Tensor:
    """``rownorm(a + I)`` of (..., N, N)."""
    a = a + torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(-1, keepdim=True)


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
        w = r.w if r.w.dim() == 1 else r.w[b]
        for f in range(N):
            if w[f] > 0:
                g.add_edge("s", (L, f), capacity=float(w[f]))
        flows = np.array([nx.maximum_flow_value(g, "s", (0, t)) for t in range(N)])
        out.append(torch.from_numpy(flows / flows.sum()))
    return _patches(r, torch.stack(out))


def chefer_generic64(r: Run64) -> torch.Tensor:
    """Chefer, Gur & Wolf, ICCV 2021: ``R = I``; ``R ← R + E_h[(∇A ⊙ A)^+] R`` for every block,
    first block first; read-out row of ``R - I`` (docs/methods.md §5: for a class token the row of R;
    an attention pool's row p keeps ``p R``). ``D = R - I`` is accumulated as ``D ← Ā + D + Ā D``:
    forming ``R`` and subtracting ``I`` cancels the digits of entries far below 1 (DINOv3 at random
    init: 1e-13, 1.6e-4 of them lost in float64)."""
    B, N = r.A[0].shape[0], r.A[0].shape[-1]
    D = torch.zeros(B, N, N, dtype=torch.float64)
    for a, g in zip(r.A, r.G):
        a_bar = (g * a).clamp(min=0).mean(1)
        D = a_bar + D + a_bar @ D
    return _patches(r, _row(r, D + torch.eye(N, dtype=torch.float64) if r.pool is not None else D))


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


def tam64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 20, start_layer: int = 0) -> torch.Tensor:
    """Yuan et al. 2021 (Transition Attention Maps): states ``s = w E_h A_{L-1}``, then
    ``s ← s E_h A_i + s`` for i = L-2 … start_layer; weights ``w E_h[(mean_α ∇A_{L-1}(α x))^+]`` over
    ``α ∈ linspace(0, 1, steps)``; the product on the patch columns."""
    r = run64(m64, x, target)
    grads = [run64(m64, float(a) * x.double(), target).G[-1] for a in np.linspace(0, 1, steps)]
    W = _row(r, (sum(grads) / steps).clamp(min=0).mean(1))
    s = _row(r, r.A[-1].mean(1))
    for i in range(len(r.A) - 2, start_layer - 1, -1):
        s = torch.einsum("bn,bnm->bm", s, r.A[i].mean(1)) + s
    return _patches(r, s * W)


def vit_cx64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, seed: int = 0, threshold: float = 0.1,
             sigma: float = 0.1) -> torch.Tensor:
    """Xie et al., ViT-CX (IJCAI 2023), per image: the last block's ``norm1`` patch features (CaiT,
    XCiT: the last class-attention block's)
    upsampled bilinearly to the input size, min-max normalised per channel; channels merged by
    complete-linkage clustering of their cosine distances (threshold); each cluster's summed
    masks min-max normalised; mask k scored ``p_c(x M_k + ε_k (1 - M_k)) - p_c(x + ε_k (1 - M_k))
    + p_c(x)`` with ``ε_k = σ randn`` (seeded generator); the saliency
    ``(1/K) Σ_k score_k M_k / Σ_k M_k``; the map is its mean over each patch."""
    from sklearn.cluster import AgglomerativeClustering

    T = int(m64.num_prefix_tokens)
    ph, pw = patch_size64(m64)
    last = (class_blocks64(m64) or tuple(m64.blocks))[-1]  # CaiT, XCiT: the last class-attention block
    out = []
    for b in range(x.shape[0]):
        x1 = x[b : b + 1].double()
        feats = []
        h = last.norm1.register_forward_hook(lambda m, a, o, feats=feats: feats.append(o.detach()))
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


