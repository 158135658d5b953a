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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capture.ablation import forward_logits, forward_recording
from ..capture.adapters import ViTInfo, layout_for
from ..errors import InputError
from ..inputs import check_tensor
from ..interventions import cached_noise
from ..targets import TargetLike, resolve_target
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


@dataclass(frozen=True)
class _Upsampling:
    """What the clustering needs of one axis's interpolation matrix ``U`` (out, in), float64
    on the CPU: ``U`` at its extreme rows, ``U^T U`` and the column sums (cached by size;
    read-only)."""

    at_extremes: torch.Tensor  # (r, in)
    gram: torch.Tensor  # (in, in)
    col_sums: torch.Tensor  # (in,)


@functools.lru_cache(maxsize=16)
def _upsampling(out_size: int, in_size: int) -> _Upsampling:
    U = interp_matrix(out_size, in_size)
    return _Upsampling(U[_extreme_rows(U)].contiguous(), U.T @ U, U.sum(0))


def cluster_masks(feat: torch.Tensor, size: tuple[int, int], distance_threshold: float) -> tuple[np.ndarray, torch.Tensor]:
    """ViT-CX steps 3-6 for one image.

    Args:
        feat: (C, gh, gw) patch-token features.
        size: (H, W) input size.

    Returns:
        labels (C,) cluster of each channel, and merged masks (K, H, W) float64 in [0, 1]
        on ``feat``'s device.

    The C x C work is small (C = 768 for ViT-B) and sklearn clusters on the CPU anyway, so
    steps 3-5 run in float64 on the CPU: the products in torch, the element-wise algebra in
    numpy (cheaper per call than torch on arrays this small; numpy's own matmul is avoided,
    as its BLAS threads contend with torch's). Only the merged masks are built on the
    features' device.
    """
    from sklearn import config_context
    from sklearn.cluster import AgglomerativeClustering

    C, gh, gw = feat.shape
    H, W = size
    f = feat.detach().to(device="cpu", dtype=torch.float64)
    uh, uw = _upsampling(H, gh), _upsampling(W, gw)
    ff = f.reshape(C, -1)
    # per-mask min and max of U f (steps 3-4), on the rows and columns where they can lie
    ext = (uh.at_extremes @ f @ uw.at_extremes.T).reshape(C, -1).numpy()
    inner = (ff @ (uh.gram @ f @ uw.gram).reshape(C, -1).T).numpy()  # <U f_i, U f_j>
    s = (ff @ torch.outer(uh.col_sums, uw.col_sums).reshape(-1)).numpy()  # sum over pixels of U f_i
    lo, hi = ext.min(1), ext.max(1)
    rng = hi - lo
    ok = rng > 0
    a = np.where(ok, 1.0 / np.where(ok, rng, 1.0), 0.0)
    b = -lo * a  # mask_i = a_i * U f_i + b_i (a constant feature map gives an all-zero mask)
    # Gram matrix and cosine distance of the masks (step 5)
    a_s = a * s
    gram = np.outer(a, a) * inner + np.outer(a_s, b) + np.outer(b, a_s) + np.outer(b, b) * float(H * W)
    norm = np.sqrt(np.maximum(gram.diagonal(), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = gram / np.outer(norm, norm)
    dist = 1.0 - np.nan_to_num(cos, nan=0.0, posinf=0.0, neginf=0.0)
    if C == 1:
        labels = np.zeros(1, dtype=np.int64)
    else:
        # the matrix is built here, finite and square: sklearn's input checks are skipped
        with config_context(assume_finite=True, skip_parameter_validation=True):
            labels = AgglomerativeClustering(
                n_clusters=None, distance_threshold=distance_threshold, metric="precomputed", linkage="complete"
            ).fit(dist).labels_
    K = int(labels.max()) + 1
    # merged masks M_k = sum_i mask_i = U g_k + c_k with g_k = sum_i a_i f_i, c_k = sum_i b_i (step 6);
    # their min-max is folded into g_k and c_k (the extremes lie on the extreme rows and columns,
    # as in steps 3-4), so the (K, H, W) masks are built by one product and one add
    member = torch.zeros(K, C, dtype=torch.float64)
    member[torch.from_numpy(labels), torch.arange(C)] = 1.0
    gk = (member @ (torch.from_numpy(a)[:, None] * ff)).reshape(K, gh, gw)
    ck = member @ torch.from_numpy(b)
    ext_k = (uh.at_extremes @ gk @ uw.at_extremes.T).reshape(K, -1)
    mlo = ext_k.min(1).values + ck
    span = ext_k.max(1).values + ck - mlo
    scale = torch.where(span > 0, 1.0 / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))
    dev = feat.device
    Uh, Uw = interp_matrix(H, gh).to(dev), interp_matrix(W, gw).to(dev)
    M = Uh @ (gk * scale[:, None, None]).to(dev) @ Uw.T + ((ck - mlo) * scale).to(dev)[:, None, None]
    M.clamp_(0.0, 1.0)  # rounding may leave the extremes an ulp outside [0, 1]
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
    x = check_tensor(info, x, model)
    # steps 1-2: one forward gives p_c and the features; nothing is recorded for autograd
    logits, acts = forward_recording(model, x, {name: model.get_submodule(name)})
    tgt = resolve_target(target, logits)
    T = info.num_prefix
    B, _, H, W = x.shape
    layout = layout_for(info, H, W)
    gh, gw = layout.grid
    act = acts[name][:, T:]  # (B, P, C), patch tokens only
    if act.shape[1] != gh * gw:
        raise InputError(f"block {L - 1} norm1 has {act.shape[1]} patch tokens, expected {gh * gw}")
    feats = act.transpose(1, 2).reshape(B, -1, gh, gw)
    p_c = logits.softmax(-1).gather(1, tgt[:, None])[:, 0]

    masks, labels = [], []
    for b in range(B):
        lab, M = cluster_masks(feats[b], (H, W), float(distance_threshold))
        masks.append(M)
        labels.append(lab)
    counts = [M.shape[0] for M in masks]
    # the 2K inputs of every image, written in place into one batch (step 7):
    # rows [at, at+K) are x*M_k + eps_k(1-M_k), rows [at+K, at+2K) are x + eps_k(1-M_k)
    fed = x.new_empty(2 * sum(counts), *x.shape[1:])
    at = 0
    for b, (M, K) in enumerate(zip(masks, counts)):
        Mx = M.to(x.dtype)[:, None]  # (K, 1, H, W)
        eps = cached_noise((K, *x.shape[1:]), seed, sigma, x)
        outside, masked = fed[at + K : at + 2 * K], fed[at : at + K]
        torch.mul(eps, 1 - Mx, out=outside)
        torch.addcmul(outside, x[b], Mx, out=masked)
        outside.add_(x[b])
        at += 2 * K
    probs = forward_logits(model, fed, batch_size).softmax(-1)
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
        # (1/K) sum_k delta_k M_k / sum_j M_j (step 8-9), dividing once per pixel
        sal[b] = torch.einsum("k,khw->hw", delta, M) / (torch.where(tot > 0, tot, torch.ones_like(tot)) * K)
        scores.append(delta.to(torch.float32))
    sal32 = sal.to(torch.float32)
    patch_map = layout.pool_pixels(sal32, "mean")
    return ExplainerResult(
        patch_map=patch_map,
        extras={
            "pixel_map": sal32,
            "masks": [m.to(torch.float32) for m in masks],
            "mask_scores": scores,
            "K": counts,
            "labels": labels,
        },
        logits=logits,
        target=tgt,
        layout=layout,
    )
