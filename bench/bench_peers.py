"""Our explainers against the peers a user would pick instead, side by side (issue 17).

One process, the same weights and inputs, interleaved runs (round-robin over ours, the peer
and the floor, so machine load hits them alike), medians, ratios measured in the same run.

Peers:
  * captum ``Saliency`` (abs), ``IntegratedGradients`` (``riemann_right``, which equals our
    ``rule="right"`` exactly; same steps and internal batch size), ``Occlusion`` (one patch
    window and stride, zero baseline, on the logits: our ``score="logit"``; 64 windows a pass,
    captum's default being 1; ours at its own default pass size, ``capture/chunks.py``);
  * pytorch-grad-cam ``GradCAM`` on the last block's ``norm1`` with the ViT reshape transform;
  * Chefer et al. (CVPR 2021) Transformer Attribution and ViT-CX (Xie et al. 2023): the
    official repositories' code cannot be committed here, so the peer is a restatement of
    the official code in its computation order: for Chefer the one the exactness tests use
    (``tests/explainers/test_chefer_lrp.py::replica_chefer`` run in float32, one image at a
    time as the official code does); for ViT-CX ``bench_vit_cx.official_vit_cx`` (one image at
    a time, its model copy, feature extraction with a backward, full-resolution masks and
    cosine matrix, and the 2K masked forwards in batches of 50, as ``ViT_CX.py`` does);
  * LXT (``lxt`` on PyPI, the AttnLRP authors' library) for ``attn_lrp``: its ``cp_LRP`` rules for
    torchvision's ViT on a torchvision ``VisionTransformer`` holding the same weights, in a child
    process (LXT patches ``torch.nn`` classes for the whole process; ``bench/lxt_peer.py``), timed
    by this process through a pipe; its maps equal ours (``tests/test_bench_lxt_peer.py``);
  * zennit: not run alone. It has no LRP rules for softmax attention or LayerNorm, so on a ViT it
    computes neither Chefer's relevance nor AttnLRP by itself; LXT uses its ``Gamma`` rule for the
    patch embedding (``attn_lrp``'s ``gamma_conv``, in the equality test, not timed here).

Floors, printed beside each method (same run): saliency, grad_cam and attn_lrp one forward + backward;
integrated_gradients the steps' forwards + backwards at the best of internal batch 8/16/32;
chefer_lrp the matmuls of its Linears: forward, input gradient and the rule's three
(``bench_relevance.lrp_matmul_floor``; attention, element-wise work and the head left out);
vit_cx its 2K+1 forwards (at the better of the pass size ours picks and the reference's 50); occlusion
its 1 + windows forwards (at the better of ours and captum's 64); attention_flow one forward
(its cost is printed in forwards).

Attention: ``random`` is timm's random init; ``peaky`` (trained-like) multiplies the query and
key rows of every ``qkv`` weight and bias by 4, so attention logits grow 16x and each row's
softmax concentrates on a few keys (the mean of the row maxima is printed).

    python bench/bench_peers.py [--quick] [--batches 1 8] [--repeats 3] [--attention random peaky]
                                [--methods saliency,grad_cam,...] [--markdown] [--readme]

``--readme`` also writes the ``--markdown`` table into README.md between its two
``<!-- speed-table -->`` lines (run it on an idle machine).

``--quick`` runs the embedded toy-shapes model (96 px, patch 8) with batches 1 and 2 and one
repeat: a smoke test, not a measurement. Peak memory: the growth of the peak resident set
size while a method runs once at the largest batch, in a forked child (Linux) of a process that
has not run it: after the timings, a fresh ``--memory-only`` run of this script measures it (in
the timing process the allocator keeps the timed runs' freed memory, and a call grows by a
fraction of what it needs). ``--memory-only`` measures just that (no timing, so it may run on a
busy machine), e.g. ``--batches 8 --attention random --methods occlusion --memory-only``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import timm

import vit_explore as vx
from vit_explore.capture.adapters import inspect_vit
from vit_explore.capture.chunks import model_batch_size

METHODS = ("saliency", "integrated_gradients", "occlusion", "grad_cam", "chefer_lrp", "attn_lrp", "vit_cx",
           "attention_flow")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peaky(model: torch.nn.Module, factor: float = 4.0) -> torch.nn.Module:
    """A copy whose q and k projections are scaled by ``factor`` (attention logits x factor^2)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for blk in m.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * d] *= factor
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[: 2 * d] *= factor
    return m


def attention_peak(model, x) -> float:
    """Mean over blocks, heads and rows of the largest attention weight."""
    from vit_explore.capture import Needs, capture

    tr = capture(model, x[:1], Needs(attn=True))
    return float(torch.stack([a.amax(-1).mean() for a in tr.attn if a is not None]).mean())


def fwd_bwd(model, x, chunk: int | None = None):
    """Forward + backward of the top logit to the input (frozen weights), in chunks."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for i in range(0, len(x), chunk or len(x)):
            xi = x[i : i + (chunk or len(x))].clone().requires_grad_(True)
            out = model(xi)
            torch.autograd.grad(out.gather(1, out.argmax(-1, keepdim=True)).sum(), xi)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def forwards(model, x, n: int, chunk: int = 64):
    xs = x[:1].expand(n, *x.shape[1:]).contiguous()
    with torch.inference_mode():
        for i in range(0, n, chunk):
            model(xs[i : i + chunk])


def cases(method, model, x, t, a):
    """{label: fn} for ours, the peer and the floor of one method (peer/floor may be absent)."""
    B = len(x)
    gh, gw = (s // p for s, p in zip(x.shape[-2:], model.patch_embed.patch_size))
    ph, pw = model.patch_embed.patch_size
    out: dict = {}
    # the pass size ours picks on this device (capture/chunks.py), for the many-forward floors
    ours_chunk = model_batch_size(inspect_vit(model), (gh, gw), x, 50)
    if method == "saliency":
        from captum.attr import Saliency

        out["ours"] = lambda: vx.explain(model, x, "saliency", target=t)
        out["captum Saliency"] = lambda: Saliency(model).attribute(x, target=t, abs=True)
        out["floor"] = lambda: fwd_bwd(model, x)
    elif method == "integrated_gradients":
        from captum.attr import IntegratedGradients

        S, ibs = a.ig_steps, 16
        out["ours"] = lambda: vx.explain(model, x, "integrated_gradients", target=t, steps=S, rule="right",
                                         internal_batch_size=ibs)
        out["captum IntegratedGradients"] = lambda: IntegratedGradients(model).attribute(
            x, target=t, n_steps=S, method="riemann_right", internal_batch_size=ibs)
        xs = x.repeat_interleave(S, 0)
        out["floor"] = lambda: min(_t(lambda c=c: fwd_bwd(model, xs, c)) for c in (8, 16, 32))
    elif method == "occlusion":
        from captum.attr import Occlusion

        out["ours"] = lambda: vx.explain(model, x, "occlusion", target=t, score="logit")  # its own pass size
        out["captum Occlusion"] = lambda: Occlusion(model).attribute(
            x, target=t, sliding_window_shapes=(3, ph, pw), strides=(3, ph, pw), baselines=0.0,
            perturbations_per_eval=64)
        out["floor"] = lambda: min(_t(lambda c=c: forwards(model, x, B * (1 + gh * gw), chunk=c)) for c in (ours_chunk, 64))
    elif method == "grad_cam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        T = model.num_prefix_tokens

        def reshape(tensor):
            return tensor[:, T:, :].reshape(tensor.size(0), gh, gw, tensor.size(2)).permute(0, 3, 1, 2)

        def pgc():
            with GradCAM(model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape) as cam:
                return cam(x, targets=[ClassifierOutputTarget(int(c)) for c in t])

        out["ours"] = lambda: vx.explain(model, x, "grad_cam", target=t)
        out["pytorch-grad-cam GradCAM"] = pgc
        out["floor"] = lambda: fwd_bwd(model, x)
    elif method == "chefer_lrp":
        from bench_relevance import lrp_matmul_floor

        from tests.explainers.test_chefer_lrp import replica_maps

        mm = lrp_matmul_floor(model, B, tokens=1 + gh * gw)
        out["ours"] = lambda: vx.explain(model, x, "chefer_lrp", target=t, start_layer=1)
        out["official (restated, fp32)"] = lambda: replica_maps(model, x, t, start_layer=1, dtype=torch.float32)
        out["floor"] = mm  # the forward, the input gradient and the rule's three matmuls per Linear
    elif method == "attn_lrp":
        from lxt_peer import LXTPeer

        out["ours"] = lambda: vx.explain(model, x, "attn_lrp", target=t)  # CP-LRP, epsilon on Linear / Conv2d
        try:
            out["LXT cp_LRP (torchvision ViT)"] = LXTPeer(model, x, t, threads=a.threads)
        except (TypeError, ValueError) as e:  # a model torchvision's ViT cannot hold
            print(f"attn_lrp: no LXT peer for this model ({e})", flush=True)
        out["floor"] = lambda: fwd_bwd(model, x)
    elif method == "vit_cx":
        from bench_vit_cx import official_vit_cx

        K = vx.explain(model, x[:1], "vit_cx").extras["K"][0]
        out["ours"] = lambda: vx.explain(model, x, "vit_cx")
        out["official (restated)"] = lambda: [official_vit_cx(model, x[b : b + 1]) for b in range(B)]
        out["floor"] = lambda: min(_t(lambda c=c: forwards(model, x, B * (2 * K + 1), chunk=c)) for c in (ours_chunk, 50))
    elif method == "attention_flow":
        out["ours"] = lambda: vx.explain(model, x, "attention_flow")
        out["floor"] = lambda: forwards(model, x, B)
    return out


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Interleaved medians; a floor that returns a float reports that (its own best) instead."""
    if repeats > 1:  # warm-up (a single run, as in --quick, is a smoke test, not a measurement)
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            r = fn()
            dt = time.perf_counter() - t0
            times[k].append(r if isinstance(r, float) else dt)
    return {k: statistics.median(v) for k, v in times.items()}


def close(fns: dict) -> None:
    """End the peers that run in a child process of their own (LXT)."""
    for f in fns.values():
        getattr(f, "close", lambda: None)()


def memory(fns: dict) -> dict[str, float]:
    """Peak RSS growth of each case but the floor; a peer that runs in a child process of its own
    (LXT) measures it there the same way (``peak_rss_mb()``)."""
    from _memory import peak_rss_mb

    return {k: f.peak_rss_mb() if hasattr(f, "peak_rss_mb") else peak_rss_mb(f) for k, f in fns.items() if k != "floor"}


def cold_memory(a) -> dict[str, dict[str, float]]:
    """The ``--memory-only`` figures of this run's cases, from a fresh process of this script. After
    the timed runs, this process's allocator keeps their freed memory, and a call measured here
    would grow by a fraction of what it needs (attn_lrp at batch 8: 129–388 MB against 729–902 MB
    cold), differently from method to method."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as d:
        out = Path(d) / "memory.json"
        cmd = [sys.executable, __file__, "--memory-only", "--memory-json", str(out), "--threads", str(a.threads),
               "--batches", *map(str, a.batches), "--attention", *a.attention, "--methods", a.methods,
               "--ig-steps", str(a.ig_steps), *(["--quick"] if a.quick else [])]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def _key(row: dict) -> str:
    return f"{row['att']}|{row['B']}|{row['method']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy-shapes model, batches 1 2, one repeat (smoke test)")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--attention", nargs="+", default=["random", "peaky"], choices=["random", "peaky"])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ig-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak memory at the largest batch (no timing; a busy machine does not change it)")
    ap.add_argument("--memory-json", default=None, help=argparse.SUPPRESS)  # --memory-only's figures, for cold_memory
    ap.add_argument("--markdown", action="store_true", help="print the README speed table")
    ap.add_argument("--readme", action="store_true",
                    help=f"also write that table into README.md, between its two {README_MARKER} lines")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.quick:
        base, name = vx.load_model("toy-shapes").eval(), "toy-shapes (96 px, patch 8)"
    else:
        base, name = timm.create_model("vit_base_patch16_224", pretrained=False).eval(), "ViT-B/16 @224"
    a.batches = a.batches or ([1, 2] if a.quick else [1, 8])
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.ig_steps = a.ig_steps or (8 if a.quick else 32)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; use some of {', '.join(METHODS)}")
    H, W = base.patch_embed.img_size
    rows = []
    later = []  # (row, model, x, t): peak memory, measured once every timing is done (see below)
    for att in a.attention:
        model = base if att == "random" else peaky(base)
        x_all = torch.randn(max(a.batches), 3, H, W, generator=torch.Generator().manual_seed(0))
        peak = attention_peak(model, x_all)
        for B in a.batches:
            x = x_all[:B]
            with torch.no_grad():
                t = model(x).argmax(-1)
            for m in methods:
                row = {"att": att, "peak": peak, "B": B, "method": m, "mem": {}}
                if B == max(a.batches) and not a.no_memory:
                    later.append((row, model, x, t))
                if a.memory_only:
                    continue
                fns = cases(m, model, x, t, a)
                try:
                    med = timed(fns, a.repeats)
                finally:
                    close(fns)
                peer = next((k for k in fns if k not in ("ours", "floor")), None)
                row.update({"ours": med["ours"] / B, "peer": peer, "peer_t": med[peer] / B if peer else None,
                            "floor": med.get("floor", float("nan")) / B})
                rows.append(row)
                ratio = f"{row['peer_t'] / row['ours']:.2f}x" if peer else "—"
                ptxt = f"{peer} {row['peer_t']:.3f} s/img" if peer else "no peer"
                print(f"[{att} attn, max-attn {peak:.2f}] batch {B} {m}: ours {row['ours']:.3f} s/img, "
                      f"{ptxt}, peer/ours {ratio}, "
                      f"floor {row['floor']:.3f} s/img (ours/floor {row['ours'] / row['floor']:.2f})", flush=True)
    # Peak memory last, and in a process that has not run the cases (cold_memory): measured here it
    # forks this process once per case, and a timing run after those forks came out up to 1.3x
    # slower (ours; the LXT peer, in a process of its own, was not).
    if a.memory_only:
        for row, model, x, t in later:
            fns = cases(row["method"], model, x, t, a)
            try:
                row["mem"] = memory(fns)
            finally:
                close(fns)
            print(f"[{row['att']} attn, max-attn {row['peak']:.2f}] batch {row['B']} {row['method']}: peak RSS growth "
                  + ", ".join(f"{k} {v:.0f} MB" for k, v in row["mem"].items()), flush=True)
    elif later:
        cold = cold_memory(a)
        for row, *_ in later:
            row["mem"] = cold[_key(row)]
    if a.memory_json:
        Path(a.memory_json).write_text(json.dumps({_key(row): row["mem"] for row, *_ in later}))
    if a.markdown or a.readme:
        md = markdown(rows, name, a)
        print()
        print(md)
        if a.readme:
            write_readme(md)


README_MARKER = "<!-- speed-table -->"


def write_readme(md: str, path: Path = ROOT / "README.md") -> None:
    """Replace the block between the two ``README_MARKER`` lines of ``path`` (atomically)."""
    parts = path.read_text().split(README_MARKER)
    if len(parts) != 3:
        raise SystemExit(f"{path} needs exactly two {README_MARKER} lines")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(parts[0] + README_MARKER + "\n" + md + "\n" + README_MARKER + parts[2])
    tmp.replace(path)  # nothing half-written


def markdown(rows, name, a) -> str:
    command = " ".join(["python bench/bench_peers.py", *(shlex.quote(v) for v in sys.argv[1:])])
    head = (f"{name}, {' and '.join(a.attention)} attention, CPU: {cpu_name()} ({os.cpu_count()} cores),"
            f" {a.threads} threads, torch "
            f"{torch.__version__}; medians of {a.repeats} interleaved runs, seconds per image "
            f"(`{command}`, {time.strftime('%Y-%m-%d')}). Integrated gradients: "
            f"{a.ig_steps} steps.\n\n")
    lines = ["| attention | batch | method | ours | peer | peer | peer / ours | floor | ours / floor | peak MB (ours / peer) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = r["mem"]
        mtxt = " / ".join(f"{v:.0f}" for v in mem.values()) if mem else ""
        peer_t = f"{r['peer_t']:.3f}" if r["peer"] else "—"
        ratio = f"{r['peer_t'] / r['ours']:.2f}" if r["peer"] else "—"
        lines.append(f"| {r['att']} | {r['B']} | {r['method']} | {r['ours']:.3f} | {r['peer'] or '—'} | {peer_t} | "
                     f"{ratio} | {r['floor']:.3f} | {r['ours'] / r['floor']:.2f} | {mtxt} |")
    return head + "\n".join(lines)


if __name__ == "__main__":
    main()
