"""Live interventions on image patches: what the model predicts without (or with only) a region.

``intervene`` replaces a set of patches by a substrate (``blur``, ``mean``, ``zero``,
``noise``) or removes their tokens from the sequence (``drop``), for many patch sets in one
batched forward pass, and reports the new logits, probabilities and the change for the
target and the top-k classes. ``causal_score`` gives the region's ViT-CX causal score
(Xie et al. 2022, arXiv:2211.03064, docs/methods.md §10 step 7), the quantity ViT-CX
aggregates over its masks, so a brushed region and a ViT-CX mask are measured alike.
The patch sets, substrates and forward passes are ``vit_explore.perturb``'s; pass a
``perturb.ForwardEngine`` as ``engine`` to keep its caches between calls (the Explorer does).
The counterfactual search is in ``vit_explore.counterfactual_search`` (it explains with
``vx.explain``). The head and token ablations (``ablate_heads``, ``block_tokens``) live in
``vit_explore.capture.ablation`` and are re-exported here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn

from ._checks import as_tensor, check_bool, check_float, check_int, check_seed
from .capture.ablation import ablate_heads, block_tokens, forward_logits
from .capture.adapters import inspect_vit
from .capture.classifier import ClassifierInfo, not_token_mode
from .capture.hf import as_vit
from .errors import CaptureError
from .perturb import (
    MODES,
    ForwardEngine,
    PatchesLike,
    Setup,
    check_mode,
    index_cells,
    model_fingerprint,
    parse_patches,
    scan,
)
from .targets import TargetLike, class_index, needs_class, resolve_target

__all__ = [
    "MODES",
    "Intervention",
    "Mode",
    "TopK",
    "ablate_heads",
    "block_tokens",
    "causal_score",
    "intervene",
]

Mode = Literal["blur", "mean", "zero", "noise", "drop"]


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


# --------------------------------------------------------------------------- arguments


def check_args(
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
    return cast(TargetLike, class_index(model, target))  # class names replaced by their indices



def _parse(patches: PatchesLike, s: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """``perturb.parse_patches`` for the setup's batch: regions (K, gh, gw), image index (K,)."""
    return parse_patches(patches, s.x.shape[0], s.grid, (s.x.shape[-2], s.x.shape[-1]), s.info.patch_size)


def _resolve_set_target(target: TargetLike, base_k: torch.Tensor, img_idx: torch.Tensor | None, B: int) -> torch.Tensor:
    K = base_k.shape[0]
    if target is not None and not isinstance(target, numbers.Integral):
        arr = as_tensor("target", target)
        if arr.ndim == 1 and arr.shape[0] == B and B != K and img_idx is not None:
            target = arr[img_idx]
    t = resolve_target(target, base_k)
    assert isinstance(t, torch.Tensor)  # check_args refused callables (needs_class)
    return t



# --------------------------------------------------------------------------- public API


def intervene(
    model: nn.Module,
    x: torch.Tensor,
    patches: PatchesLike,
    mode: str = "noise",
    target: TargetLike = None,
    *,
    keep: bool = False,
    seed: int = 0,
    sigma: float = 0.1,
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    topk: int = 5,
    batch_size: int | None = None,
    engine: ForwardEngine | None = None,
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
        engine: a ``perturb.ForwardEngine`` whose caches to use and fill (None: a fresh one).

    Returns:
        An ``Intervention``; its ``causal_score`` is computed on first access.

    Cost: one batched forward over the K sets; the unmodified forward is cached by the engine
    for the last image batch and model state, else fused into the same batch.
    """
    check_mode(mode)
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    if not isinstance(model, nn.Module):
        inspect_vit(model)  # raises the error that says what is expected
    target = check_args(model, target, keep=keep, seed=seed, sigma=sigma, blur_sigma=blur_sigma,
                         blur_size=blur_size, batch_size=batch_size)
    check_int("topk", topk, 1, fix="how many top classes to report, e.g. 5")
    eng = ForwardEngine() if engine is None else engine
    mods, fp = scan(model)
    s = eng.setup(model, x, fp)
    if mode == "drop" and isinstance(s.info, ClassifierInfo):
        raise not_token_mode(s.info)
    B = s.x.shape[0]
    cells = index_cells(patches, s.grid) if mode == "drop" and B == 1 else None
    if cells is not None:  # one brush dropped from one image: the region stays a Python list until asked for
        if keep:
            cells = [not c for c in cells]
        base = eng.base_for(model, s.x, s.token, fp, batch_size)
        logits, kept_list = eng.drop_one(model, s, cells, mods)
        fed, img_idx = s.x, None

        def regions_of() -> torch.Tensor:
            return torch.tensor(cells, dtype=torch.bool).reshape(1, *s.grid)

        def index_of() -> torch.Tensor:
            return torch.zeros(1, dtype=torch.long)

        def kept_of() -> tuple[torch.Tensor, ...] | None:
            return (torch.tensor(kept_list, dtype=torch.long),)
    else:
        regions, img_idx = _parse(patches, s)
        if keep:
            regions = ~regions
        logits, fused_base, fed_out, kept = eng.run_regions(
            model, s, regions, img_idx, mode, seed=seed, sigma=sigma, blur_size=blur_size,
            blur_sigma=blur_sigma, batch_size=batch_size, fp=fp, mods=mods,
        )
        assert fused_base is not None and fed_out is not None  # with_base=True, keep_fed=True
        fed = fed_out
        base = fused_base

        def regions_of() -> torch.Tensor:
            return regions

        def index_of() -> torch.Tensor:
            return img_idx

        def kept_of() -> tuple[torch.Tensor, ...] | None:
            return kept
    K = logits.shape[0]
    one = K == B == 1
    base_k = base if one or img_idx is None else base[img_idx.to(base.device)]  # img_idx None: one image, one set
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
        return _causal(eng, model, s, regions_of(), index_of(), tgt, base_probs, seed=seed, sigma=sigma,
                       batch_size=batch_size, probs_xk=probs_if_noise)

    return Intervention(
        logits=logits, probs=probs, base_probs=base_probs, target=tgt, input=fed, mode=mode, keep=bool(keep),
        # a copy of the cached base logits: a caller may edit the result in place
        _base_logits=(lambda: base_k.clone()) if one else (lambda: base_k),
        _regions=lambda: regions_of().to(dev), _image_index=lambda: index_of().to(dev),
        _kept=kept_of, _k=int(topk), _causal=lazy_causal,
    )


def _causal(
    eng: ForwardEngine,
    model: nn.Module,
    s: Setup,
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
    eps = eng.substrate(x, s.token, "noise", seed=seed, sigma=sigma)  # (B, C, H, W)
    ref = eng.blend(s, regions, img_idx, x + eps)  # x + eps (1 - M)
    if probs_xk is None:
        xk = eng.blend(s, regions, img_idx, eps)  # x M + eps (1 - M)
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
    engine: ForwardEngine | None = None,
) -> torch.Tensor:
    """The ViT-CX causal score of a patch region (Xie et al. 2022, docs/methods.md §10 step 7).

    The region is treated as one ViT-CX mask ``M`` (1 on the kept pixels): ``M = 1 - region``
    to remove the patches, ``M = region`` with ``keep=True``. With one noise draw
    ``eps ~ N(0, sigma^2)`` (seeded, per image): ``x_k = x*M + eps*(1-M)``,
    ``x'_k = x + eps*(1-M)``, ``Delta = P(x_k) - P(x'_k) + p_c`` and the score is
    ``Delta[target]``. ``patches`` and ``target`` are read as in ``intervene``.

    ``engine``: a ``perturb.ForwardEngine`` whose caches to use (None: a fresh one).

    Returns:
        (K,) one score per patch set.
    """
    model = as_vit(model)
    target = check_args(model, target, keep=keep, seed=seed, sigma=sigma, batch_size=batch_size)
    eng = ForwardEngine() if engine is None else engine
    s = eng.setup(model, x)
    regions, img_idx = _parse(patches, s)
    if keep:
        regions = ~regions
    base = eng.base_logits(model, s.x, batch_size)
    base_k = base[img_idx.to(base.device)]
    tgt = _resolve_set_target(target, base_k, img_idx, s.x.shape[0])
    return _causal(eng, model, s, regions, img_idx, tgt, base_k.softmax(-1), seed=seed, sigma=sigma,
                   batch_size=batch_size)

