"""ViT-CX: causal explanation of ViTs (Xie, Li, Cao & Zhang, arXiv:2211.03064; methods.md §10).

Masks are the patch-token features at ``blocks[-1].norm1`` (C, gh, gw), upsampled to the
input (bilinear, ``align_corners=False``) and min-max scaled per channel; channels whose
masks have cosine distance below ``distance_threshold`` are merged by complete-linkage
clustering into K masks ``M_k``, each scored causally with noise ``eps_k ~ N(0, sigma^2)``:
``Delta_k = P(x*M_k + eps_k(1-M_k)) - P(x + eps_k(1-M_k)) + p_c`` and
``sal = (1/K) sum_k Delta_k[c] M_k / sum_j M_j`` (pixel level, not normalised).

Cost: one forward (features and p_c, no backward) and 2K forwards in batches of
``batch_size``. The C x C cosine matrix of the upsampled masks is computed exactly from the
(gh, gw) features (upsampling is linear, and the per-mask min and max of a bilinear
upsampling lie on the rows and columns that end an interpolation interval; see
``cluster_masks``): no C x H x W tensor is built. The clustering is scikit-learn's
(``complete_linkage_labels``: the same scipy linkage and tree cut, label for label).
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capture.ablation import forward_logits, forward_recording
from ..capture.adapters import ViTInfo, layout_for
from ..capture.state import submodules
from ..errors import InputError
from ..inputs import check_finite
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
    on the CPU (cached by size; read-only).

    ``at_extremes`` (``E``) is ``U`` at its extreme rows (r, in). ``stacked`` is ``[E; R]``
    (r + in, in) with ``R`` upper triangular and ``R^T R = U^T U`` (Cholesky): one product
    ``A f B^T`` of a feature map with both axes' ``stacked`` gives the values among which its
    upsampling's extremes lie and a small map ``R_h f R_w^T`` whose inner products are those of
    the upsampled maps. ``ones`` is ``R 1`` (in,): bilinear upsampling keeps constants
    (``U 1 = 1``), so the constant image is the upsampling of the all-ones map. ``with_full``
    is ``[E; U]`` (r + out, in), for the merged masks.
    """

    at_extremes: torch.Tensor  # (r, in)
    stacked: torch.Tensor  # (r + in, in)
    ones: torch.Tensor  # (in,)
    with_full: torch.Tensor  # (r + out, in): [E; U]


@functools.lru_cache(maxsize=16)
def _upsampling(out_size: int, in_size: int) -> _Upsampling:
    U = interp_matrix(out_size, in_size)
    R = torch.linalg.cholesky(U.T @ U).T.contiguous()  # U^T U is positive definite: U has full column rank
    E = U[_extreme_rows(U)].contiguous()
    return _Upsampling(E, torch.cat([E, R]), R.sum(1), torch.cat([E, U]))


@functools.lru_cache(maxsize=8)
def _upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strict upper triangle of an (n, n) matrix, row by row
    (the condensed order of scipy's distance vectors; cached: read-only)."""
    return np.triu_indices(n, k=1)


def complete_linkage_labels(dist: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Cluster labels (n,) of a precomputed (n, n) distance matrix, exactly as
    ``sklearn.cluster.AgglomerativeClustering(n_clusters=None, distance_threshold=t,
    metric="precomputed", linkage="complete").fit(dist).labels_`` (methods.md §10 step 5).

    It is the same computation: scikit-learn builds the tree with scipy's complete linkage
    on the condensed upper triangle, counts the merges at distance >= t and cuts the tree by
    undoing the last merges, numbering the clusters in heap order. Done here without the
    estimator's and ``scipy.cluster.hierarchy.linkage``'s per-call checks (about 0.7 ms, half
    of ViT-CX's own work on a small model); tested label for label against scikit-learn.
    """
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n:
        raise InputError(f"expected a square (n, n) distance matrix, got shape {dist.shape}")
    i, j = _upper_triangle(n)
    y = dist[i, j]
    if not np.isfinite(y).all():
        raise InputError("the distance matrix has NaN or infinite entries")
    return np.array(_cut_complete_linkage(y, n, distance_threshold), dtype=np.intp)


def _cut_complete_linkage(y: np.ndarray, n: int, distance_threshold: float) -> list[int]:
    """``complete_linkage_labels`` of a condensed matrix ``y`` (float64), as a list."""
    if n == 1:
        return [0]
    merges = _linkage_complete(y, n).tolist()  # (n - 1) rows [child, child, distance, size]
    children = [(int(a), int(b)) for a, b, _, _ in merges]
    n_clusters = sum(d >= distance_threshold for _, _, d, _ in merges) + 1
    # sklearn.cluster._agglomerative._hc_cut: split the newest node n_clusters - 1 times
    nodes = [-(max(children[-1]) + 1)]
    for _ in range(n_clusters - 1):
        a, b = children[-nodes[0] - n]
        heapq.heappush(nodes, -a)
        heapq.heappushpop(nodes, -b)
    labels = [0] * n
    for k, node in enumerate(nodes):
        stack = [-node]
        while stack:
            v = stack.pop()
            if v < n:
                labels[v] = k
            else:
                stack.extend(children[v - n])
    return labels


def _linkage_complete(y: np.ndarray, n: int) -> np.ndarray:
    """``scipy.cluster.hierarchy.linkage(y, method="complete")`` of a finite condensed matrix
    (float64, contiguous): the nearest-neighbour-chain routine that ``linkage`` itself calls
    for this method, or ``linkage`` where scipy no longer has that routine."""
    nn_chain = _nn_chain()
    if nn_chain is not None:
        try:
            return nn_chain(y, n, _COMPLETE)
        except TypeError:  # another signature: fall back to the public function
            pass
    from scipy.cluster.hierarchy import linkage

    return linkage(y, method="complete")


@functools.cache
def _nn_chain():
    try:
        from scipy.cluster._hierarchy import nn_chain
    except ImportError:
        return None
    return nn_chain


_COMPLETE = 1  # scipy.cluster.hierarchy._LINKAGE_METHODS["complete"]


@functools.lru_cache(maxsize=16)
def _axes(H: int, W: int, gh: int, gw: int) -> tuple[_Upsampling, _Upsampling, torch.Tensor]:
    """Both axes' ``_Upsampling`` and ``(R_h 1)(R_w 1)^T`` as (gh, 1, gw): the all-ones map in R-space."""
    uh, uw = _upsampling(H, gh), _upsampling(W, gw)
    return uh, uw, torch.outer(uh.ones, uw.ones)[:, None, :]


def cluster_masks(feat: torch.Tensor, size: tuple[int, int], distance_threshold: float) -> tuple[np.ndarray, torch.Tensor]:
    """ViT-CX steps 3-6 for one image.

    Args:
        feat: (C, gh, gw) patch-token features.
        size: (H, W) input size.

    Returns:
        labels (C,) cluster of each channel, and merged masks (K, H, W) float32 in [0, 1]
        on ``feat``'s device.

    Exact without building the C upsampled masks. With ``U`` the bilinear upsampling of each
    axis, ``mask_i = (U f_i U^T - lo_i) / (hi_i - lo_i) = U a_i (f_i - lo_i) U^T`` (``U`` keeps
    constants; ``a_i = 1 / (hi_i - lo_i)``), so

    * the min and max (steps 3-4) lie on the rows and columns that end an interpolation
      interval: they are among the values of ``E f_i E^T``, ``E`` those rows of ``U``;
    * the cosines (step 5) ignore the scale ``a_i`` and equal those of the small maps
      ``V_i = R (f_i - lo_i) R^T`` with ``R^T R = U^T U`` (Cholesky), since ``<U v U^T, U w U^T>
      = <R v R^T, R w R^T>``; a constant feature map gives a zero mask, at cosine 0 to every
      mask (the reference's NaN -> 0);
    * a merged mask (step 6) is the min-max of ``U g_k U^T`` with ``g_k = sum_{i in k} a_i f_i``
      (constants drop out of a min-max), its extremes again among ``E g_k E^T``.

    The maps are laid out (gh, C, gw), so that both sides of each product are plain matrix
    products; one product with ``[E; R]`` on both sides gives the extremes and ``V`` together,
    one with ``[E; U]`` the merged masks and their extremes. Steps 3-5 run in float64 on the
    CPU (the clustering does anyway; C = 768 for ViT-B); the masks are built in float32 on
    ``feat``'s device. Few, large operations: right after a forward pass each kernel's first
    call is slow (cold caches), tens of microseconds on the CPU.
    """
    C, gh, gw = feat.shape
    H, W = size
    uh, uw, ones = _axes(H, W, gh, gw)
    rh, rw = uh.at_extremes.shape[0], uw.at_extremes.shape[0]
    # (gh, C, gw): both spatial products are plain matrix products, channels in the middle
    f = feat.detach().permute(1, 0, 2).to(device="cpu", dtype=torch.float64, memory_format=torch.contiguous_format)
    Z = (uh.stacked @ (f.reshape(gh * C, gw) @ uw.stacked.T).reshape(gh, -1)).reshape(rh + gh, C, rw + gw)
    ext = Z[:rh, :, :rw].transpose(0, 1).reshape(C, -1)  # (C, rh * rw): a copy, so both reductions run along rows
    lo, hi = ext.amin(dim=1), ext.amax(dim=1)
    V = torch.empty(C, gh, gw, dtype=torch.float64)
    torch.addcmul(Z[rh:, :, rw:], ones, lo[:, None], value=-1.0, out=V.permute(1, 0, 2))
    V = V.reshape(C, gh * gw)
    gram = V @ V.T
    rng = (hi - lo).tolist()
    if not all(map(math.isfinite, rng)):
        raise InputError("the feature maps are not finite: the model's features are NaN or infinite")
    inv = torch.tensor(
        [1.0 / math.sqrt(d) if r > 0 and d > 0 else 0.0 for r, d in zip(rng, gram.diagonal().tolist())],
        dtype=torch.float64,
    )
    iu, ju = _upper_triangle(C)
    dist = gram.mul_(inv[:, None]).mul_(-inv).add_(1.0).numpy()  # 1 - cos
    labels = _cut_complete_linkage(dist[iu, ju], C, distance_threshold)
    K = max(labels) + 1
    member = [0.0] * (K * C)  # (K, C): a_i at (label_i, i)
    for i, (k, r) in enumerate(zip(labels, rng)):
        if r > 0:
            member[k * C + i] = 1.0 / r
    # the merged maps on the grid, g_k = sum a_i f_i (gh, K, gw), then in float32 on the features' device
    # both their extremes and their upsampling from one product with [E; U] on both sides: (rh + H, K, rw + W)
    dev = feat.device
    g = (torch.tensor(member, dtype=torch.float64).reshape(K, C) @ f).to(device=dev, dtype=torch.float32)
    Ah, Aw = _with_full32(H, gh, dev), _with_full32(W, gw, dev)
    Zm = (Ah @ (g.reshape(gh * K, gw) @ Aw.T).reshape(gh, -1)).reshape(rh + H, K, rw + W)
    ext = Zm[:rh, :, :rw].transpose(0, 1).reshape(K, -1)
    mlo, mhi = ext.amin(dim=1), ext.amax(dim=1)
    spans = [b - a for a, b in zip(mlo.tolist(), mhi.tolist())]
    scale = torch.tensor([1.0 / d if d > 0 else 0.0 for d in spans], dtype=torch.float32, device=dev)[:, None]
    M = torch.empty(K, H, W, dtype=torch.float32, device=dev)
    torch.addcmul(-mlo[:, None] * scale, Zm[rh:, :, rw:], scale, out=M.permute(1, 0, 2))
    labels = np.array(labels, dtype=np.intp)
    return labels, M.clamp_(0.0, 1.0)  # rounding may leave the extremes an ulp outside [0, 1]


@functools.lru_cache(maxsize=16)
def _with_full32(out_size: int, in_size: int, device: torch.device) -> torch.Tensor:
    """``_upsampling(out_size, in_size).with_full`` in float32 on ``device`` (cached: read-only)."""
    return _upsampling(out_size, in_size).with_full.to(device=device, dtype=torch.float32)


@register_explainer(
    "vit_cx",
    kind="model",
    class_specific=True,
    paper="Xie, Li, Cao & Zhang, ViT-CX: Causal Explanation of Vision Transformers, IJCAI 2023 (arXiv:2211.03064)",
    reference="vaynexie/CausalX-ViT",
    checks_finite=True,
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

    The input is not scanned for NaN up front (``checks_finite``): a NaN or infinite pixel
    makes the first forward's output non-finite, and only then is the input checked, for the
    same error ``explain`` gives.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0 < float(distance_threshold) <= 2:
        raise InputError(f"distance_threshold must be in (0, 2], got {distance_threshold}")
    L = info.num_layers
    name = f"blocks.{L - 1}.norm1"
    mods = submodules(model)  # one walk of the model for both passes
    # steps 1-2: one forward gives p_c and the features; nothing is recorded for autograd
    logits, acts = forward_recording(model, x, {name: model.get_submodule(name)}, mods)
    tgt = resolve_target(target, logits)
    T = info.num_prefix
    B, _, H, W = x.shape
    layout = layout_for(info, H, W)
    gh, gw = layout.grid
    act = acts[name][:, T:]  # (B, P, C), patch tokens only
    if act.shape[1] != gh * gw:
        raise InputError(f"block {L - 1} norm1 has {act.shape[1]} patch tokens, expected {gh * gw}")
    feats = act.transpose(1, 2).reshape(B, -1, gh, gw)
    p_c = [row[c] for row, c in zip(logits.softmax(-1).tolist(), tgt.tolist())]
    if not all(map(math.isfinite, p_c)):
        check_finite(x)  # a NaN or infinite pixel: the input's own error
        raise InputError("the model's output is NaN or infinite for this input (are its weights finite?)")

    masks, labels, weights = [], [], []
    for b in range(B):
        lab, M = cluster_masks(feats[b], (H, W), float(distance_threshold))
        M = M.to(x.dtype)
        masks.append(M)
        labels.append(lab)
        # steps 8-9 weigh mask k's score by M_k / (K sum_j M_j) (pixels that no mask covers: 0)
        weights.append(M.reshape(len(M), -1) / (M.sum(0).reshape(-1).clamp_(min=torch.finfo(M.dtype).tiny) * len(M)))
    counts = [M.shape[0] for M in masks]
    # the 2K inputs of every image, written in place into one batch (step 7):
    # rows [at, at+K) are x*M_k + eps_k(1-M_k), rows [at+K, at+2K) are x + eps_k(1-M_k)
    fed = x.new_empty(2 * sum(counts), *x.shape[1:])
    at = 0
    for b, (M, K) in enumerate(zip(masks, counts)):
        Mx = M[:, None]  # (K, 1, H, W)
        eps = cached_noise((K, *x.shape[1:]), seed, sigma, x)
        torch.lerp(eps, x[b], Mx, out=fed[at : at + K])  # eps + M (x - eps)
        torch.addcmul(x[b], eps, 1 - Mx, out=fed[at + K : at + 2 * K])
        at += 2 * K
    probs = forward_logits(model, fed, batch_size, mods).softmax(-1)
    sal = x.new_empty(B, H * W)
    scores, at = [], 0
    for b, c in enumerate(tgt.tolist()):
        K = counts[b]
        p = probs[at : at + 2 * K, c]
        at += 2 * K
        delta = p[:K] - p[K:] + p_c[b]  # Delta_k[c] = P(x_k) - P(x'_k) + p_c
        scores.append(delta)
        torch.mv(weights[b].T, delta, out=sal[b])
    sal = sal.reshape(B, H, W)
    sal32 = sal.to(torch.float32)
    patch_map = layout.pool_pixels(sal32, "mean")
    return ExplainerResult(
        patch_map=patch_map,
        extras={
            "pixel_map": sal32,
            "masks": [m.to(torch.float32) for m in masks],
            "mask_scores": [d.to(torch.float32) for d in scores],
            "K": counts,
            "labels": labels,
        },
        logits=logits,
        target=tgt,
        layout=layout,
    )
