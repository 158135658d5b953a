"""Counterfactual search: a small set of patches whose removal changes the prediction.

Above the explain API (``order_by`` may name a method, explained with ``vx.explain``) and
above ``interventions``; the perturbed forwards are ``vit_explore.perturb``'s.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._checks import as_tensor, check_bool, check_int
from .api import explain
from .capture.classifier import ClassifierInfo, not_token_mode
from .capture.hf import as_vit
from .errors import InputError
from .interventions import check_args
from .perturb import ForwardEngine, check_mode
from .targets import TargetLike, resolve_target

__all__ = ["Counterfactual", "counterfactual"]


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



def counterfactual(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    mode: str = "noise",
    order_by: str | torch.Tensor | np.ndarray = "rollout",
    *,
    max_patches: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    sigma: float = 0.1,
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    prune: bool = True,
    engine: ForwardEngine | None = None,
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
        engine: a ``perturb.ForwardEngine`` whose caches to use (None: a fresh one).

    Returns:
        A ``Counterfactual`` for one image; for a batch of B > 1, a list of B of them.
    """
    model = as_vit(model)
    check_mode(mode)
    target = check_args(model, target, seed=seed, sigma=sigma, blur_sigma=blur_sigma, blur_size=blur_size,
                         batch_size=batch_size)
    check_bool("prune", prune)
    eng = ForwardEngine() if engine is None else engine
    s = eng.setup(model, x)
    if mode == "drop" and isinstance(s.info, ClassifierInfo):
        raise not_token_mode(s.info)
    B = s.x.shape[0]
    gh, gw = s.grid
    P = gh * gw
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    max_patches = P if max_patches is None else check_int("max_patches", max_patches, 1, P, fix="or None")
    base = eng.base_logits(model, s.x)
    tgts = resolve_target(target, base).tolist()
    base_probs = base.softmax(-1)
    if isinstance(order_by, str):
        score_maps = explain(model, s.x, method=order_by, target=tgts).patch_map
    else:
        score_maps = as_tensor("order_by", order_by).to(torch.float32)
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
        lg, *_ = eng.run_regions(model, s, regions, torch.tensor(owners), mode, batch_size=batch_size, keep_fed=False, **kw)
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

