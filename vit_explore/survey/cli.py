"""``vit-explore survey DATA --model M --method X --out DIR``: the store and an offline HTML atlas."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any, positive: Callable[[str], int], params: Callable[[list[str] | None], dict]) -> None:
    """Register the ``survey`` subcommand on the CLI's subparsers."""
    s = sub.add_parser(
        "survey", help="explain a whole dataset, cluster per class (SpRAy), write an offline HTML atlas",
        description="Explain every image of DATA (an image folder, or a preset such as shapes-spurious:2000), "
                    "run Spectral Relevance Analysis per predicted class and write OUT/store/ (the maps, "
                    "resumable: run the same command again after an interruption), OUT/atlas.html (offline) "
                    "and OUT/summary.json. Runs under torchrun (one shard per process).")
    s.add_argument("data", metavar="DATA", help="image folder (one sub-folder per class is fine) or preset[:N]")
    s.add_argument("--model", required=True, help="toy-shapes, toy-shapes-spurious, a timm name or a checkpoint")
    s.add_argument("--method", default="chefer_lrp", help="explainer (default chefer_lrp)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    s.add_argument("--batch-size", type=positive, default=32)
    s.add_argument("--clustering", default="spectral", choices=("spectral", "kmeans", "agglomerative"))
    s.add_argument("--max-k", type=positive, default=8, help="largest number of clusters per class")
    s.add_argument("--norm", default="auto", choices=("auto", "max", "sum", "none"),
                   help="map scaling before clustering (auto: none for occlusion's probability drops, else max)")
    s.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1 ...")
    s.add_argument("--no-html", action="store_true", help="write the store and summary only")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=lambda a: cmd_survey(a, params))


def cmd_survey(args: argparse.Namespace, params: Callable[[list[str] | None], dict]) -> int:
    import torch

    from .. import cli, evaluation
    from ..survey import survey

    dev = cli._device(args.device)
    rank, world, mine = evaluation.init_distributed(str(dev))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        model = cli._load(args.model, dev)
        s = survey(model, args.data, method=args.method, batch_size=args.batch_size, store=out / "store",
                   progress=not args.no_progress, clustering=args.clustering, max_k=args.max_k, norm=args.norm,
                   **params(args.param))
        if rank == 0:
            summary = {"model": args.model, "method": args.method, "n": len(s), "store": str(s.store.path),
                       "norm": s.norm,
                       "classes": [{"class": int(c), "n": len(s.indices(c)), "k": s.n_clusters(c),
                                    "sizes": [len(s.members(c, k)) for k in range(s.n_clusters(c))],
                                    "eigengap": [float(v) for v in s.eigengap(c)],
                                    "outliers": s.outliers(c).tolist()} for c in s.classes]}
            from .._files import write_text_atomically

            write_text_atomically(out / "summary.json", json.dumps(summary, indent=1))
            wrote = [out / "summary.json", s.store.path]
            if not args.no_html:
                from ..widget import Atlas

                try:
                    Atlas(s, title=f"{args.model} / {args.method}").to_html(out / "atlas.html")
                except FileNotFoundError as e:
                    raise cli.CliError(f"{e} (or pass --no-html)") from None
                wrote.insert(0, out / "atlas.html")
            for row in summary["classes"]:
                print(f"class {row['class']}: {row['n']} images, {row['k']} clusters {row['sizes']}")
            print("wrote " + ", ".join(str(p) for p in wrote))
    finally:
        if mine:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
