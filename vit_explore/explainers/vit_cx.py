"""ViT-CX: causal explanation of ViTs (Xie, Li, Cao & Zhang, arXiv:2211.03064; methods.md §10).

Masks are the patch-token features at ``blocks[-1].norm1`` (C, gh, gw), upsampled to the
input (bilinear, ``align_corners=False``) and min-max scaled per channel; channels whose
masks have cosine distance below ``distance_threshold`` are merged by complete-linkage
clustering into K masks ``M_k``, each scored causally with noise ``eps_k ~ N(0, sigma^2)``:
``Delta_k = P(x*M_k + eps_k(1-M_k)) - P(x + eps_k(1-M_k)) + p_c`` and
``sal = (1/K) sum_k Delta_k[c] M_k / sum_j M_j`` (pixel level, not normalised).

Cost: one forward (features and p_c, no backward) and 2K forwards in batches of
``batch_size``. The C x C cosine matrix of the upsampled masks is computed exactly from the
(gh, gw) features: upsampling is linear (``U f``), so ``<U f_i, U f_j> = f_i^T (U^T U) f_j``
and the per-mask min and max of a bilinear upsampling lie on the rows and columns that end
an interpolation interval; no C x H x W tensor is built.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capture.ablation import forward_logits
from ..capture.adapters import ViTInfo
from ..capture.session import Needs, capture
from ..errors import InputError
from ..interventions import seeded_noise
from ..targets import TargetLike
from ._registry import ExplainerResult, register_explainer


@functools.lru_cache(maxsize=16)
def interp_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) float64 matrix of 1-D linear interpolation, ``align_corners=False`` (PyTorch's).

    Cached by size: treat the result as read-only."""
    eye = torch.eye(in_size, dtype=torch.float64)[:, None, :]  # (in, 1, in)
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


def _extreme_rows(U: torch.Tensor) -> torch.Tensor:
    """Rows of an interpolation matrix that start or end a run with the same left neighbour.

    Within a run the interpolated value is monotone, so the extremes of the upsampled map
    lie on these rows (and, in 2-D, on their products with the extreme columns).
    """
    left = (U > 0).to(torch.int8).argmax(dim=1)
    n = len(left)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[0] = keep[-1] = True
    change = left[1:] != left[:-1]
    keep[1:] |= change
    keep[:-1] |= change
    return torch.nonzero(keep).reshape(-1)


@functools.lru_cache(maxsize=16)
def _extreme_rows_of(out_size: int, in_size: int) -> torch.Tensor:
    return _extreme_rows(interp_matrix(out_size, in_size))


def cluster_masks(feat: torch.Tensor, size: tuple[int, int], distance_threshold: float) -> tuple[np.ndarray, torch.Tensor]:
    """ViT-CX steps 3-6 for one image.

    Args:
        feat: (C, gh, gw) patch-token features.
        size: (H, W) input size.

    Returns:
        labels (C,) cluster of each channel, and merged masks (K, H, W) float64 in [0, 1].
    """
    from sklearn.cluster import AgglomerativeClustering

    C, gh, gw = feat.shape
    H, W = size
    f = feat.detach().to(torch.float64)
    Uh = interp_matrix(H, gh).to(f.device)
    Uw = interp_matrix(W, gw).to(f.device)
    # per-mask min and max of U f (steps 3-4)
    rh, rw = _extreme_rows_of(H, gh).to(f.device), _extreme_rows_of(W, gw).to(f.device)
    ext = (Uh[rh] @ f @ Uw[rw].T).reshape(C, -1)  # (C, r, s): values on the extreme rows/cols
    lo, hi = ext.min(1).values, ext.max(1).values
    rng = hi - lo
    ok = rng > 0
    a = torch.where(ok, 1.0 / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(rng))
    b = -lo * a  # mask_i = a_i * U f_i + b_i (a constant feature map gives an all-zero mask)
    # Gram matrix of the masks (step 5)
    Kh, Kw = Uh.T @ Uh, Uw.T @ Uw
    ff = f.reshape(C, -1)
    g = (Kh @ f @ Kw).reshape(C, -1)
    inner = ff @ g.T
    s = (f * (Uh.sum(0)[:, None] * Uw.sum(0)[None, :])).reshape(C, -1).sum(1)  # sum over pixels of U f_i
    gram = (a[:, None] * a[None, :]) * inner + (a * s)[:, None] * b[None, :] + b[:, None] * (a * s)[None, :]
    gram = gram + (b[:, None] * b[None, :]) * float(H * W)
    norm = gram.diagonal().clamp_min(0).sqrt()
    cos = gram / (norm[:, None] * norm[None, :])
    cos = torch.nan_to_num(cos, nan=0.0, posinf=0.0, neginf=0.0)
    dist = (1.0 - cos).cpu().numpy()
    if C == 1:
        labels = np.zeros(1, dtype=np.int64)
    else:
        labels = AgglomerativeClustering(
            n_clusters=None, distance_threshold=distance_threshold, metric="precomputed", linkage="complete"
        ).fit(dist).labels_
    K = int(labels.max()) + 1
    lab = torch.as_tensor(labels, device=f.device, dtype=torch.long)
    # merged masks M_k = sum_i mask_i = U (sum_i a_i f_i) + sum_i b_i, then min-max (step 6)
    fk = torch.zeros(K, gh, gw, dtype=torch.float64, device=f.device).index_add_(0, lab, a[:, None, None] * f)
    ck = torch.zeros(K, dtype=torch.float64, device=f.device).index_add_(0, lab, b)
    M = Uh @ fk @ Uw.T + ck[:, None, None]
    mlo = M.reshape(K, -1).min(1).values[:, None, None]
    mhi = M.reshape(K, -1).max(1).values[:, None, None]
    span = mhi - mlo
    M = torch.where(span > 0, (M - mlo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(M))
    return labels, M


@register_explainer(
    "vit_cx",
    kind="model",
    class_specific=True,
    paper="Xie, Li, Cao & Zhang, ViT-CX: Causal Explanation of Vision Transformers, IJCAI 2023 (arXiv:2211.03064)",
    reference="vaynexie/CausalX-ViT",
)
def vit_cx(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: TargetLike,
    info: ViTInfo,
    seed: int = 0,
    batch_size: int = 50,
    distance_threshold: float = 0.1,
    sigma: float = 0.1,
) -> ExplainerResult:
    """ViT-CX saliency (methods.md §10), batched over images (each image its own clustering).

    Args:
        x: (B, 3, H, W) preprocessed images.
        seed: the noise of image b's masks is drawn from ``torch.Generator().manual_seed(seed)``
            on the CPU (the same for every image, independent of the batch).
        batch_size: images per forward pass of the 2K masked inputs (reference ``gpu_batch``).
        distance_threshold: complete-linkage threshold on the cosine distance (0.1).
        sigma: noise standard deviation in normalised space (0.1).

    Returns:
        ``patch_map`` (B, gh, gw): the pixel saliency averaged within each patch. ``extras``:
        ``pixel_map`` (B, H, W) the ViT-CX saliency itself, ``masks`` (list of (K_b, H, W)),
        ``mask_scores`` (list of (K_b,) ``Delta_k[target]``), ``K`` (list of ints), ``labels``
        (list of (C,) channel-to-mask assignments).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0 < float(distance_threshold) <= 2:
        raise InputError(f"distance_threshold must be in (0, 2], got {distance_threshold}")
    L = info.num_layers
    name = f"blocks.{L - 1}.norm1"
    trace = capture(model, x, Needs(activations=(name,)), target=target, info=info)
    T = info.num_prefix
    B, _, H, W = x.shape
    gh, gw = trace.layout.grid
    act = trace.activations[name][:, T:]  # (B, P, C), patch tokens only
    if act.shape[1] != gh * gw:
        raise InputError(f"block {L - 1} norm1 has {act.shape[1]} patch tokens, expected {gh * gw}")
    feats = act.transpose(1, 2).reshape(B, -1, gh, gw)
    tgt = trace.target
    p_c = trace.logits.softmax(-1).gather(1, tgt[:, None])[:, 0]

    masks, labels, inputs, counts = [], [], [], []
    for b in range(B):
        lab, M = cluster_masks(feats[b], (H, W), float(distance_threshold))
        K = M.shape[0]
        Mx = M.to(x.dtype)[:, None]  # (K, 1, H, W)
        eps = seeded_noise((K, *x.shape[1:]), seed, sigma, x)
        outside = eps * (1 - Mx)
        inputs += [x[b] * Mx + outside, x[b] + outside]
        masks.append(M)
        labels.append(lab)
        counts.append(K)
    probs = forward_logits(model, torch.cat(inputs), batch_size).softmax(-1)
    sal = x.new_zeros(B, H, W, dtype=torch.float64)
    scores, at = [], 0
    for b in range(B):
        K, c = counts[b], int(tgt[b])
        p_k = probs[at : at + K, c]
        p_ref = probs[at + K : at + 2 * K, c]
        at += 2 * K
        delta = (p_k - p_ref + p_c[b]).to(torch.float64)
        M = masks[b]
        tot = M.sum(0)
        Wk = M / torch.where(tot > 0, tot, torch.ones_like(tot))
        sal[b] = torch.einsum("k,khw->hw", delta, Wk) / K
        scores.append(delta.to(torch.float32))
    sal32 = sal.to(torch.float32)
    patch_map = trace.layout.pool_pixels(sal32, "mean")
    return ExplainerResult(
        patch_map=patch_map,
        extras={
            "pixel_map": sal32,
            "masks": [m.to(torch.float32) for m in masks],
            "mask_scores": scores,
            "K": counts,
            "labels": labels,
        },
        logits=trace.logits,
        target=tgt,
        layout=trace.layout,
    )
