"""Speed of ``vit-explore bench --dataset shapes --model toy-shapes --methods rollout`` (issue 17):
the whole benchmark (default metrics, three baselines) with the current curve engine
(``perturbation_curves_many``) against the engine as it was before (``_eval_baseline``),
interleaved in one process, with a breakdown of where each run's time goes and, measured in
the same run, the model's own forward time per image at the evaluation batch size.

    python bench/bench_evaluation.py [--limit 32] [--repeats 3]

Rows: seconds per image and the same in forwards per image (s/img divided by the forward
time per image); the breakdown splits each run into data generation, the method (rollout and
the baselines), the curve engine's model forwards, the rest of the engine (building perturbed
images, ranking, scoring, AUCs, Python), and the remainder (the clean forward, mask metrics,
aggregation). The floor is the distinct images the engine must forward per input image times
the forward time per image. The first repeat checks that both runs' tables and mean curves
are equal (bit for bit).

What bounds it: on toy-shapes (96 px, 12 x 12 patches) one map needs 41 + 41 inner RISE steps
(9216 px / 224 px), 143 patch-deletion steps and 9 + 9 Chefer fractions, so the four maps of
an image need about 974 distinct forwarded images (printed). At the model's forward time per
image that is the floor; the numbers stay identical only if every one of them is forwarded,
so no exact implementation runs faster than before / floor times the old speed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vit_explore as vx
from bench._eval_baseline import perturbation_curves_many_before
from vit_explore import evaluation
from vit_explore.metrics import functional as MF


class _Clock:
    """Model forward time and images, split by whether the curve engine is running."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.in_engine, self.t0 = model, False, 0.0
        self.fwd = {True: 0.0, False: 0.0}
        self.images = {True: 0, False: 0}
        self.engine = 0.0

    @contextlib.contextmanager
    def hooked(self):
        def pre(_m, args):
            self.t0 = time.perf_counter()

        def post(_m, args, _out):
            self.fwd[self.in_engine] += time.perf_counter() - self.t0
            self.images[self.in_engine] += args[0].shape[0]

        hs = [self.model.register_forward_pre_hook(pre), self.model.register_forward_hook(post)]
        try:
            yield
        finally:
            for h in hs:
                h.remove()

    def wrap(self, engine):
        def timed(*a, **k):
            self.in_engine = True
            t0 = time.perf_counter()
            try:
                return engine(*a, **k)
            finally:
                self.engine += time.perf_counter() - t0
                self.in_engine = False
        return timed


@contextlib.contextmanager
def _engine(fn):
    """``evaluation`` calls ``MF.perturbation_curves_many``; point it at ``fn`` for one run."""
    saved = MF.perturbation_curves_many
    MF.perturbation_curves_many = fn
    try:
        yield
    finally:
        MF.perturbation_curves_many = saved


def run_bench(model, limit: int, engine, eval_batch: int) -> tuple[evaluation.BenchResult, dict[str, float]]:
    """One ``vit-explore bench`` run (dataset generation included) with the given curve engine."""
    clock = _Clock(model)
    t0 = time.perf_counter()
    ds = evaluation.make_dataset("shapes", model, limit)
    t_data = time.perf_counter() - t0
    with clock.hooked(), _engine(clock.wrap(engine)):
        res = evaluation.run_benchmark(model, ds, ["rollout"], eval_batch_size=eval_batch, seed=0)
    total = time.perf_counter() - t0
    n = res.meta["n_images"]
    method = sum(res.timing.values()) * n
    parts = {"total": total, "data": t_data, "method": method, "engine fwd": clock.fwd[True],
             "engine rest": clock.engine - clock.fwd[True],
             "other": total - t_data - method - clock.engine}
    out = {k: v / n for k, v in parts.items()}
    out["engine images"] = clock.images[True] / n
    return res, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=32, help="images (the issue's workload: 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-batch", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = vx.load_model("toy-shapes").eval()
    engines = {"before": perturbation_curves_many_before, "after": MF.perturbation_curves_many}

    xb = evaluation.make_dataset("shapes", model, a.eval_batch).load(range(a.eval_batch))
    xb = torch.stack([it.x for it in xb])

    def fwd() -> dict[str, float]:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(xb)
            return {"total": (time.perf_counter() - t0) / a.eval_batch}

    times: dict[str, list[dict[str, float]]] = {"before": [], "after": [], "fwd": []}
    res: dict[str, evaluation.BenchResult] = {}
    for rep in range(a.repeats):  # interleaved
        for k, fn in engines.items():
            res[k], t = run_bench(model, a.limit, fn, a.eval_batch)
            times[k].append(t)
        times["fwd"].append(fwd())
        if rep == 0:
            same = res["before"].table == res["after"].table and res["before"].curves == res["after"].curves
            print(f"before and after: tables and mean curves identical: {same}", flush=True)
            if not same:
                raise SystemExit(1)
    med = {k: {f: sorted(d[f] for d in v)[len(v) // 2] for f in v[0]} for k, v in times.items()}
    f = med["fwd"]["total"]
    print(f"toy-shapes 96x96, {a.limit} images, rollout + 3 baselines, default metrics, eval batch {a.eval_batch},"
          f" {torch.get_num_threads()} threads, medians of {a.repeats} interleaved repeats")
    print(f"model forward at batch {a.eval_batch}: {f * 1e3:.3f} ms/img")
    cols = ("data", "method", "engine fwd", "engine rest", "other")
    print(f"{'':8}{'s/img':>8}{'fwd/img':>9}  " + "".join(f"{c:>12}" for c in cols) + "   (s/img)")
    for k in engines:
        m = med[k]
        print(f"{k:8}{m['total']:8.3f}{m['total'] / f:9.0f}  " + "".join(f"{m[c]:12.4f}" for c in cols))
    n_fwd = med["after"]["engine images"]
    b, af = med["before"]["total"], med["after"]["total"]
    print(f"images forwarded by the engine: {n_fwd:.0f} per input image; floor {n_fwd:.0f} x forward ="
          f" {n_fwd * f:.3f} s/img")
    print(f"after / before: {b / af:.2f}x images per second;  after / floor {af / (n_fwd * f):.2f};"
          f"  most possible with these forwards: before / floor = {b / (n_fwd * f):.2f}x")


if __name__ == "__main__":
    main()
