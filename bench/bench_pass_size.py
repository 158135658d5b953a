"""Images per forward pass on the CPU: the rule of ``capture/chunks.py`` against fixed sizes (issue 17).

Occlusion, ViT-CX and RISE run many images through the model; on the CPU a pass of 50–100
ViT-B/16 images runs out of cache. ``cpu_batch_size`` takes as many images as keep one pass's
MLP activations (tokens x 4 x width) within 16 MiB. Prints, for random-init timm ViTs at 224:
the forward time per image at several pass sizes (the same images, interleaved, medians) with
the rule's pick marked, and RISE's time per mask at the rule's pass size against the
reference's 100, with their ratio (the maps differ only by float rounding).

    python bench/bench_pass_size.py [--threads 2] [--repeats 3] [--models vit_base_patch16_224,vit_small_patch16_224]
                                    [--masks 120]
"""

from __future__ import annotations

import argparse

import timm
import torch
from _timing import interleaved, table

import vit_explore as vx
from vit_explore.capture.adapters import inspect_vit
from vit_explore.capture.chunks import model_batch_size

SIZES = (1, 2, 4, 6, 8, 13, 16, 32, 64)


def per_image_forward(model: torch.nn.Module, sizes: tuple[int, ...], n: int, repeats: int) -> dict[int, float]:
    """Seconds per image of ``n`` images forwarded in passes of each size (interleaved medians)."""
    H, W = model.patch_embed.img_size
    xs = torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(0))

    def run(size: int):
        def go():
            with torch.inference_mode():
                for i in range(0, n, size):
                    model(xs[i : i + size])

        return go

    med = interleaved({str(s): run(s) for s in sizes}, repeats=repeats)
    return {s: med[str(s)] / n for s in sizes}


def report(arch: str, a: argparse.Namespace) -> None:
    """The pass-size table and the RISE comparison of one timm architecture."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    H, W = model.patch_embed.img_size
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(1))
    gh, gw = model.patch_embed.grid_size
    pick = model_batch_size(inspect_vit(model), (gh, gw), x, 100)
    sizes = tuple(sorted({*SIZES, pick}))
    fwd = per_image_forward(model, sizes, n=64, repeats=a.repeats)
    best = min(fwd, key=lambda s: fwd[s])
    rows = [(s, f"{fwd[s] * 1e3:.1f}", f"{fwd[s] / fwd[best]:.3f}", "rule" if s == pick else "") for s in sizes]
    print(f"{arch}, {a.threads} threads: forward per image by pass size (64 images, medians of {a.repeats})")
    print(table(rows, ("pass", "ms/img", "/ best", "")))
    med = interleaved({
        "rule": lambda: vx.explain(model, x, "rise", target=0, n_masks=a.masks, seed=0),
        "100": lambda: vx.explain(model, x, "rise", target=0, n_masks=a.masks, seed=0, batch_size=100),
    }, repeats=a.repeats)
    print(f"RISE, {a.masks} masks, one image: passes of {pick} (the rule) {med['rule'] / a.masks * 1e3:.1f} ms "
          f"per mask, of 100 (the reference's) {med['100'] / a.masks * 1e3:.1f} ms; 100 / rule "
          f"{med['100'] / med['rule']:.2f}x\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="vit_base_patch16_224,vit_small_patch16_224")
    ap.add_argument("--masks", type=int, default=120, help="RISE masks per timed call")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for arch in a.models.split(","):
        report(arch, a)


if __name__ == "__main__":
    main()
