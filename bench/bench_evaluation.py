"""Speed of the benchmark's perturbation metrics (issue 17): the shared-forward engine
(``perturbation_curves_many``) against the one-preset-at-a-time loop it replaced, restated in
``tests/metrics/test_perturbation_batch.py`` (``old_curves``), interleaved in one process on
the same images and maps. Printed beside them: the model's own forward time per image at
the evaluation batch size, measured in the same run, and the floor of the metric set (the
distinct images it must forward, times that forward time).

    python bench/bench_evaluation.py [--limit 16] [--repeats 3]

Workload: ``vit-explore bench --dataset shapes --model toy-shapes --methods rollout`` with the
default metrics and the three baselines (four maps per image). The two paths are checked for
equality (bit for bit) before any timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vit_explore as vx
from tests.metrics.test_perturbation_batch import old_curves
from vit_explore import evaluation
from vit_explore.metrics import functional as MF


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=16, help="images (one benchmark batch of 16 by default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-batch", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = vx.load_model("toy-shapes").eval()
    ds = evaluation.make_dataset("shapes", model, a.limit)
    items = ds.load(range(a.limit))
    x = torch.stack([it.x for it in items])
    labels = torch.tensor([it.label for it in items])
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    with torch.no_grad():
        pred = model(x).argmax(-1)
    grid = (H // 8, W // 8)
    maps = {"rollout": vx.explain(model, x, "rollout", target=pred).patch_map.detach().float()}
    for b in MF.BASELINES:
        maps[f"baseline:{b}"] = MF.baseline_maps(b, x, range(B), grid, seed=0).float()
    runs = [evaluation._CURVES[m] for m in evaluation.DEFAULT_METRICS if m in evaluation._CURVES]

    def old():
        return {n: {r: old_curves(model, x, s, *r, pred, labels, a.eval_batch, 8) for r in runs} for n, s in maps.items()}

    def new():
        return MF.perturbation_curves_many(model, x, maps, runs, target=pred, labels=labels, batch_size=a.eval_batch,
                                           patch_size=8)

    o, n = old(), new()
    same = all(torch.equal(o[m][r][0], n[m][r].curves) and torch.equal(o[m][r][1], n[m][r].auc) for m in maps for r in runs)
    print(f"old and new curves and AUCs identical (bit for bit): {same}")
    if not same:
        raise SystemExit(1)

    # forward passes per image: old = every step of every curve + one clean batch per call
    T = {r: n["rollout"][r].curves.shape[1] for r in runs}
    old_fwd = len(maps) * sum(T[r] + 1 for r in runs)
    xb = x.repeat((a.eval_batch + B - 1) // B, 1, 1, 1)[: a.eval_batch]

    def fwd():
        with torch.inference_mode():
            model(xb)

    times: dict[str, list[float]] = {"old": [], "new": [], "fwd": []}
    for _ in range(a.repeats):  # interleaved
        for k, fn in (("old", old), ("new", new), ("fwd", fwd)):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    f = med["fwd"] / a.eval_batch
    # distinct images per input: each curve's inner steps, plus clean and substrates (shared)
    new_fwd = len(maps) * sum(T[r] - (1 if r[0] == "chefer_perturbation" else 2) for r in runs) + 2 + 2 / B
    print(f"toy-shapes {H}x{W}, {B} images, {len(maps)} maps, runs {runs}, {torch.get_num_threads()} threads,"
          f" medians of {a.repeats} interleaved repeats")
    print(f"model forward: {f * 1e3:.3f} ms/img at batch {a.eval_batch}")
    print(f"old loop : {med['old'] / B:.3f} s/img = {med['old'] / B / f:.0f} forwards/img ({old_fwd} forwarded)")
    print(f"new      : {med['new'] / B:.3f} s/img = {med['new'] / B / f:.0f} forwards/img ({new_fwd:.0f} forwarded)")
    print(f"speed-up : {med['old'] / med['new']:.2f}x;  floor (distinct images x forward) {new_fwd * f:.3f} s/img,"
          f" new / floor {med['new'] / B / (new_fwd * f):.2f}")


if __name__ == "__main__":
    main()
