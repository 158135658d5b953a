"""The ``vit-explore`` command line: ``bench``, ``explain``, ``lab`` and ``survey``.

    vit-explore bench --dataset shapes-spurious --model toy-shapes-spurious --limit 50 --out runs/b
    vit-explore explain photo.jpg --model toy-shapes --method rollout -o out/
    vit-explore lab
    vit-explore survey shapes-spurious:2000 --model toy-shapes-spurious --method rollout --out runs/s
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class CliError(Exception):
    """A user error: printed as ``vit-explore: error: ...`` with exit status 2."""


# --------------------------------------------------------------------------- helpers


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise CliError(f"--device {name!r} is not a device name (use cpu, cuda, cuda:1, mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def _load(name: str, device, arch: str | None = None):
    from .zoo import load_model

    return load_model(name, arch=arch).to(device)


def _writable_folder(path: Path) -> Path:
    """Create ``path`` and prove a file can be written in it (before a long run), or fail now."""
    import tempfile

    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".vx-probe-", delete=True) as fh:
        fh.write(b"\0" * 65536)  # a full disk or a quota fails here, not after the run
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _csv_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _params(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise CliError(f"--param {it!r}: expected KEY=VALUE, e.g. --param start_layer=1")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    import vit_explore as vx

    from . import evaluation, report

    dev = _device(args.device)
    rank, world, mine = evaluation.init_distributed(str(dev))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        if args.dataset == "voc" and not args.voc_root:
            raise CliError("--dataset voc needs --voc-root DIR (the folder that holds VOCdevkit/VOC2012)")
        methods = vx.list_methods() if args.methods in (None, "all") else _csv_list(args.methods)
        known = vx.list_methods()
        for m in methods:
            if m not in known:
                from .errors import suggest

                raise CliError(f"unknown method {m!r}{suggest(m, known)}; available: {', '.join(known)}")
        metrics = evaluation.DEFAULT_METRICS if args.metrics is None else tuple(_csv_list(args.metrics))
        baselines = _csv_list(args.baselines) if args.baselines != "none" else []
        if rank == 0 and args.out:
            _writable_folder(Path(args.out))
        torch.manual_seed(args.seed)
        model = _load(args.model, dev, args.arch)
        ds = evaluation.make_dataset(args.dataset, model, args.limit, voc_root=args.voc_root)
        min_prob = args.min_prob if args.min_prob is not None else (0.85 if args.dataset == "voc" else None)
        res = evaluation.run_benchmark(
            model, ds, methods, metrics=metrics, baselines=baselines, batch_size=args.batch_size,
            min_prob=min_prob, target=args.target, threshold=args.threshold, seed=args.seed,
            progress=not args.no_progress,
        )
        res.meta["model"] = args.model
        if rank == 0:
            paths = report.write_all(res, args.out) if args.out else {}
            print(res.format_table())
            extra = f"; cue covers {res.meta['cue_area_share']:.4f} of the pixels" if res.meta.get("cue_area_share") else ""
            print(f"\n{res.meta['n_images']} images ({res.meta['n_skipped']} skipped), {world} process(es){extra}")
            if paths:
                print("wrote " + ", ".join(str(p) for p in paths.values()))
    finally:
        if mine:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- explain

_ANCHORS = [(0.0, (48, 18, 59)), (0.25, (70, 134, 251)), (0.5, (26, 228, 182)), (0.75, (250, 186, 57)),
            (1.0, (122, 4, 3))]  # turbo-like


def colormap(v):
    """Map values in [0, 1] (any shape) to uint8 RGB with a turbo-like ramp."""
    import numpy as np

    v = np.clip(np.asarray(v, dtype=np.float64), 0, 1)
    xs = [a for a, _ in _ANCHORS]
    return np.stack([np.interp(v, xs, [c[i] for _, c in _ANCHORS]) for i in range(3)], -1).astype(np.uint8)


def overlay(x, heat, mean, std, alpha: float = 0.5):
    """(3, H, W) normalised image + (H, W) map in [0, 1] -> (H, W, 3) uint8 blend."""
    import numpy as np

    img = (x.cpu().float().numpy() * np.asarray(std).reshape(-1, 1, 1) + np.asarray(mean).reshape(-1, 1, 1))
    img = np.clip(img.transpose(1, 2, 0) * 255, 0, 255)
    return np.clip((1 - alpha) * img + alpha * colormap(heat.cpu().numpy()), 0, 255).astype(np.uint8)


def crop_box(cfg: dict, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Where the model's input lies in a ``width`` x ``height`` image, as (left, top, right, bottom)
    pixels, following the timm eval transform of ``cfg`` (resizes and centre crops); None when the
    transform does anything else (then there is no exact way back to the image)."""
    import timm.data
    from torchvision import transforms as T

    tf = timm.data.create_transform(**cfg, is_training=False)
    cw, ch = float(width), float(height)  # size of the current image
    ox = oy = 0.0  # its origin and scale in original pixels
    sx = sy = 1.0
    for t in getattr(tf, "transforms", [tf]):
        if isinstance(t, T.Resize):
            size = [t.size] if isinstance(t.size, int) else list(t.size)
            if len(size) == 1:  # the shorter side becomes size (torchvision's rule)
                short, long = (cw, ch) if cw <= ch else (ch, cw)
                new_short, new_long = size[0], int(size[0] * long / short)
                nw, nh = (new_short, new_long) if cw <= ch else (new_long, new_short)
            else:
                nh, nw = size
            sx, sy, cw, ch = sx * cw / nw, sy * ch / nh, float(nw), float(nh)
        elif isinstance(t, T.CenterCrop):
            kh, kw = t.size
            ox += round((cw - kw) / 2.0) * sx  # torchvision rounds the same way
            oy += round((ch - kh) / 2.0) * sy
            cw, ch = float(kw), float(kh)
        elif type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize"):
            return None
    return ox, oy, ox + cw * sx, oy + ch * sy


def overlay_full(image, heat, box: tuple[float, float, float, float], alpha: float = 0.5):
    """(H, W, 3) uint8 image + (h, w) map in [0, 1] covering ``box`` of it -> (H, W, 3) uint8 blend
    at the image's own size; pixels outside the model's crop are left as they are."""
    import numpy as np
    import torch

    img = np.asarray(image, dtype=np.float64)
    H, W = img.shape[:2]
    x0, y0, x1, y1 = (round(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return img.astype(np.uint8)
    up = torch.nn.functional.interpolate(heat[None, None].float().cpu(), size=(y1 - y0, x1 - x0), mode="bilinear",
                                         align_corners=False)[0, 0].clamp(0, 1).numpy()
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    out = img.copy()
    part = up[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    out[iy0:iy1, ix0:ix1] = (1 - alpha) * img[iy0:iy1, ix0:ix1] + alpha * colormap(part)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise CliError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.exists():
        raise CliError(f"{path} does not exist; pass an image file or a folder of images")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CliError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
    return [path]


def _target(text: str | None, model) -> int | None:
    if text is None:
        return None
    from .zoo import class_names

    names = class_names(model)
    if text.lstrip("-").isdigit():
        t = int(text)
        if not 0 <= t < len(names):
            raise CliError(f"--target {t} is outside 0..{len(names) - 1}")
        return t
    if text in names:
        return names.index(text)
    from .errors import suggest

    raise CliError(f"--target {text!r} is neither a class index nor a class name{suggest(text, names)}")


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    import vit_explore as vx

    from ._files import atomic_path
    from .inputs import data_config

    files = _images(Path(args.input))
    vx.get_explainer(args.method)  # fails early with a suggestion
    params = _params(args.param)
    dev = _device(args.device)
    out = _writable_folder(Path(args.output))
    model = _load(args.model, dev, args.arch)
    target = _target(args.target, model)
    cfg = data_config(model)
    bar = None
    if len(files) > 1 and not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc=f"explain {args.method}", unit="img")
    from .zoo import class_names

    names = class_names(model)
    try:
        for i in range(0, len(files), args.batch_size):
            chunk = files[i : i + args.batch_size]
            ims = []
            for f in chunk:
                try:
                    ims.append(Image.open(f).convert("RGB"))
                except OSError as exc:
                    raise CliError(f"cannot read {f} as an image: {exc}") from exc
            x = vx.preprocess(model, ims)
            ex = vx.explain(model, x, args.method, target=target, **params)
            heat = ex.heatmap()
            for j, f in enumerate(chunk):
                stem = f"{f.stem}_{args.method}"
                box = crop_box(cfg, *ims[j].size)
                if box is None:  # a transform we cannot map back: the overlay stays at the model's input size
                    pic = overlay(x[j], heat[j], cfg["mean"], cfg["std"])
                else:
                    pic = overlay_full(ims[j], heat[j], box)
                with atomic_path(out / f"{stem}.png") as tmp:
                    Image.fromarray(pic).save(tmp, format="PNG")
                with atomic_path(out / f"{stem}.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, ex.patch_map[j].cpu().numpy().astype(np.float32))
                t = int(ex.target[j])
                line = f"{f.name}: class {t} ({names[t] if t < len(names) else t}) -> {out / (stem + '.png')}"
                if box is None:
                    line += f" (at the model's {pic.shape[1]}x{pic.shape[0]} input: its transform has no exact inverse)"
                (bar.write if bar is not None else print)(line)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if bar is not None:
        print(f"wrote {2 * len(files)} files to {out}")
    return 0


# --------------------------------------------------------------------------- lab


def _tour_notebook() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "notebooks" / "01_tour.ipynb"
    for cand in (here, Path.cwd() / "notebooks" / "01_tour.ipynb"):
        if cand.is_file():
            return cand
    return None


def cmd_lab(args: argparse.Namespace) -> int:
    import importlib.util
    import subprocess

    nb = Path(args.notebook) if args.notebook else _tour_notebook()
    if nb is None or not nb.is_file():
        raise CliError(
            f"notebook {nb or 'notebooks/01_tour.ipynb'} not found; run from the vit_explore repository "
            "or pass --notebook PATH"
        )
    if importlib.util.find_spec("jupyterlab") is None:
        raise CliError("JupyterLab is not installed; install it with: pip install 'vit-explore[lab]'")
    from ._lab import lab_command, write_quiet_settings

    cmd = lab_command(nb, list(args.jupyter_args))
    if not args.dry_run and write_quiet_settings() is None:
        print("note: could not write JupyterLab's quiet-start setting; the news pop-up may appear", file=sys.stderr)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    if os.name == "posix":  # become the server, so that stopping this process stops Jupyter
        sys.stdout.flush()
        os.execv(cmd[0], cmd)
    return subprocess.call(cmd)


# --------------------------------------------------------------------------- parser


_ARCH_HELP = ("timm architecture of a bare checkpoint (.pth/.pt/.bin/.ckpt or .safetensors without "
              "vit_explore metadata), e.g. vit_small_patch16_224")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .evaluation import DATASETS, METRICS

    p = argparse.ArgumentParser(prog="vit-explore", description="Explain and evaluate timm Vision Transformers.")
    p.add_argument("--version", action="version", version=f"vit-explore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{bench,explain,lab,survey}")
    sub.required = True

    b = sub.add_parser("bench", help="score explainers against ground truth and baselines",
                       description="Run every method and baseline on a dataset and score the maps with every "
                                   "metric; writes results.csv, results.json and report.html. Runs under torchrun "
                                   "(one shard per process; rank 0 merges).")
    b.add_argument("--dataset", required=True, choices=DATASETS)
    b.add_argument("--voc-root", metavar="DIR", help="folder holding VOCdevkit/VOC2012 (for --dataset voc)")
    b.add_argument("--model", required=True, help="toy-shapes, toy-shapes-spurious, a timm name or a checkpoint")
    b.add_argument("--arch", default=None, help=_ARCH_HELP)
    b.add_argument("--methods", default="all", help="comma-separated method keys, or 'all' (default)")
    b.add_argument("--limit", type=_positive, default=None, help="number of images (shapes default 100)")
    b.add_argument("--out", default=None, metavar="DIR",
                   help="write results.csv, results.json and report.html there (default: print the table only)")
    b.add_argument("--batch-size", type=_positive, default=16)
    b.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1 ...")
    b.add_argument("--metrics", default=None, help=f"comma-separated subset of: {', '.join(METRICS)}")
    b.add_argument("--baselines", default="random,centre,edge", help="comma-separated, or 'none'")
    b.add_argument("--threshold", default="mean", choices=("mean", "0.5", "otsu", "0.3max"),
                   help="segmentation threshold rule")
    b.add_argument("--target", default="pred", choices=("pred", "label"), help="class explained")
    b.add_argument("--min-prob", type=float, default=None, help="keep images whose top-1 probability exceeds "
                   "this (voc default 0.85, the seed report's protocol)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=cmd_bench)

    e = sub.add_parser("explain", help="write overlay PNGs and raw .npy maps for images",
                       description="Explain an image or every image of a folder; writes <name>_<method>.png "
                                   "(overlay at the image's own size) and <name>_<method>.npy (raw (gh, gw) "
                                   "patch map) to OUT, and prints each image's class.")
    from .explainers import list_methods
    from .zoo import EMBEDDED_MODELS

    e.add_argument("input", metavar="IMAGE_OR_FOLDER")
    e.add_argument("--model", required=True, metavar="MODEL",
                   help=f"an embedded model ({', '.join(EMBEDDED_MODELS)}; no download), a timm ViT name "
                        "(e.g. vit_base_patch16_224, pretrained weights are downloaded) or a .safetensors "
                        "checkpoint written by vit_explore.zoo.save_model")
    e.add_argument("--arch", default=None, help=_ARCH_HELP)
    e.add_argument("--method", required=True, metavar="METHOD",
                   help=f"one of: {', '.join(list_methods())}")
    e.add_argument("--target", default=None, help="class index or name (default: top-1)")
    e.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    e.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    e.add_argument("--batch-size", type=_positive, default=8)
    e.add_argument("--device", default=None, help="where the model runs: cpu (default), cuda, cuda:1, mps")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_explain)

    lab = sub.add_parser("lab", help="open JupyterLab on the tour notebook",
                         description="Open JupyterLab on notebooks/01_tour.ipynb (extra arguments go to jupyter lab).")
    lab.add_argument("--notebook", default=None, help="another notebook to open")
    lab.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    lab.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="arguments passed to jupyter lab")
    lab.set_defaults(fn=cmd_lab)

    from .survey.cli import add_parser as add_survey_parser

    add_survey_parser(sub, _positive, _params)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vit-explore``; returns the exit status."""
    from .errors import VitExploreError

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "lab":  # jupyter's own options (--port=…, --no-browser) pass through
        args.jupyter_args = [a for a in [*rest, *args.jupyter_args] if a != "--"]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    old = _terminate_as_interrupt()
    try:
        return int(args.fn(args) or 0)
    except (CliError, VitExploreError) as exc:
        print(f"vit-explore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only folder, a file where a folder should be, a full disk
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"vit-explore {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            import signal

            signal.signal(signal.SIGTERM, old)


def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (main thread only), so the ``finally`` blocks run and
    no hidden temporary file is left behind by a killed write; returns the old handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
