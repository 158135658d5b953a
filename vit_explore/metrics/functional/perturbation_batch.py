"""Many perturbation curves at once: every map x every (preset, mode) of one batch of images
goes through one stream of forward passes, in large batches under ``torch.inference_mode``.

What is shared (each image is forwarded once, however many curves need it):

* the clean image (step 0 of every deletion curve and of Chefer's tests, the last step of
  every insertion curve) and each substrate (the last deletion step, the first insertion
  step; the grey and black substrates are the same image for every input);
* a perturbed image that two curves build the same way (same map, ranking unit and order,
  same start and finish images, same count ``k``), e.g. every ``tam`` deletion step is a
  ``rise`` deletion step (1792 = 8 x 224).

The scores are those :func:`perturbation.perturbation_curves` computed one preset at a time
before (``tests/metrics/test_perturbation_batch.py`` restates that loop and asserts equality):
a classifier's logits for an image do not depend on the other images of its batch, except
that some CPU kernels take another path for 1-3 images, so no batch here is smaller than 4
unless fewer images are needed in all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import InputError
from ._common import as_maps, pool_to_grid, ranks, upsample
from .perturbation import PerturbationCurves, _forward, _patch_size, get_preset, preset_auc, substrate_for

_MIN_BATCH = 4


def perturbation_curves_many(
    model: nn.Module,
    x: torch.Tensor,
    maps: Mapping[str, torch.Tensor | np.ndarray],
    runs: Sequence[tuple[str, str]],
    *,
    target: torch.Tensor | int | None = None,
    labels: torch.Tensor | None = None,
    step: int | None = None,
    batch_size: int = 128,
    patch_size: int | tuple[int, int] | None = None,
    mean=None,
    std=None,
) -> dict[str, dict[tuple[str, str], PerturbationCurves]]:
    """Curves of every map under every ``(preset, mode)`` run, sharing forward passes.

    Args:
        model: a classifier returning logits (B, K); never modified.
        x: (B, C, H, W) normalised inputs.
        maps: name -> (B, h, w) saliency maps (as in :func:`perturbation.perturbation_curves`).
        runs: (preset, mode) pairs, e.g. ``[("rise", "deletion"), ("patch", "deletion")]``.
        target, labels, step, patch_size, mean, std: as in ``perturbation_curves``.
        batch_size: images per forward pass (the last pass may take up to 3 more).

    Returns:
        ``out[name][(preset, mode)]``: the :class:`PerturbationCurves` that
        ``perturbation_curves(model, x, maps[name], preset=preset, mode=mode, ...)`` returns.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    B, C, H, W = x.shape
    sals = {}
    for name, sal in maps.items():
        s = as_maps(sal).to(x.device)
        if s.shape[0] != B:
            raise InputError(f"{s.shape[0]} maps for {B} images; pass one map per image")
        sals[name] = s
    presets = []
    for preset, mode in runs:
        p = get_preset(preset)
        if mode not in p.modes:
            raise InputError(f"preset {preset!r} has modes {list(p.modes)}, not {mode!r}")
        if p.score == "accuracy" and labels is None:
            raise InputError(
                f"preset {preset!r} measures top-1 accuracy against ground-truth labels; pass labels= (one per image)"
            )
        if p.fractions is None and step is not None and int(step) < 1:
            raise InputError(f"step must be a positive number of {'patches' if p.unit == 'patch' else 'pixels'}, got {step}")
        presets.append(p)

    clean_logits = None
    if target is None:  # as before: the top-1 class of a forward of the clean batch
        with torch.inference_mode():
            clean_logits = _forward(model, x, batch_size)
        tgt = clean_logits.argmax(-1)
    else:
        tgt = torch.as_tensor(target, device=x.device).long().reshape(-1).expand(B).clone()
    if labels is not None:
        labels = torch.as_tensor(labels, device=x.device).long().reshape(B)

    # whole images: the clean batch and each substrate kind, forwarded once
    images: dict[str, torch.Tensor] = {"clean": x}
    for p, (_, mode) in zip(presets, runs):
        kind = p.substrate[mode]
        if kind not in images:
            images[kind] = substrate_for(kind, x, model, mean, std)
    constant = {"zero", "black"}  # the same image for every input: forwarded once
    whole_slot: dict[tuple[str, int], int] = {}
    whole_src: list[tuple[str, int]] = []
    for kind in images:
        for b in range(1 if kind in constant else B):
            whole_slot[(kind, b)] = len(whole_src)
            whole_src.append((kind, b))

    # perturbed images, one group per (map, ranking, start, finish, k): B images each
    rank_cache: dict[tuple, torch.Tensor] = {}
    groups: list[tuple[tuple, int]] = []  # (plan key, k)
    group_of: dict[tuple[tuple, int], int] = {}
    plans: dict[tuple, tuple] = {}  # plan key -> (ranks, start kind, finish kind, patch geometry)
    layout: list[tuple[str, int, list[tuple[str, int]], torch.Tensor]] = []  # per (map, run)
    for name, sal in sals.items():
        for ri, (p, (_, mode)) in enumerate(zip(presets, runs)):
            if p.unit == "patch":
                ph, pw = _patch_size(model, sal, H, W, patch_size)
                geo: tuple | None = (H // ph, W // pw, ph, pw)
            else:
                geo = None
            negate = p.name == "chefer_perturbation" and mode == "negative"
            rkey = (name, geo, negate)
            if rkey not in rank_cache:
                if geo is not None:
                    grid = geo[:2]
                    rank_map = pool_to_grid(sal, grid) if tuple(sal.shape[-2:]) != grid else sal.float()
                else:
                    rank_map = upsample(sal, (H, W))
                flat = rank_map.reshape(B, -1)
                rank_cache[rkey] = ranks(-flat if negate else flat)
            r = rank_cache[rkey]
            N = r.shape[1]
            kind = p.substrate[mode]
            if p.fractions is not None:
                ks = [int(N * f) for f in p.fractions]
                xs = torch.tensor(p.fractions, dtype=torch.float64)
                start, finish = "clean", kind
            else:
                s = int(step if step is not None else p.step)
                n = math.ceil(N / s)
                ks = [min(i * s, N) for i in range(n + 1)]
                xs = torch.arange(n + 1, dtype=torch.float64) / n
                start, finish = ("clean", kind) if mode == "deletion" else (kind, "clean")
            pkey = (rkey, start, finish)
            plans[pkey] = (r, start, finish, geo)
            cells: list[tuple[str, int]] = []  # per step: ("whole", kind index) or ("group", g)
            for k in ks:
                if k <= 0 or k >= N:
                    cells.append(("whole", 0 if k <= 0 else 1))
                    continue
                gk = (pkey, k)
                if gk not in group_of:
                    group_of[gk] = len(groups)
                    groups.append(gk)
                cells.append(("group", group_of[gk]))
            layout.append((name, ri, [(start, finish)] + cells, xs))  # type: ignore[list-item]

    # one stream: whole images first, then every group's B images; score as they come out.
    # Each pass's input is written straight into one buffer. Every curve is cumulative (the
    # image at count k is the one at any smaller count with the next-ranked pixels replaced), so
    # each (map, ranking, start, finish) keeps its B current images and moves them from one
    # count to the next by replacing only the pixels ranked in between (scatter along the
    # ranking); a group's images are then one contiguous copy into the buffer.
    pix_order: dict[tuple, torch.Tensor] = {}  # rkey -> (B, H*W) pixels, most salient first
    for pkey, (r, _st, _fi, geo) in plans.items():
        if pkey[0] not in pix_order:
            n = r.shape[1]
            order = torch.empty_like(r).scatter_(1, r, torch.arange(n, device=r.device).expand_as(r))
            if geo is not None:  # each patch's pixels, patch by patch
                _gh, gw, ph, pw = geo
                cell = (torch.arange(ph, device=r.device)[:, None] * W + torch.arange(pw, device=r.device)).reshape(-1)
                corner = (torch.arange(n, device=r.device) // gw) * (ph * W) + (torch.arange(n, device=r.device) % gw) * pw
                order = (corner[order][..., None] + cell).reshape(B, -1)
            pix_order[pkey[0]] = order
    last_group = {groups[g][0]: g for g in range(len(groups))}
    state: dict[tuple, list] = {}  # pkey -> [current images (B, C, H*W), count]

    def advance(pkey: tuple, k: int) -> torch.Tensor:
        _r, st, fi, geo = plans[pkey]
        per = 1 if geo is None else geo[2] * geo[3]  # pixels per ranked unit
        if pkey not in state or state[pkey][1] > k:
            state[pkey] = [images[st].reshape(B, C, H * W).clone(), 0]
        cur, k0 = state[pkey]
        if k > k0:
            idx = pix_order[pkey[0]][:, k0 * per : k * per]
            idx = idx[:, None, :].expand(B, C, idx.shape[1])
            cur.scatter_(2, idx, images[fi].reshape(B, C, H * W).gather(2, idx))
            state[pkey][1] = k
        return cur.view(B, C, H, W)

    n_whole, total = len(whole_src), len(whole_src) + len(groups) * B
    group_scores = {"prob": torch.empty(len(groups), B), "accuracy": torch.empty(len(groups), B)}
    need = {p.score for p in presets}
    starts = list(range(0, total, batch_size))
    if len(starts) > 1 and total - starts[-1] < _MIN_BATCH:
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [total]))
    whole_parts: list[torch.Tensor] = []
    buf = torch.empty((max(j - i for i, j in bounds), *x.shape[1:]), dtype=x.dtype, device=x.device)
    with torch.inference_mode():
        for i, j in bounds:
            nw = max(0, min(j, n_whole) - i)
            if nw:
                torch.stack([images[kd][b] for kd, b in whole_src[i : i + nw]], out=buf[:nw])
            o = nw
            pieces: list[tuple[int, int, int]] = []  # (group, first image, end image)
            job = max(i, n_whole) - n_whole
            while job < j - n_whole:
                g, b0 = divmod(job, B)
                b1 = min(B, b0 + (j - n_whole - job))
                (pkey, k) = groups[g]
                buf[o : o + b1 - b0].copy_(advance(pkey, k)[b0:b1])
                if g == last_group[pkey] and b1 == B:
                    del state[pkey]
                pieces.append((g, b0, b1))
                o += b1 - b0
                job += b1 - b0
            logits = model(buf[: j - i]).float()
            if nw:
                whole_parts.append(logits[:nw])
            if pieces:
                lg = logits[nw:]
                g_of = torch.cat([torch.full((b1 - b0,), g, dtype=torch.long) for g, b0, b1 in pieces])
                b_of = torch.cat([torch.arange(b0, b1) for _g, b0, b1 in pieces])
                if "prob" in need:
                    tt = tgt[b_of.to(tgt.device)]
                    group_scores["prob"][g_of, b_of] = lg.softmax(-1).gather(1, tt[:, None])[:, 0].cpu()
                if "accuracy" in need:
                    assert labels is not None  # an accuracy preset is run only with labels
                    group_scores["accuracy"][g_of, b_of] = (lg.argmax(-1) == labels[b_of.to(labels.device)]).float().cpu()
        whole_logits = torch.cat(whole_parts)
    whole_prob = whole_logits.softmax(-1)
    whole_top = whole_logits.argmax(-1)
    bidx = torch.arange(B, device=x.device)

    def whole_score(kind: str, score: str) -> torch.Tensor:
        slots = torch.tensor([whole_slot[(kind, 0 if kind in constant else b)] for b in range(B)], device=x.device)
        if score == "prob":
            return whole_prob[slots, tgt[bidx]].cpu()
        return (whole_top[slots] == labels).float().cpu()

    if clean_logits is None:
        clean_logits = whole_logits[[whole_slot[("clean", b)] for b in range(B)]]
    out: dict[str, dict[tuple[str, str], PerturbationCurves]] = {name: {} for name in sals}
    for name, ri, cells, xs in layout:
        p, mode = presets[ri], runs[ri][1]
        (start, finish), steps = cells[0], cells[1:]
        cols = []
        for kind, v in steps:
            if kind == "whole":
                cols.append(whole_score(start if v == 0 else finish, p.score))
            else:
                cols.append(group_scores[p.score][v])
        curves = torch.stack(cols, 1).to(x.device)
        out[name][runs[ri]] = PerturbationCurves(
            curves=curves, x=xs, auc=preset_auc(curves, xs, p), target=tgt, preset=p.name, mode=mode,
            lower_is_better=p.modes[mode], extras={"clean_logits": clean_logits},
        )
    return out

