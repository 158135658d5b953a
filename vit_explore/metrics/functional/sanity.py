"""Model-parameter randomisation sanity check (Adebayo et al., "Sanity checks for saliency
maps", NeurIPS 2018), cascading from the top, one ViT block at a time (docs/evaluation.md §1.9).

The check works on a deep copy; the model passed in is never modified. The explained class is
the original model's top-1 (or ``target``) and stays fixed while weights are randomised. Each
stage re-initialises every sub-module with ``reset_parameters`` (as Quantus MPRT does; bare
parameters such as ``cls_token`` and ``pos_embed`` are kept) under ``torch.manual_seed(seed +
stage)`` inside ``torch.random.fork_rng`` so the caller's RNG state is untouched.
A method passes when the similarity to the original map falls towards 0 as stages accumulate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ._common import as_maps, minmax

SIMILARITIES = ("spearman_abs", "spearman", "cosine", "ssim")


def spearman(a, b) -> torch.Tensor:
    """Spearman rank correlation per row of (B, ...) maps (average ranks for ties), float64;
    NaN when a map is constant."""
    from scipy.stats import rankdata

    a = as_maps(a).flatten(1).double().cpu().numpy()
    b = as_maps(b).flatten(1).double().cpu().numpy()
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    return pearson(torch.from_numpy(ra), torch.from_numpy(rb))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    num = (a * b).sum(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def cosine(a, b) -> torch.Tensor:
    """Cosine similarity per map, float64 (NaN for an all-zero map)."""
    a = as_maps(a).flatten(1).double()
    b = as_maps(b).flatten(1).double().to(a.device)
    den = a.norm(dim=1) * b.norm(dim=1)
    num = (a * b).sum(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def ssim(a, b, *, win_size: int = 7) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of min-max normalised maps, data range 1, uniform window
    ``win_size`` (shrunk to the largest odd size that fits), sample covariance, mean over the
    valid region (scikit-image's defaults), per map, float64."""
    a = minmax(as_maps(a)).double()[:, None]
    b = minmax(as_maps(b)).double().to(a.device)[:, None]
    w = min(win_size, a.shape[-1], a.shape[-2])
    w = w if w % 2 else w - 1
    if w < 1:
        raise InputError("maps are too small for SSIM")
    n = w * w
    cov_norm = n / (n - 1) if n > 1 else 1.0
    k = torch.ones(1, 1, w, w, dtype=torch.float64, device=a.device) / n

    def f(t):
        return F.conv2d(t, k)

    ux, uy = f(a), f(b)
    vx = cov_norm * (f(a * a) - ux * ux)
    vy = cov_norm * (f(b * b) - uy * uy)
    vxy = cov_norm * (f(a * b) - ux * uy)
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def similarity(name: str, a, b) -> torch.Tensor:
    if name == "spearman_abs":
        return spearman(as_maps(a).abs(), as_maps(b).abs())
    if name == "spearman":
        return spearman(a, b)
    if name == "cosine":
        return cosine(a, b)
    if name == "ssim":
        return ssim(a, b)
    raise InputError(f"unknown similarity {name!r}; use one of {list(SIMILARITIES)}")


def cascade_stages(model: nn.Module) -> list[str]:
    """Stage names from the top down: the top-level children in reverse order, with a
    ``ModuleList``/``Sequential`` child (the ViT ``blocks``) expanded into its elements."""
    stages = []
    for name, child in reversed(list(model.named_children())):
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) > 0:
            stages += [f"{name}.{i}" for i in reversed(range(len(child)))]
        elif any(hasattr(m, "reset_parameters") for m in child.modules()):
            stages.append(name)
    return stages


def _randomise(model: nn.Module, stage: str, seed: int) -> None:
    sub = model.get_submodule(stage)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in sub.modules():
            fn = getattr(m, "reset_parameters", None)
            if callable(fn):
                fn()


@dataclass(frozen=True)
class SanityResult:
    """Similarity of each stage's maps to the original maps.

    Attributes:
        stages: randomised stages in cascade order (``"original"`` first).
        scores: similarity name -> (S, B) float64 array (row 0: the original against itself).
        maps: (S, B, h, w) maps after each stage.
        target: (B,) explained class (fixed).
    """

    stages: list[str]
    scores: dict[str, np.ndarray]
    maps: torch.Tensor
    target: torch.Tensor

    def mean(self, name: str = "spearman_abs") -> dict[str, float]:
        return {s: float(np.nanmean(v)) for s, v in zip(self.stages, self.scores[name])}


def model_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    method: str | Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = "rollout",
    *,
    target=None,
    seed: int = 42,
    stages: Sequence[str] | None = None,
    similarities: Sequence[str] = SIMILARITIES,
    **params,
) -> SanityResult:
    """Cascading model-parameter randomisation, one block per stage.

    Args:
        model: the trained model (copied; the original is left as it was).
        x: (B, C, H, W) inputs.
        method: a registered method key (run through ``vit_explore.explain`` with ``params``),
            or a callable ``f(model, x, target) -> (B, h, w)``.
        target: explained class (default: the original model's top-1), fixed for all stages.
        seed: stage ``s`` (1-based) is reset under ``manual_seed(seed + s)``.
        stages: stage names (default :func:`cascade_stages`: head, norms, blocks from the last).
        similarities: names among :data:`SIMILARITIES`.
    """
    for s in similarities:
        if s not in SIMILARITIES:
            raise InputError(f"unknown similarity {s!r}; use one of {list(SIMILARITIES)}")

    if isinstance(method, str):
        from ...api import explain

        def run(m, xx, t):
            return explain(m, xx, method, target=t, **params).patch_map
    elif callable(method):
        run = method
    else:
        raise InputError(f"method must be a method key or a callable, got {type(method).__name__}")

    with torch.no_grad():
        tgt = model(x).argmax(-1) if target is None else torch.as_tensor(target, device=x.device).long().reshape(-1).expand(x.shape[0])
    original = as_maps(run(model, x, tgt)).detach().float()
    work = copy.deepcopy(model)
    names = list(stages) if stages is not None else cascade_stages(work)
    maps = [original]
    for i, st in enumerate(names, start=1):
        try:
            _randomise(work, st, seed + i)
        except AttributeError as exc:
            raise InputError(f"the model has no sub-module {st!r}; stages: {cascade_stages(work)}") from exc
        maps.append(as_maps(run(work, x, tgt)).detach().float())
    scores = {s: np.stack([similarity(s, original, m).cpu().numpy() for m in maps]) for s in similarities}
    return SanityResult(["original", *names], scores, torch.stack(maps), tgt)
