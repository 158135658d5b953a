"""Speed of the gradient explainers on a random-init ViT-B/16 at 224 (issue 3).

Baselines measured in the same run: one forward (no grad) and one forward + backward of
the target logit down to the input (parameters frozen, as capture runs). Each method's
time is printed as a ratio to forward + backward, and batch 8 per image against batch 1.

    python bench/bench_gradient_methods.py [--batches 1 8] [--repeats 1] [--slow-batch8]

Targets (issue 3): chefer_generic, attn_grad_cam, grad_cam, ag_cam <= 1.3x forward+backward;
tam <= 4 s per image at batch 1 ("tam floor": the passes any exact 20-step TAM needs, see
``tam_floor``). IG (32 steps) and TAM at batch 8 take long on 2 cores and
only run with --slow-batch8.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import vit_explore as vx

METHODS = ["chefer_generic", "attn_grad_cam", "grad_cam", "ag_cam", "tam", "saliency", "integrated_gradients"]
SLOW = {"tam", "integrated_gradients"}


CLOCK = time.perf_counter


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls on ``CLOCK`` (wall, or process CPU time on a shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def forward_backward(model, x):
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        xi = x.clone().requires_grad_(True)
        logits = model(xi)
        torch.autograd.grad(logits.gather(1, logits.argmax(-1, keepdim=True)).sum(), xi)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def tam_floor(model, x, steps: int = 20, chunk: int = 16):
    """The passes of any exact TAM with ``steps`` integration points: one forward+backward
    at alpha = 1 (it gives the logits, the states and one gradient) and ``steps - 1``
    forwards of the scaled inputs, batched like ``tam`` (``chunk`` images a pass). Their
    backward through the last block alone is left out, so this is a lower bound."""
    xs = torch.cat([x * a for a in torch.linspace(0, 1, steps)[:-1].tolist()])

    def run():
        forward_backward(model, x)
        with torch.no_grad():
            for i in range(0, len(xs), chunk):
                model(xs[i : i + chunk])

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slow-batch8", action="store_true", help="also run tam and IG at batch > 1")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, steadier when other jobs share the cores")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()

    rows: dict[str, dict[int, float]] = {}
    for B in args.batches:
        x = torch.randn(B, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(x)  # warm-up
        vx.explain(model, x[:1], "attn_grad_cam")  # warm-up of the unfused path
        with torch.no_grad():
            rows.setdefault("forward", {})[B] = timed(lambda x=x: model(x), args.repeats)
        rows.setdefault("forward+backward", {})[B] = timed(lambda x=x: forward_backward(model, x), args.repeats)
        for m in args.methods:
            if m in SLOW and B > 1 and not args.slow_batch8:
                continue
            rows.setdefault(m, {})[B] = timed(lambda x=x, m=m: vx.explain(model, x, m), args.repeats)
            print(f"  [batch {B}] {m}: {rows[m][B]:.3f} s", flush=True)
            if m == "tam":
                rows.setdefault("tam floor", {})[B] = timed(tam_floor(model, x), args.repeats)
                print(f"  [batch {B}] tam floor (1 fwd+bwd + 19 forwards): {rows['tam floor'][B]:.3f} s", flush=True)

    b1 = args.batches[0]
    head = f"{'':22s}" + "".join(f"{'batch ' + str(B) + ' s':>12s}{'x f+b':>8s}" for B in args.batches)
    if len(args.batches) > 1:
        head += f"{'per-img b' + str(args.batches[-1]) + '/b' + str(b1):>18s}"
    print(f"\nViT-B/16 @224, random init, {args.threads} threads, {args.clock} clock, median of {args.repeats}")
    print(head)
    for name, by_b in rows.items():
        line = f"{name:22s}"
        for B in args.batches:
            if B in by_b:
                line += f"{by_b[B]:12.3f}{by_b[B] / rows['forward+backward'][B]:8.2f}"
            else:
                line += f"{'-':>12s}{'-':>8s}"
        if len(args.batches) > 1 and args.batches[-1] in by_b and b1 in by_b:
            Bn = args.batches[-1]
            line += f"{(by_b[Bn] / Bn) / (by_b[b1] / b1):18.2f}"
        print(line)


if __name__ == "__main__":
    main()
