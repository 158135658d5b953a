"""Live interventions on image patches: what the model predicts without (or with only) a region.

``intervene`` replaces a set of patches by a substrate (``blur``, ``mean``, ``zero``,
``noise``) or removes their tokens from the sequence (``drop``), for many patch sets in one
batched forward pass, and reports the new logits, probabilities and the change for the
target and the top-k classes. ``causal_score`` gives the region's ViT-CX causal score
(Xie et al. 2022, arXiv:2211.03064, docs/methods.md §10 step 7), the quantity ViT-CX
aggregates over its masks, so a brushed region and a ViT-CX mask are measured alike.
``counterfactual`` searches a small set of patches whose removal changes the prediction.
The head and token ablations (``ablate_heads``, ``block_tokens``) live in
``vit_explore.capture.ablation`` and are re-exported here.
"""

from __future__ import annotations

import itertools
import math
import numbers
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import as_tensor, check_bool, check_float, check_int, check_seed
from ._recent import RecentTensors
from .capture.ablation import ablate_heads, block_tokens, drop_tokens, forward_logits
from .capture.adapters import inspect_vit
from .capture.classifier import ClassifierInfo, ModelInfo, check_logits, inspect_model, layout_any, not_token_mode
from .capture.hf import as_vit
from .capture.state import scan as _scan_model
from .errors import CaptureError, InputError, suggest
from .inputs import check_finite, check_tensor
from .targets import TargetLike, class_index, needs_class, resolve_target

__all__ = [
    "MODES",
    "Counterfactual",
    "Intervention",
    "TopK",
    "ablate_heads",
    "block_tokens",
    "causal_score",
    "counterfactual",
    "intervene",
]

Mode = Literal["blur", "mean", "zero", "noise", "drop"]
MODES: tuple[str, ...] = ("blur", "mean", "zero", "noise", "drop")
PatchesLike = torch.Tensor | np.ndarray | Sequence[Any]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TopK:
    """Top-k classes before and after an intervention, per patch set (K, k).

    ``delta`` is the change of the classes that were top-k *before*:
    ``after prob of before_indices - before_probs``.
    """

    before_indices: torch.Tensor
    before_probs: torch.Tensor
    after_indices: torch.Tensor
    after_probs: torch.Tensor
    delta: torch.Tensor


@dataclass(frozen=True)
class Intervention:
    """The result of ``intervene`` for K patch sets (one per image, or several for one image).

    Attributes:
        logits, probs: (K, C) of the intervened inputs.
        base_logits, base_probs: (K, C) of the unmodified image each set acts on.
        target: (K,) class whose change is reported.
        delta: (K,) ``probs[target] - base_probs[target]``.
        topk: top-k classes before and after (see ``TopK``).
        input: (K, 3, H, W) the tensor that was fed; for ``drop`` the unmodified image (the
            kept tokens are in ``kept``).
        kept: for ``drop``, K tensors of the kept row-major patch indices; else None.
        patches: (K, gh, gw) bool, the region acted on (the complement of the given
            patches when ``keep=True``).
        image_index: (K,) which image of the batch each set acts on.
        mode, keep: as given.
        causal_score: (K,) the region's ViT-CX causal score (see ``causal_score``; one or two
            extra batched forward passes per set).

    ``base_logits``, ``delta``, ``topk``, ``kept``, ``patches``, ``image_index`` and
    ``causal_score`` are computed on first access (a brush needs none of them to show its
    probabilities).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    base_probs: torch.Tensor
    target: torch.Tensor
    input: torch.Tensor
    mode: str
    keep: bool
    _base_logits: Callable[[], torch.Tensor] = field(repr=False, compare=False)
    _regions: Callable[[], torch.Tensor] = field(repr=False, compare=False)
    _image_index: Callable[[], torch.Tensor] = field(repr=False, compare=False)
    _kept: Callable[[], tuple[torch.Tensor, ...] | None] = field(default=lambda: None, repr=False, compare=False)
    _k: int = field(default=5, repr=False, compare=False)
    _causal: Callable[[], torch.Tensor] | None = field(default=None, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def base_logits(self) -> torch.Tensor:
        """(K, C) logits of the unmodified image each set acts on."""
        return self._once("base_logits", self._base_logits)

    @property
    def delta(self) -> torch.Tensor:
        """(K,) change of the target's probability, ``probs[target] - base_probs[target]``."""
        return self._once("delta", lambda: (self.probs - self.base_probs).gather(1, self.target[:, None])[:, 0])

    @property
    def patches(self) -> torch.Tensor:
        """(K, gh, gw) bool: the region acted on."""
        return self._once("patches", self._regions)

    @property
    def image_index(self) -> torch.Tensor:
        """(K,) which image of the batch each set acts on."""
        return self._once("image_index", self._image_index)

    @property
    def kept(self) -> tuple[torch.Tensor, ...] | None:
        """For ``drop``, K tensors of the kept row-major patch indices; else None."""
        return self._once("kept", self._kept)

    @property
    def topk(self) -> TopK:
        """Top-k classes before and after (``k`` as given to ``intervene``)."""
        if "topk" not in self._cache:
            k = max(1, min(int(self._k), self.probs.shape[1]))
            bp, bi = self.base_probs.topk(k, dim=-1)
            ap, ai = self.probs.topk(k, dim=-1)
            self._cache["topk"] = TopK(bi, bp, ai, ap, self.probs.gather(1, bi) - bp)
        return self._cache["topk"]

    @property
    def causal_score(self) -> torch.Tensor:
        """(K,) ViT-CX causal score of each region, ``Delta[target]`` (docs/methods.md §10 step 7)."""
        if "causal" not in self._cache:
            if self._causal is None:
                raise CaptureError("this Intervention carries no causal score")
            self._cache["causal"] = self._causal()
        return self._cache["causal"]


@dataclass(frozen=True)
class Counterfactual:
    """A small patch set whose removal changes the prediction of one image.

    Attributes:
        patches: (gh, gw) bool, the chosen (pruned) patches.
        found: whether the prediction changed within ``max_patches``.
        target: the class explained (the prediction unless given).
        new_class: the top-1 class after removing ``patches`` (None if not found).
        path_target, path_new: probabilities of ``target`` and of ``new_class`` as the
            greedy search adds patches in map order; entry ``k`` is after ``k`` patches
            (entry 0 is the unmodified image).
        greedy_size: patches chosen by the greedy pass before pruning.
        order: (P,) patch indices in the order the greedy pass tried them.
        probs: (C,) probabilities after removing ``patches``; base_probs: (C,) before.
        mode: the removal mode.
    """

    patches: torch.Tensor
    found: bool
    target: int
    new_class: int | None
    path_target: list[float]
    path_new: list[float]
    greedy_size: int
    order: torch.Tensor
    probs: torch.Tensor
    base_probs: torch.Tensor
    mode: str


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Setup:
    info: ModelInfo  # a ViT, or any classifier (pixel modes only; its grid is the analysis grid)
    x: torch.Tensor  # (B, 3, H, W) checked
    grid: tuple[int, int]
    token: int  # names the content of x for the caches (see _image_token)


def _setup(model: nn.Module, x: torch.Tensor, fp: tuple | None = None, info: ModelInfo | None = None) -> _Setup:
    """Check ``x`` against ``model``. With ``fp`` (``scan(model)[1]``), the setup of the last
    call is reused when the model is the same object, unchanged (parameters and hooks), and
    ``x`` equals that call's input: a brush on the same image skips the model inspection and
    the input checks."""
    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x[None]
    if fp is not None and isinstance(x, torch.Tensor):
        with _CACHE_LOCK:
            ref = _SETUP.get("model")
            if ref is not None and ref() is model and _SETUP["fp"] == fp and _same_tensor(_SETUP["raw"], x):
                return _SETUP["setup"]
    info = inspect_model(model) if info is None else info  # info: a caller's (explain's) own
    xc = check_tensor(info, x, model, finite=False)
    token = _image_token(xc)
    if _LAST_X.get("finite") != token:  # a batch equal to one already checked is finite (NaN != NaN)
        check_finite(xc)
        with _CACHE_LOCK:
            _LAST_X["finite"] = token
    H, W = xc.shape[-2:]
    setup = _Setup(info, xc, layout_any(info, H, W).grid, token)
    if fp is not None:
        with _CACHE_LOCK:
            # the copy _image_token just kept is x's own content unless check_tensor moved or cast x
            # (that copy is only ever replaced, never written to)
            same = xc is x and _LAST_X["token"] == token
            raw = _LAST_X["x"] if same else x.detach().clone()
            _SETUP.update(model=weakref.ref(model), fp=fp, raw=raw, setup=setup)
    return setup


def _check_args(
    model: nn.Module, target: TargetLike, *, keep: Any = False, seed: Any = 0, sigma: Any = 0.1,
    blur_sigma: Any = 5.0, blur_size: Any = 11, batch_size: Any = None,
) -> TargetLike:
    """The shared keyword arguments of the public functions, checked (``_checks``); returns
    ``target`` with class names replaced by indices."""
    check_bool("keep", keep)
    check_seed("seed", seed)
    check_float("sigma", sigma, 0.0, open_lo=True)
    check_float("blur_sigma", blur_sigma, 0.0, 1e6, open_lo=True)
    check_int("blur_size", blur_size, 1, fix="a positive odd number of pixels, e.g. 11")
    if batch_size is not None:
        check_int("batch_size", batch_size, 1, fix="or None for one pass")
    needs_class(
        target, "vx.intervene / causal_score / counterfactual (they report class probabilities, top-k and the "
        "class that wins)", "give a class index (vx.zero_shot makes CLIP / SigLIP a classifier over text labels), "
        "or measure a callable's drop per patch with vx.explain(..., 'occlusion', target=fn, score='logit')",
    )
    return class_index(model, target)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}{suggest(str(mode), MODES)} (modes: {', '.join(MODES)})")


def _as_tensor(p: Any, name: str = "patches") -> torch.Tensor:
    return as_tensor(name, p)


def _index_out_of_range(index: int, grid: tuple[int, int]) -> InputError:
    gh, gw = grid
    P = gh * gw
    return InputError(f"patch index {index} is out of range: the {gh}x{gw} grid has {P} patches (0..{P - 1}, row-major)")


def _one_set(p: Any, grid: tuple[int, int], hw: tuple[int, int], ps: tuple[int, int]) -> torch.Tensor:
    """One patch set -> (gh, gw) bool: a bool grid, a bool pixel mask or a list of indices."""
    gh, gw = grid
    t = torch.zeros(0, dtype=torch.long) if isinstance(p, (list, tuple)) and len(p) == 0 else _as_tensor(p)
    if t.dtype == torch.bool:
        if tuple(t.shape) == grid:
            return t.clone()
        if tuple(t.shape) == hw:
            return _pixels_to_grid(t[None], grid, ps)[0]
        raise InputError(
            f"a patch grid must have shape {grid} (or a pixel mask {hw}), got {tuple(t.shape)}"
        )
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise InputError(f"patches must be a bool mask or integer patch indices, got dtype {t.dtype}")
    if t.ndim > 1:
        raise InputError(f"patch indices must be a flat list, got shape {tuple(t.shape)}")
    idx = t.reshape(-1).long()
    P = gh * gw
    bad = (idx < 0) | (idx >= P)
    if bool(bad.any()):
        raise _index_out_of_range(int(idx[bad][0]), grid)
    g = torch.zeros(P, dtype=torch.bool)
    g[idx] = True
    return g.reshape(gh, gw)


def _pixels_to_grid(m: torch.Tensor, grid: tuple[int, int], ps: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) bool pixel masks -> (K, gh, gw): a patch counts if ANY of its pixels is set."""
    gh, gw = grid
    ph, pw = ps
    H, W = m.shape[-2:]
    f = F.pad(m.float()[:, None], (0, gw * pw - W, 0, gh * ph - H))
    return F.max_pool2d(f, (ph, pw))[:, 0] > 0


def _index_cells(patches: Any, grid: tuple[int, int]) -> list[bool] | None:
    """A flat list of Python ints (a brush's patch list) as row-major bools, checked in
    Python (no tensor operation); None for every other kind of ``patches``."""
    if not (isinstance(patches, (list, tuple)) and patches and all(type(p) is int for p in patches)):
        return None
    P = grid[0] * grid[1]
    lo, hi = min(patches), max(patches)
    if lo < 0 or hi >= P:
        raise _index_out_of_range(lo if lo < 0 else hi, grid)
    cells = [False] * P
    for p in patches:
        cells[p] = True
    return cells


def _parse_patches(patches: PatchesLike, s: _Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """-> regions (K, gh, gw) bool and image index (K,) long (both on CPU).

    Accepted: a bool (gh, gw) grid or (H, W) pixel mask (applied to every image); a bool
    (B, gh, gw) / (B, H, W) stack (one per image; for a single image, a (K, gh, gw) stack
    is K sets); a flat list of patch indices (applied to every image); or a list of patch
    sets (each any of the single-set forms) for ONE image.
    """
    B = s.x.shape[0]
    grid, hw, ps = s.grid, tuple(s.x.shape[-2:]), s.info.patch_size
    cells = _index_cells(patches, grid)
    if cells is not None:  # the common case (a brush's patch list): one tensor operation
        return torch.tensor([cells] * B, dtype=torch.bool).reshape(B, *grid), torch.arange(B)
    if isinstance(patches, (list, tuple)):
        if len(patches) == 0:
            raise InputError(
                "the intervention list is empty; give patch indices, a bool grid, or a list of patch sets "
                "(for 'no patches', pass a bool grid of all False)"
            )
        if all(isinstance(p, (bool, np.bool_)) for p in patches):
            raise InputError(
                f"patches is a flat list of {len(patches)} bools; give a bool grid of shape {grid} "
                "(torch.tensor(...).reshape(gh, gw)) or a list of patch indices"
            )
        if all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in patches):
            one = _one_set(list(patches), grid, hw, ps)
            return one[None].expand(B, *grid).clone(), torch.arange(B)
        if B != 1:
            raise InputError(
                f"a list of {len(patches)} patch sets is for ONE image, but the batch has {B}; "
                "pass a (B, gh, gw) bool grid for one set per image"
            )
        regions = torch.stack([_one_set(p, grid, hw, ps) for p in patches])
        return regions, torch.zeros(len(patches), dtype=torch.long)
    if not isinstance(patches, (torch.Tensor, np.ndarray)):
        raise InputError(
            f"patches must be a bool grid, a pixel mask, a list of indices or a list of patch sets; "
            f"got {type(patches).__name__}"
        )
    t = _as_tensor(patches)
    if t.dtype != torch.bool:
        one = _one_set(t, grid, hw, ps)
        return one[None].expand(B, *grid).clone(), torch.arange(B)
    if t.ndim == 2:
        one = _one_set(t, grid, hw, ps)
        return one[None].expand(B, *grid).clone(), torch.arange(B)
    if t.ndim == 3:
        if tuple(t.shape[1:]) == grid:
            regions = t.clone()
        elif tuple(t.shape[1:]) == hw:
            regions = _pixels_to_grid(t, grid, ps)
        else:
            raise InputError(
                f"a patch grid stack must have shape (K, {grid[0]}, {grid[1]}) (or pixel masks (K, {hw[0]}, {hw[1]})), "
                f"got {tuple(t.shape)}"
            )
        K = regions.shape[0]
        if K == 0:
            raise InputError("the intervention list is empty (0 patch sets)")
        if K == B:
            return regions, torch.arange(B)
        if B == 1:
            return regions, torch.zeros(K, dtype=torch.long)
        raise InputError(f"{K} patch grids for a batch of {B} images; give one per image, or use one image")
    raise InputError(
        f"a patch grid must have shape {grid} or (B, {grid[0]}, {grid[1]}), got {tuple(t.shape)}"
    )


# --------------------------------------------------------------------------- substrates


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Depthwise separable Gaussian blur of (B, C, H, W), reflect padding."""
    if size < 1 or size % 2 == 0:
        raise InputError(f"blur_size must be a positive odd number of pixels, got {size}")
    if sigma <= 0:
        raise InputError(f"blur_sigma must be > 0, got {sigma}")
    r = size // 2
    t = torch.arange(size, dtype=torch.float64) - r
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(device=x.device, dtype=x.dtype)
    C = x.shape[1]
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    y = F.pad(x, (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.reshape(1, 1, 1, size).expand(C, 1, 1, size), groups=C)
    return F.conv2d(y, k.reshape(1, 1, size, 1).expand(C, 1, size, 1), groups=C)


def seeded_noise(shape: Sequence[int], seed: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``N(0, sigma^2)`` noise drawn on the CPU from ``torch.Generator().manual_seed(seed)``.

    Drawing on the CPU makes the noise the same on every device.
    """
    g = torch.Generator().manual_seed(int(seed))
    # normal_(0, sigma) draws the same values as randn(...) * sigma, in one pass
    return torch.empty(tuple(shape)).normal_(0.0, float(sigma), generator=g).to(device=like.device, dtype=like.dtype)


_NOISE = RecentTensors(entries=4, max_bytes=32 * 2**20)


def cached_noise(shape: Sequence[int], seed: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``seeded_noise``, kept for the last few (shape, seed, sigma, dtype, device): ViT-CX
    draws the same noise for every image that has as many masks (the noise does not depend
    on the image). Read-only: callers must not write to the result. Draws over 32 MB are not kept.
    """
    key = (tuple(int(n) for n in shape), int(seed), float(sigma), like.dtype, like.device)
    eps = _NOISE.get(key)
    if eps is None:
        eps = seeded_noise(shape, seed, sigma, like)
        _NOISE.put(key, eps)
    return eps


# the parameters each substrate depends on (the rest do not name a different substrate)
_SUBSTRATE_PARAMS: dict[str, tuple[str, ...]] = {
    "blur": ("blur_size", "blur_sigma"), "mean": (), "zero": (), "noise": ("seed", "sigma"),
}


def _substrate(
    x: torch.Tensor, mode: str, *, seed: int = 0, sigma: float = 0.1, blur_size: int = 11, blur_sigma: float = 5.0
) -> torch.Tensor:
    if mode == "blur":
        return gaussian_blur(x, blur_size, blur_sigma)
    if mode == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "noise":
        return seeded_noise(x.shape, seed, sigma, x)
    raise AssertionError(mode)


def _pixel_region(regions: torch.Tensor, s: _Setup) -> torch.Tensor:
    """(K, gh, gw) bool -> (K, 1, H, W) float, 1 on the pixels of the acted-on patches."""
    ph, pw = s.info.patch_size
    H, W = s.x.shape[-2:]
    r = regions.to(s.x.device, s.x.dtype)
    r = r.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)[:, :H, :W]
    return r[:, None]


def _blend(s: _Setup, regions: torch.Tensor, img_idx: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Images ``img_idx`` (K,) with the patches of ``regions`` (K, gh, gw) taken from the
    substrate ``S`` (B, C, H, W): (K, C, H, W). Exact copies of either source, no arithmetic."""
    x = s.x
    K, (gh, gw), (ph, pw) = len(img_idx), s.grid, s.info.patch_size
    C, H, W = x.shape[1:]
    idx = img_idx.to(x.device)
    xi, Si = (x, S) if K == x.shape[0] == 1 else (x[idx], S[idx])
    if (H, W) == (gh * ph, gw * pw):  # patch-aligned: select per patch on a 6-d view
        m = regions.to(x.device).reshape(K, 1, gh, 1, gw, 1)
        shape6 = (K, C, gh, ph, gw, pw)
        return torch.where(m, Si.reshape(shape6), xi.reshape(shape6)).reshape(K, C, H, W)
    return torch.where(_pixel_region(regions, s).bool(), Si, xi)


# --------------------------------------------------------------------------- forward passes


# The caches below are shared by every thread (the Explorer computes on a worker thread):
# one lock keeps each read-check-write whole.
_CACHE_LOCK = threading.RLock()
_LAST_X: dict[str, Any] = {"x": None, "token": 0}
_BASE: dict[str, Any] = {}
_SETUP: dict[str, Any] = {}
_SUBSTRATES: dict[str, Any] = {"token": -1, "by_key": {}}


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return (
        a is not None and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    )


def _image_token(x: torch.Tensor) -> int:
    """A number that names the content of ``x``: the same as last call's iff ``x`` equals the
    last image batch seen (one comparison per call, shared by the caches below)."""
    with _CACHE_LOCK:
        if not _same_tensor(_LAST_X["x"], x):
            _LAST_X.update(x=x.detach().clone(), token=_LAST_X["token"] + 1)
        return _LAST_X["token"]


def base_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int | None = None, fp: tuple | None = None
) -> torch.Tensor:
    """Logits (B, C) of the unmodified ``x``, cached for the last (model, image batch).

    The cache is hit only when the model is the same object with unchanged parameters
    (in-place version counters) and hooks, and ``x`` is equal to the cached batch.
    ``fp``: ``model_fingerprint(model)`` if the caller already has it.
    """
    return _base_for(model, x, _image_token(x), model_fingerprint(model) if fp is None else fp, batch_size)


def scan(model: nn.Module) -> tuple[list[nn.Module], tuple]:
    """``capture.state.scan`` plus a content probe of every parameter and buffer.

    The version counters in ``scan``'s fingerprint miss a write through ``.data``
    (``head.weight.data.mul_(-1)``: ``.data`` is a view with its own counter), so the key also
    holds, per tensor, the sum of up to 256 evenly spaced elements: an edit through ``.data``
    that changes any of them (a scaling, a fill, a copy of other weights, added noise) drops
    the cached forward. An edit of single elements between the probed ones is not seen; edits
    through the parameter itself always are (its version counter)."""
    mods, fp = _scan_model(model)
    probes = []
    with torch.no_grad():
        for m in mods:
            for t in itertools.chain(m._parameters.values(), m._buffers.values()):
                if t is not None and t.numel() and not t.is_meta:
                    flat = t.detach().reshape(-1)
                    probes.append(flat[:: max(1, flat.numel() // 256)].sum(dtype=torch.float64))
    probe = tuple(torch.stack(probes).cpu().tolist()) if probes else ()
    return mods, (*fp, probe)


def model_fingerprint(model: nn.Module) -> tuple:
    """The fingerprint half of ``scan(model)`` (this module's, with the content probe)."""
    return scan(model)[1]


def _base_for(model: nn.Module, x: torch.Tensor, token: int, fp: tuple, batch_size: int | None = None) -> torch.Tensor:
    """``base_logits`` of ``x`` when its content token is known (a ``_Setup`` has it)."""
    logits = _cached_base(model, token, fp)
    if logits is None:
        logits = check_logits(model, forward_logits(model, x, batch_size))
        _store_base(model, token, logits, fp)
    return logits


def _store_base(model: nn.Module, token: int, logits: torch.Tensor, fp: tuple) -> None:
    with _CACHE_LOCK:
        _BASE.clear()
        _BASE.update(model=weakref.ref(model), fp=fp, token=token, logits=logits.detach())


def _cached_base(model: nn.Module, token: int, fp: tuple) -> torch.Tensor | None:
    with _CACHE_LOCK:
        ref = _BASE.get("model")
        if ref is not None and ref() is model and _BASE["token"] == token and _BASE["fp"] == fp:
            return _BASE["logits"]
        return None


def _cached_substrate(x: torch.Tensor, token: int, mode: str, **params: Any) -> torch.Tensor:
    """``_substrate`` of the image batch ``token`` names, kept per mode and the parameters that
    mode depends on: a brush on the same image does not blur (or draw noise for) it again, and
    the causal score reuses the noise of a ``noise`` brush."""
    key = (mode, *(params[k] for k in _SUBSTRATE_PARAMS[mode]))
    with _CACHE_LOCK:
        if _SUBSTRATES["token"] != token:
            _SUBSTRATES.update(token=token, by_key={})
        by_key = _SUBSTRATES["by_key"]
        if key not in by_key:
            by_key[key] = _substrate(x, mode, **params)
        return by_key[key]


def run_regions(
    model: nn.Module,
    s: _Setup,
    regions: torch.Tensor,
    img_idx: torch.Tensor,
    mode: str,
    *,
    seed: int = 0,
    sigma: float = 0.1,
    blur_size: int = 11,
    blur_sigma: float = 5.0,
    batch_size: int | None = None,
    with_base: bool = True,
    fp: tuple | None = None,
    mods: Sequence[nn.Module] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Act on ``regions`` (K, gh, gw) of images ``img_idx`` (K,); all sets batched.

    Returns (logits (K, C), base logits (B, C) or None, fed input (K, 3, H, W), kept indices or None).
    The unmodified forward is taken from the cache when possible, else fused into the batch.
    ``fp``, ``mods``: ``model_fingerprint(model)`` and ``submodules(model)`` if the caller
    already has them.
    """
    _check_mode(mode)
    if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
    x = s.x
    if with_base and fp is None:
        mods, fp = scan(model)
    token = s.token
    base = _cached_base(model, token, fp) if with_base else None
    need_base = with_base and base is None
    if mode != "drop":
        S = _cached_substrate(x, token, mode, seed=seed, sigma=sigma, blur_size=blur_size, blur_sigma=blur_sigma)
        fed = _blend(s, regions, img_idx, S)
        out = check_logits(model, forward_logits(model, torch.cat([x, fed]) if need_base else fed, batch_size, mods))
        if need_base:
            base, out = out[: x.shape[0]], out[x.shape[0] :]
            _store_base(model, token, base, fp)
        return out, base, fed, None
    # drop: remove tokens; group the sets by number of kept patches
    if need_base:
        base = _base_for(model, s.x, s.token, fp, batch_size)
    P = s.grid[0] * s.grid[1]
    if len(regions) == 1 == x.shape[0]:  # one brush on one image: no grouping
        logits, kept = _drop_one(model, s, regions.reshape(-1).tolist(), mods)
        return logits, base, x, (torch.tensor(kept, dtype=torch.long),)
    kept_flat = ~regions.reshape(-1, P)
    if s.info.readout in ("avg", "cls_avg") and not bool(kept_flat.any(dim=1).all()):
        raise _nothing_left()
    counts = kept_flat.sum(1)
    kept = tuple(torch.nonzero(kept_flat[k]).reshape(-1) for k in range(len(kept_flat)))
    out: torch.Tensor | None = None
    for n in torch.unique(counts).tolist():
        rows = torch.nonzero(counts == n).reshape(-1)
        step = len(rows) if batch_size is None else batch_size
        for i in range(0, len(rows), step):
            r = rows[i : i + step]
            imgs, src = torch.unique(img_idx[r], return_inverse=True)
            keep = torch.stack([kept[int(k)] for k in r]) if n else torch.zeros(len(r), 0, dtype=torch.long)
            with drop_tokens(model, keep, src, checked=True):
                lg = forward_logits(model, x[imgs.to(x.device)])
            if out is None:
                out = lg.new_empty(len(regions), lg.shape[1])
            out[r.to(lg.device)] = lg
    assert out is not None
    return out, base, x[img_idx.to(x.device)], kept


def _drop_one(
    model: nn.Module, s: _Setup, cells: list[bool], mods: Sequence[nn.Module] | None
) -> tuple[torch.Tensor, list[int]]:
    """Logits (1, C) of a one-image batch without the patches where ``cells`` (row-major) is
    True, and the kept patch indices."""
    kept = [i for i, c in enumerate(cells) if not c]
    if s.info.readout in ("avg", "cls_avg") and not kept:
        raise _nothing_left()
    with drop_tokens(model, kept, checked=True):
        return forward_logits(model, s.x, mods=mods), kept


def _nothing_left() -> InputError:
    return InputError(
        "mode 'drop' would remove every patch token of a global-average-pool model, leaving nothing to "
        "average; keep at least one patch or use another mode"
    )


def _resolve_set_target(target: TargetLike, base_k: torch.Tensor, img_idx: torch.Tensor, B: int) -> torch.Tensor:
    K = base_k.shape[0]
    if target is not None and not isinstance(target, numbers.Integral):
        arr = _as_tensor(target)
        if arr.ndim == 1 and arr.shape[0] == B and B != K:
            target = arr[img_idx]
    return resolve_target(target, base_k)


# --------------------------------------------------------------------------- public API


def intervene(
    model: nn.Module,
    x: torch.Tensor,
    patches: PatchesLike,
    mode: Mode = "noise",
    target: TargetLike = None,
    *,
    keep: bool = False,
    seed: int = 0,
    sigma: float = 0.1,
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    topk: int = 5,
    batch_size: int | None = None,
) -> Intervention:
    """Replace (or drop) image patches and report what the model predicts then.

    Args:
        model: a timm ViT.
        x: (B, 3, H, W) preprocessed images, or one image (3, H, W).
        patches: the region, as a bool (gh, gw) grid or (H, W) pixel mask (every image), a
            (B, gh, gw) / (B, H, W) bool stack (one per image), a list of row-major patch
            indices (every image), or a list of patch sets for ONE image (each set is one
            intervention; all are batched). A pixel mask selects a patch if ANY of its pixels
            is set (a brush stroke touching a patch selects it).
        mode: ``"blur"`` (Gaussian, ``blur_size`` x ``blur_size``, ``blur_sigma``; defaults are
            RISE's insertion substrate 11/5; reflect padding), ``"mean"`` (per-channel mean of
            the image), ``"zero"`` (0 in normalised space = the dataset mean colour),
            ``"noise"`` (ViT-CX: ``x*M + eps*(1-M)``, ``eps ~ N(0, sigma^2)`` in normalised
            space, one draw per image from ``seed``, shared by all sets of that image) or
            ``"drop"`` (remove the patch tokens after the position embedding; the kept tokens
            keep their position embeddings; GAP models average over the kept patches).
        target: None (top-1 of the unmodified image), an int, K ints (one per set) or B ints.
        keep: True means keep ONLY ``patches`` and act on the rest.
        seed, sigma: noise seed and standard deviation (``noise`` mode and the causal score).
        topk: how many top classes to report before and after.
        batch_size: forward chunk size (None: all sets in one pass).

    Returns:
        An ``Intervention``; its ``causal_score`` is computed on first access.

    Cost: one batched forward over the K sets; the unmodified forward is cached for the
    last image batch and model state, else fused into the same batch.
    """
    _check_mode(mode)
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    if not isinstance(model, nn.Module):
        inspect_vit(model)  # raises the error that says what is expected
    target = _check_args(model, target, keep=keep, seed=seed, sigma=sigma, blur_sigma=blur_sigma,
                         blur_size=blur_size, batch_size=batch_size)
    check_int("topk", topk, 1, fix="how many top classes to report, e.g. 5")
    mods, fp = scan(model)
    s = _setup(model, x, fp)
    if mode == "drop" and isinstance(s.info, ClassifierInfo):
        raise not_token_mode(s.info)
    B = s.x.shape[0]
    cells = _index_cells(patches, s.grid) if mode == "drop" and B == 1 else None
    if cells is not None:  # one brush dropped from one image: the region stays a Python list until asked for
        if keep:
            cells = [not c for c in cells]
        base = _base_for(model, s.x, s.token, fp, batch_size)
        logits, kept_list = _drop_one(model, s, cells, mods)
        fed, img_idx = s.x, None

        def regions_of() -> torch.Tensor:
            return torch.tensor(cells, dtype=torch.bool).reshape(1, *s.grid)

        def index_of() -> torch.Tensor:
            return torch.zeros(1, dtype=torch.long)

        def kept_of() -> tuple[torch.Tensor, ...]:
            return (torch.tensor(kept_list, dtype=torch.long),)
    else:
        regions, img_idx = _parse_patches(patches, s)
        if keep:
            regions = ~regions
        logits, base, fed, kept = run_regions(
            model, s, regions, img_idx, mode, seed=seed, sigma=sigma, blur_size=blur_size,
            blur_sigma=blur_sigma, batch_size=batch_size, fp=fp, mods=mods,
        )
        assert base is not None

        def regions_of() -> torch.Tensor:
            return regions

        def index_of() -> torch.Tensor:
            return img_idx

        def kept_of() -> tuple[torch.Tensor, ...] | None:
            return kept
    K = logits.shape[0]
    one = K == B == 1
    base_k = base if one else base[img_idx.to(base.device)]
    tgt = base_k.argmax(dim=-1) if target is None else _resolve_set_target(target, base_k, img_idx, B)
    probs = logits.softmax(-1)
    base_probs = base_k.softmax(-1)
    probs_if_noise = probs if mode == "noise" else None
    dev = logits.device

    def lazy_causal() -> torch.Tensor:
        if model_fingerprint(model) != fp:
            raise CaptureError(
                "the model changed (parameters or hooks) since intervene() ran; call vx.causal_score(...) instead"
            )
        return _causal(model, s, regions_of(), index_of(), tgt, base_probs, seed=seed, sigma=sigma,
                       batch_size=batch_size, probs_xk=probs_if_noise)

    return Intervention(
        logits=logits, probs=probs, base_probs=base_probs, target=tgt, input=fed, mode=mode, keep=bool(keep),
        # a copy of the cached base logits: a caller may edit the result in place
        _base_logits=(lambda: base_k.clone()) if one else (lambda: base_k),
        _regions=lambda: regions_of().to(dev), _image_index=lambda: index_of().to(dev),
        _kept=kept_of, _k=int(topk), _causal=lazy_causal,
    )


def _causal(
    model: nn.Module,
    s: _Setup,
    regions: torch.Tensor,
    img_idx: torch.Tensor,
    tgt: torch.Tensor,
    base_probs: torch.Tensor,
    *,
    seed: int,
    sigma: float,
    batch_size: int | None,
    probs_xk: torch.Tensor | None = None,
) -> torch.Tensor:
    """ViT-CX step 7 for binary masks ``M = 1 - region``: ``P(x*M + e(1-M)) - P(x + e(1-M)) + p_c``."""
    x = s.x
    eps = _cached_substrate(x, s.token, "noise", seed=seed, sigma=sigma)  # (B, C, H, W)
    ref = _blend(s, regions, img_idx, x + eps)  # x + eps (1 - M)
    if probs_xk is None:
        xk = _blend(s, regions, img_idx, eps)  # x M + eps (1 - M)
        p = forward_logits(model, torch.cat([xk, ref]), batch_size).softmax(-1)
        p_xk, p_ref = p[: len(ref)], p[len(ref) :]
    else:
        p_xk, p_ref = probs_xk, forward_logits(model, ref, batch_size).softmax(-1)
    rows = torch.arange(len(tgt), device=p_ref.device)
    return p_xk[rows, tgt] - p_ref[rows, tgt] + base_probs[rows, tgt]


def causal_score(
    model: nn.Module,
    x: torch.Tensor,
    patches: PatchesLike,
    target: TargetLike = None,
    *,
    keep: bool = False,
    seed: int = 0,
    sigma: float = 0.1,
    batch_size: int | None = None,
) -> torch.Tensor:
    """The ViT-CX causal score of a patch region (Xie et al. 2022, docs/methods.md §10 step 7).

    The region is treated as one ViT-CX mask ``M`` (1 on the kept pixels): ``M = 1 - region``
    to remove the patches, ``M = region`` with ``keep=True``. With one noise draw
    ``eps ~ N(0, sigma^2)`` (seeded, per image): ``x_k = x*M + eps*(1-M)``,
    ``x'_k = x + eps*(1-M)``, ``Delta = P(x_k) - P(x'_k) + p_c`` and the score is
    ``Delta[target]``. ``patches`` and ``target`` are read as in ``intervene``.

    Returns:
        (K,) one score per patch set.
    """
    model = as_vit(model)
    target = _check_args(model, target, keep=keep, seed=seed, sigma=sigma, batch_size=batch_size)
    s = _setup(model, x)
    regions, img_idx = _parse_patches(patches, s)
    if keep:
        regions = ~regions
    base = base_logits(model, s.x, batch_size)
    base_k = base[img_idx.to(base.device)]
    tgt = _resolve_set_target(target, base_k, img_idx, s.x.shape[0])
    return _causal(model, s, regions, img_idx, tgt, base_k.softmax(-1), seed=seed, sigma=sigma, batch_size=batch_size)


def counterfactual(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    mode: Mode = "noise",
    order_by: str | torch.Tensor | np.ndarray = "rollout",
    *,
    max_patches: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    sigma: float = 0.1,
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    prune: bool = True,
) -> Counterfactual | list[Counterfactual]:
    """Find, per image, a small set of patches whose removal changes the prediction.

    Greedy: remove the first k patches of ``order_by`` (a method key, explained with
    ``vx.explain(model, x, order_by, target)``, or a (gh, gw) / (B, gh, gw) map; larger =
    first) for k = 1, 2, ... (``batch_size`` prefixes per image and round) until the top-1
    class is no longer ``target``. Prune: while some single chosen patch can be put back with
    the prediction still changed, put back the one that leaves ``target`` least probable.
    The images of a batch are searched together: a round's prefixes (or put-back candidates)
    of every image still searching share the forward passes, ``batch_size`` images per pass.

    Cost: the greedy pass takes about k / ``batch_size`` forward passes for k chosen
    patches; pruning takes up to k rounds of k candidates, i.e. about k² / ``batch_size``
    image evaluations, which dominates when the order is poor (e.g. a random map). Pass
    ``prune=False`` or a ``max_patches`` budget to bound it.

    Args:
        x: one image (3, H, W) or (1, 3, H, W), or a batch (B, 3, H, W).
        target: the class whose prediction should change (None: the current top-1), an
            int or B ints.
        mode: how patches are removed (as in ``intervene``; ``noise`` draws one noise image
            per image of the batch from ``seed``, as ``intervene`` does).
        max_patches: greedy budget (None: every patch).

    Returns:
        A ``Counterfactual`` for one image; for a batch of B > 1, a list of B of them.
    """
    model = as_vit(model)
    _check_mode(mode)
    target = _check_args(model, target, seed=seed, sigma=sigma, blur_sigma=blur_sigma, blur_size=blur_size,
                         batch_size=batch_size)
    check_bool("prune", prune)
    s = _setup(model, x)
    if mode == "drop" and isinstance(s.info, ClassifierInfo):
        raise not_token_mode(s.info)
    B = s.x.shape[0]
    gh, gw = s.grid
    P = gh * gw
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    max_patches = P if max_patches is None else check_int("max_patches", max_patches, 1, P, fix="or None")
    base = base_logits(model, s.x)
    tgts = resolve_target(target, base).tolist()
    base_probs = base.softmax(-1)
    if isinstance(order_by, str):
        from .api import explain

        score_maps = explain(model, s.x, method=order_by, target=tgts).patch_map
    else:
        score_maps = _as_tensor(order_by, "order_by").to(torch.float32)
        if tuple(score_maps.shape) not in ((gh, gw), (B, gh, gw)):
            raise InputError(
                f"order_by map must have shape {(gh, gw)} or {(B, gh, gw)}, got {tuple(score_maps.shape)}"
            )
        score_maps = score_maps.expand(B, gh, gw)
        if not bool(torch.isfinite(score_maps).all()):
            raise InputError("the order_by map has NaN or infinite values, so it orders no patches; give a finite map")
    orders = torch.sort(score_maps.reshape(B, -1).detach().cpu().float(), dim=1, descending=True, stable=True).indices
    kw = {"seed": seed, "sigma": sigma, "blur_size": blur_size, "blur_sigma": blur_sigma, "with_base": False}

    def evaluate(sets: list[torch.Tensor], owners: list[int]) -> torch.Tensor:
        """Probabilities (N, C) after removing each of N patch sets ((P,) bool) from image ``owners[n]``."""
        regions = torch.stack(sets).reshape(-1, gh, gw)
        lg, *_ = run_regions(model, s, regions, torch.tensor(owners), mode, batch_size=batch_size, **kw)
        return lg.softmax(-1)

    # greedy: each image still searching tries its next batch_size prefixes; all in one call
    paths: list[list[torch.Tensor]] = [[base_probs[b]] for b in range(B)]
    found: list[int | None] = [None] * B
    start = [1] * B
    searching = list(range(B))
    while searching:
        sets, owners, ks = [], [], []
        for b in searching:
            for k in range(start[b], min(start[b] + batch_size, max_patches + 1)):
                m = torch.zeros(P, dtype=torch.bool)
                m[orders[b, :k]] = True
                sets.append(m)
                owners.append(b)
                ks.append(k)
            start[b] += batch_size
        probs = evaluate(sets, owners)
        for j, (b, k) in enumerate(zip(owners, ks)):
            if found[b] is None:
                paths[b].append(probs[j])
                if int(probs[j].argmax()) != tgts[b]:
                    found[b] = k
        searching = [b for b in searching if found[b] is None and start[b] <= max_patches]

    chosen = [torch.zeros(P, dtype=torch.bool) for _ in range(B)]
    final = [paths[b][-1] for b in range(B)]
    for b in range(B):
        if found[b] is not None:
            chosen[b][orders[b, : found[b]]] = True
    # prune: each image still pruning offers every single put-back as a candidate; all in one call
    pruning = [b for b in range(B) if prune and found[b] is not None and found[b] > 1]
    while pruning:
        sets, owners, spans = [], [], {}
        for b in pruning:
            members = torch.nonzero(chosen[b]).reshape(-1)
            cands = chosen[b][None].repeat(len(members), 1)
            cands[torch.arange(len(members)), members] = False
            spans[b] = (len(sets), len(sets) + len(members))
            sets.extend(cands)
            owners.extend([b] * len(members))
        probs = evaluate(sets, owners)
        still = []
        for b in pruning:
            lo, hi = spans[b]
            p, t = probs[lo:hi], tgts[b]
            ok = p.argmax(-1) != t
            if not bool(ok.any()):
                continue
            best = int(p[:, t].masked_fill(~ok, math.inf).argmin())
            chosen[b], final[b] = sets[lo + best], p[best]
            if int(chosen[b].sum()) > 1:
                still.append(b)
        pruning = still

    out = []
    for b in range(B):
        t = tgts[b]
        new = None if found[b] is None else int(final[b].argmax())
        out.append(Counterfactual(
            patches=chosen[b].reshape(gh, gw), found=found[b] is not None, target=t, new_class=new,
            path_target=[float(p[t]) for p in paths[b]],
            path_new=[] if new is None else [float(p[new]) for p in paths[b]],
            greedy_size=max_patches if found[b] is None else found[b], order=orders[b], probs=final[b],
            base_probs=base_probs[b], mode=mode,
        ))
    return out[0] if B == 1 else out
