"""ViT-CX: causal explanation of ViTs (Xie, Li, Cao & Zhang, arXiv:2211.03064; docs/methods.md §10).

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
(``complete_linkage_labels``: the same scipy linkage and tree cut, label for label). That
work runs in compiled kernels (``_vit_cx_kernels``, numba), on the CPU whatever the model's
device: as PyTorch ops, a few dozen tiny ones right after a forward pass, it cost a fifth of
the forwards' time on a small model.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_float
from .._recent import RecentTensors
from ..capture.ablation import forward_logits, forward_recording
from ..capture.adapters import ViTInfo, layout_for
from ..capture.attn_class import layer_blocks
from ..capture.chunks import check_batch_size, model_batch_size
from ..capture.state import submodules
from ..errors import InputError
from ..inputs import check_finite
from ..perturb import cached_noise
from ..targets import ScoreTarget, TargetLike, resolve_target, target_score
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
class _Axis:
    """One axis's bilinear upsampling ``U`` (out, in) as the kernels take it (numpy, cached by
    size: read-only). Stencils (n, 2): ``idx`` int64 and ``w`` float64, the (at most two)
    non-zeros of each row of ``U`` (``full``) and of its extreme rows ``E`` (``ext``); ``d``,
    ``s`` (in,): diagonal and superdiagonal of the upper bidiagonal ``R`` with ``R^T R = U^T U``
    (``U^T U`` is tridiagonal)."""

    ext_idx: np.ndarray
    ext_w: np.ndarray
    d: np.ndarray
    s: np.ndarray
    full_idx: np.ndarray
    full_w: np.ndarray


def _stencil(U: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The non-zeros of a matrix with at most two per row, as (n, 2) indices and weights (a
    row with one pads with weight 0)."""
    n, m = U.shape
    idx = np.zeros((n, 2), dtype=np.int64)
    w = np.zeros((n, 2))
    for r, row in enumerate(U.tolist()):
        nz = [(j, v) for j, v in enumerate(row) if v != 0.0]
        if not 1 <= len(nz) <= 2:
            raise AssertionError(f"row {r} of a {n}x{m} interpolation matrix has {len(nz)} non-zeros")
        for k, (j, v) in enumerate(nz):
            idx[r, k], w[r, k] = j, v
        if len(nz) == 1:
            idx[r, 1] = idx[r, 0]
    return idx, w


@functools.lru_cache(maxsize=16)
def _axis(out_size: int, in_size: int) -> _Axis:
    U = interp_matrix(out_size, in_size)
    R = torch.linalg.cholesky(U.T @ U).T  # U has full column rank; R is upper bidiagonal
    d = R.diagonal().numpy().copy()
    s = np.zeros(in_size)
    s[:-1] = R.diagonal(1).numpy()
    return _Axis(*_stencil(U[_extreme_rows(U)]), d, s, *_stencil(U))


@functools.lru_cache(maxsize=8)
def _upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strict upper triangle of an (n, n) matrix, row by row
    (the condensed order of scipy's distance vectors; cached: read-only)."""
    return np.triu_indices(n, k=1)


def complete_linkage_labels(dist: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Cluster labels (n,) of a precomputed (n, n) distance matrix, exactly as
    ``sklearn.cluster.AgglomerativeClustering(n_clusters=None, distance_threshold=t,
    metric="precomputed", linkage="complete").fit(dist).labels_`` (docs/methods.md §10 step 5).

    It is the same computation: scikit-learn builds the tree with scipy's complete linkage
    on the condensed upper triangle, counts the merges at distance >= t and cuts the tree by
    undoing the last merges, numbering the clusters in heap order. Done here in compiled code
    (``_vit_cx_kernels.complete_linkage`` and ``cut_tree``, scipy's and scikit-learn's
    algorithms with their tie rules) without the estimator's per-call checks (about 0.7 ms,
    half of ViT-CX's own work on a small model); tested against scipy's linkage matrix and
    scikit-learn's labels.
    """
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n:
        raise InputError(f"expected a square (n, n) distance matrix, got shape {dist.shape}")
    i, j = _upper_triangle(n)
    y = dist[i, j]
    if not np.isfinite(y).all():
        raise InputError("the distance matrix has NaN or infinite entries")
    return _kernels().linkage_labels(np.ascontiguousarray(y), n, float(distance_threshold))


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

    ``U`` has two non-zeros a row and ``R`` is bidiagonal, so all of it is a few passes over
    the (gh, gw) maps, in float64, in one compiled call (``_vit_cx_kernels.clusters``); the
    clustering is ``complete_linkage_labels``'.
    """
    C, gh, gw = feat.shape
    labels, M, _ = _clusters(feat.detach().reshape(C, gh * gw).T, gh, gw, size, distance_threshold)
    return labels, M.to(feat.device)


def _clusters(
    act: torch.Tensor, gh: int, gw: int, size: tuple[int, int], distance_threshold: float
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``cluster_masks`` of (P, C) features (any device and float dtype), with what steps 8-9
    weigh mask k's score by, ``M_k / (K sum_j M_j)``: labels (C,), masks (K, H, W) and
    ``1 / (K sum_j M_j)`` (H * W,), both float32 on the CPU."""
    H, W = size
    kernels = _kernels()
    if act.device.type == "cpu" and act.dtype in (torch.float32, torch.float64) and act.is_contiguous():
        a = act.numpy()  # the kernels read float32 or float64 and compute in float64
    else:
        a = act.to(device="cpu", dtype=torch.float64, memory_format=torch.contiguous_format).numpy()
    ah, aw = _axis(H, gh), _axis(W, gw)
    labels, M, inv, finite = kernels.clusters(
        a, gh, gw, ah.ext_idx, ah.ext_w, aw.ext_idx, aw.ext_w, ah.d, ah.s, aw.d, aw.s,
        ah.full_idx, ah.full_w, aw.full_idx, aw.full_w, float(distance_threshold),
    )  # fmt: skip
    if not finite:
        raise InputError("the feature maps are not finite: the model's features are NaN or infinite")
    return labels, torch.from_numpy(M), torch.from_numpy(inv)


@functools.cache
def _kernels():
    """The compiled kernels' module, imported on first use (numba's import takes ~0.1 s)."""
    from . import _vit_cx_kernels

    return _vit_cx_kernels


_SCRATCH = RecentTensors(entries=4, max_bytes=64 * 2**20)


@contextlib.contextmanager
def _scratch(shape: Sequence[int], like: torch.Tensor) -> Iterator[torch.Tensor]:
    """An uninitialised CPU tensor of ``shape`` (``like``'s dtype) for one call's 2K inputs,
    reused by later calls with the same shape. A fresh buffer of a few MB is a fresh mapping
    that page-faults on first write, on every call (about 0.3 ms of the 2 ms that ViT-CX adds
    to its forwards on the small model). Taken out of the pool while in use, so concurrent
    calls never share one; the last few shapes are kept, none over 64 MB. Other devices get
    a plain allocation (their caching allocators reuse memory already)."""
    if like.device.type != "cpu":
        yield like.new_empty(shape)
        return
    key = (tuple(shape), like.dtype)
    buf = _SCRATCH.pop(key)
    if buf is None:
        buf = like.new_empty(shape)
    try:
        yield buf
    finally:
        _SCRATCH.put(key, buf)


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
    batch_size: int | None = None,
    distance_threshold: float = 0.1,
    sigma: float = 0.1,
) -> ExplainerResult:
    """ViT-CX saliency (docs/methods.md §10), batched over images (each image its own clustering).

    Args:
        x: (B, 3, H, W) preprocessed images.
        seed: the noise of image b's masks is drawn from ``torch.Generator().manual_seed(seed)``
            on the CPU (the same for every image, independent of the batch).
        batch_size: images per forward pass of the 2K masked inputs. None: the reference's
            ``gpu_batch`` of 50 on an accelerator; on the CPU as many as keep one pass's MLP
            activations within 16 MiB, at most 50 (``capture/chunks.py``: ViT-B/16 at 224 runs 6 at
            a time, ViT-S/16 13), since a larger pass runs out of cache (ViT-S/16: 44 ms an image
            at 50, 33 ms at 8 to 16). The results differ only by float rounding.
        distance_threshold: complete-linkage threshold on the cosine distance (0.1).
        sigma: noise standard deviation in normalised space (0.1).

    With a callable target (``vit_explore.targets``) its value stands in for the class
    probability ``P(.)[c]`` in every ``Delta_k``.

    Returns:
        ``patch_map`` (B, gh, gw): the pixel saliency averaged within each patch. ``extras``:
        ``pixel_map`` (B, H, W) the ViT-CX saliency itself, ``masks`` (list of (K_b, H, W)),
        ``mask_scores`` (list of (K_b,) ``Delta_k[target]``), ``K`` (list of ints), ``labels``
        (list of (C,) channel-to-mask assignments).

    The input is not scanned for NaN up front (``checks_finite``): a NaN or infinite pixel
    makes the first forward's output non-finite, and only then is the input checked, for the
    same error ``explain`` gives.
    """
    check_batch_size(batch_size)
    if not 0 < float(distance_threshold) <= 2:
        raise InputError(f"distance_threshold must be in (0, 2], got {distance_threshold}")
    check_float("sigma", sigma, 0.0, open_lo=True, fix="a noise standard deviation such as 0.1")
    L = info.num_layers
    name = f"{layer_blocks(model, info.attns)[-1]}.norm1"  # the last block (CaiT, XCiT: a class-attention block)
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
    sc = "logit" if isinstance(tgt, ScoreTarget) else "prob"  # a callable's own value, else the class probability
    p_c = target_score(logits, tgt, sc).tolist()
    if not all(map(math.isfinite, p_c)):
        check_finite(x)  # a NaN or infinite pixel: the input's own error
        raise InputError("the model's output is NaN or infinite for this input (are its weights finite?)")

    masks, labels, inverse = [], [], []
    for b in range(B):
        # steps 3-6, and the 1 / (K sum_j M_j) by which steps 8-9 weigh M_k (0 where no mask covers a pixel)
        lab, M, inv = _clusters(act[b], gh, gw, (H, W), float(distance_threshold))
        masks.append(M.to(device=x.device, dtype=x.dtype))
        inverse.append(inv.to(device=x.device, dtype=x.dtype))
        labels.append(lab)
    counts = [M.shape[0] for M in masks]
    # the 2K inputs of every image, written in place into one batch (step 7):
    # rows [at, at+K) are x*M_k + eps_k(1-M_k), rows [at+K, at+2K) are x + eps_k(1-M_k)
    with _scratch((2 * sum(counts), *x.shape[1:]), x) as fed:
        at = 0
        for b, (M, K) in enumerate(zip(masks, counts)):
            Mx = M[:, None]  # (K, 1, H, W)
            eps = cached_noise((K, *x.shape[1:]), seed, sigma, x)
            torch.lerp(eps, x[b], Mx, out=fed[at : at + K])  # eps + M (x - eps)
            torch.addcmul(x[b], eps, 1 - Mx, out=fed[at + K : at + 2 * K])
            at += 2 * K
        rows = torch.repeat_interleave(torch.arange(B, device=x.device), torch.tensor(counts, device=x.device) * 2)
        chunk = batch_size or model_batch_size(info, (gh, gw), x, 50)
        probs = target_score(forward_logits(model, fed, chunk, mods), tgt, sc, rows=rows)  # (2 sum K,)
    sal = x.new_empty(B, H * W)
    scores, at = [], 0
    for b in range(B):
        K = counts[b]
        p = probs[at : at + 2 * K]
        at += 2 * K
        delta = p[:K] - p[K:] + p_c[b]  # Delta_k[c] = P(x_k) - P(x'_k) + p_c
        scores.append(delta)
        torch.mv(masks[b].reshape(K, -1).T, delta, out=sal[b]).mul_(inverse[b])  # sum_k Delta_k M_k / (K sum_j M_j)
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
