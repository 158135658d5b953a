"""The shared-forward curve engine against the one-preset-at-a-time loop it replaced.

``old_curves`` restates, line for line, ``perturbation_curves`` as it was before the engine
(vit_explore 0.x, commit b0cf0d7): a clean forward, then every (image, step) image of one
preset built and forwarded in chunks of ``batch_size``. The engine must give the same
float32 scores bit for bit, so the AUCs and the benchmark table are identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vit_explore as vx
from vit_explore import evaluation
from vit_explore.metrics import functional as MF
from vit_explore.metrics.functional._common import pool_to_grid, ranks, upsample
from vit_explore.metrics.functional.perturbation import get_preset, preset_auc, substrate_for


@torch.no_grad()
def old_curves(model, x, sal, preset, mode, target, labels, batch_size, patch):
    """The pre-engine ``perturbation_curves`` loop (plain restatement)."""
    p = get_preset(preset)
    B, _C, H, W = x.shape
    clean = torch.cat([model(x[i : i + batch_size]) for i in range(0, B, batch_size)])
    tgt = clean.argmax(-1) if target is None else target
    if p.unit == "patch":
        grid = (H // patch, W // patch)
        rank_map = pool_to_grid(sal, grid) if tuple(sal.shape[-2:]) != grid else sal.float()
    else:
        rank_map = upsample(sal, (H, W))
    flat = rank_map.reshape(B, -1)
    if p.name == "chefer_perturbation" and mode == "negative":
        flat = -flat
    r = ranks(flat)
    N = flat.shape[1]
    if p.fractions is not None:
        ks = [int(N * f) for f in p.fractions]
        xs = torch.tensor(p.fractions, dtype=torch.float64)
        start, finish = x, substrate_for(p.substrate[mode], x, model)
    else:
        n = math.ceil(N / p.step)
        ks = [min(i * p.step, N) for i in range(n + 1)]
        xs = torch.arange(n + 1, dtype=torch.float64) / n
        sub = substrate_for(p.substrate[mode], x, model)
        start, finish = (x, sub) if mode == "deletion" else (sub, x)
    T = len(ks)
    k = torch.tensor(ks)
    img = torch.arange(B).repeat_interleave(T)
    stp = torch.arange(T).repeat(B)
    out = torch.empty(B * T)
    for i in range(0, B * T, batch_size):
        ii, ss = img[i : i + batch_size], stp[i : i + batch_size]
        m = r[ii] < k[ss][:, None]
        if p.unit == "patch":
            m = m.reshape(-1, *grid).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
        m = m.reshape(-1, 1, H, W)
        logits = model(torch.where(m, finish[ii], start[ii]))
        if p.score == "prob":
            out[i : i + batch_size] = logits.float().softmax(-1).gather(1, tgt[ii][:, None])[:, 0]
        else:
            out[i : i + batch_size] = (logits.argmax(-1) == labels[ii]).float()
    curves = out.reshape(B, T)
    return curves, preset_auc(curves, xs, p)


RUNS = [("rise", "deletion"), ("rise", "insertion"), ("patch", "deletion"), ("patch", "insertion"),
        ("tam", "deletion"), ("tam", "insertion"), ("chefer_perturbation", "positive"),
        ("chefer_perturbation", "negative")]


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = vx.load_model("toy-shapes").eval()
    ds = evaluation.make_dataset("shapes", model, 2)
    items = ds.load(range(2))
    x = torch.stack([it.x for it in items])
    labels = torch.tensor([it.label for it in items])
    return model, x, labels


def test_engine_equals_old_loop_for_every_preset(toy):
    model, x, labels = toy
    with torch.no_grad():
        pred = model(x).argmax(-1)
    g = torch.Generator().manual_seed(3)
    maps = {"patchmap": torch.rand(2, 12, 12, generator=g), "ties": MF.centre_gaussian(2, (96, 96))}
    new = MF.perturbation_curves_many(model, x, maps, RUNS, target=pred, labels=labels, batch_size=64, patch_size=8)
    for name, sal in maps.items():
        for preset, mode in RUNS:
            curves, auc = old_curves(model, x, sal, preset, mode, pred, labels, 64, 8)
            got = new[name][(preset, mode)]
            assert torch.equal(got.curves, curves), (name, preset, mode)
            assert torch.equal(got.auc, auc), (name, preset, mode)


def test_single_preset_api_equals_old_loop(toy):
    model, x, labels = toy
    sal = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(5))
    res = MF.perturbation_curves(model, x, sal, preset="rise", mode="insertion", batch_size=32)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    curves, auc = old_curves(model, x, sal, "rise", "insertion", pred, labels, 32, 8)
    assert torch.equal(res.target, pred)
    assert torch.equal(res.curves, curves) and torch.equal(res.auc, auc)


def test_benchmark_table_equals_old_loop(toy):
    """The default metric set of ``vit-explore bench``: AUCs and mean curves as the old loop."""
    model, _x, _labels = toy
    ds = evaluation.make_dataset("shapes", model, 2)
    res = evaluation.run_benchmark(model, ds, ["rollout"], baselines=["random", "centre"], batch_size=2, seed=0)
    items = ds.load(range(2))
    x = torch.stack([it.x for it in items])
    labels = torch.tensor([it.label for it in items])
    with torch.no_grad():
        pred = model(x).float().softmax(-1).argmax(-1)
    maps = {"rollout": vx.explain(model, x, "rollout", target=pred).patch_map.detach().float(),
            "baseline:random": MF.random_map(range(2), (12, 12), seed=0),
            "baseline:centre": MF.centre_gaussian(2, (96, 96))}
    for name, sal in maps.items():
        for metric, (preset, mode) in evaluation._CURVES.items():
            if metric not in res.metrics:
                continue
            curves, auc = old_curves(model, x, sal, preset, mode, pred, labels, 128, 8)
            assert res.table[name][metric] == float(np.mean(auc.numpy())), (name, metric)
            assert res.curves[name][metric]["y"] == np.mean(curves.double().numpy(), 0).tolist(), (name, metric)


def test_passes_that_cut_groups_anywhere_equal_old_loop(toy):
    """Small passes (6 images) cut every group of B images at a different place, and the stream
    mixes whole images, pixel and patch groups in one pass: the scores are still the old loop's."""
    model, x, labels = toy
    x3 = torch.cat([x, x[:1].flip(-1)])
    lab3 = torch.cat([labels, labels[:1]])
    with torch.no_grad():
        pred = model(x3).argmax(-1)
    maps = {"m": torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(7))}
    runs = [("patch", "deletion"), ("chefer_perturbation", "negative"), ("rise", "insertion")]
    new = MF.perturbation_curves_many(model, x3, maps, runs, target=pred, labels=lab3, batch_size=6, patch_size=8)
    for preset, mode in runs:
        # 43 images per old pass: no pass of 1-3 images (3 x 145, 3 x 10 and 3 x 43 images)
        curves, auc = old_curves(model, x3, maps["m"], preset, mode, pred, lab3, 43, 8)
        got = new["m"][(preset, mode)]
        assert torch.equal(got.curves, curves), (preset, mode)
        assert torch.equal(got.auc, auc), (preset, mode)
