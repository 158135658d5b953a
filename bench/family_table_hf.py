"""The Hugging Face rows of the family x method table: every method on one tiny random-weight
``transformers`` classifier per family (built from a small config; nothing downloaded).

Cells: ``runs``, ``not defined: <reason>`` (the
error actually raised) or ``crash: <error>`` (a bug). Exactness against references is what
tests/capture/test_hf*.py check; this table reports coverage.

    PYTHONPATH=. python bench/family_table_hf.py            # markdown rows on stdout
    PYTHONPATH=. python bench/family_table_hf.py --readme   # also replace the block in README.md
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

import torch

import vit_explore as vx

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from family_table import INTERVENE, PARAMS, _short, write_readme_block

from vit_explore.errors import InputError, UnsupportedModelError

SIZE, PATCH, DIM, DEPTH, HEADS, CLASSES = 32, 8, 32, 2, 2, 5


def cell(model: torch.nn.Module, x: torch.Tensor, method: str) -> str:
    """``runs`` (a finite map on the Explanation's grid, or finite logits for ``intervene``), ``not
    defined: <reason>`` (the error raised) or ``crash: <error>``. Exactness: tests/capture/test_hf*.py."""
    try:
        if method in INTERVENE:
            iv = vx.intervene(model, x, [0], mode="drop" if "drop" in method else "noise")
            ok = bool(torch.isfinite(iv.logits).all())
        else:
            ex = vx.explain(model, x, method, **PARAMS.get(method, {}))
            ok = ex.patch_map.shape == (x.shape[0], *ex.layout.grid) and bool(torch.isfinite(ex.patch_map).all())
        return "runs" if ok else "crash: non-finite or misshapen map"
    except (UnsupportedModelError, InputError) as e:
        return f"not defined: {_short(e)}"
    except Exception as e:  # noqa: BLE001 - a crash is reported in the table, as it is
        return f"crash: {type(e).__name__}: {_short(e)}"


def _vit_kw() -> dict:
    return {"image_size": SIZE, "patch_size": PATCH, "hidden_size": DIM, "num_hidden_layers": DEPTH,
            "num_attention_heads": HEADS, "intermediate_size": 2 * DIM}


def _build(kind: str) -> torch.nn.Module:
    import transformers as t

    if kind == "ViTForImageClassification":
        return t.ViTForImageClassification(t.ViTConfig(**_vit_kw(), num_labels=CLASSES))
    if kind.startswith("DeiT"):
        return getattr(t, kind)(t.DeiTConfig(**_vit_kw(), num_labels=CLASSES))
    if kind == "Dinov2ForImageClassification":
        kw = {k: v for k, v in _vit_kw().items() if k != "intermediate_size"}
        return t.Dinov2ForImageClassification(t.Dinov2Config(**kw, mlp_ratio=2, num_labels=CLASSES))
    if kind == "BeitForImageClassification":
        cfg = t.BeitConfig(**_vit_kw(), num_labels=CLASSES, use_relative_position_bias=True)
        return t.BeitForImageClassification(cfg)
    if kind == "CLIPForImageClassification":
        return t.CLIPForImageClassification(t.CLIPConfig(vision_config=_vit_kw(), num_labels=CLASSES))
    if kind == "SiglipForImageClassification":
        text = {"vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
        return t.SiglipForImageClassification(t.SiglipConfig(vision_config=_vit_kw(), text_config=text,
                                                             num_labels=CLASSES))
    if kind == "SwinForImageClassification":
        cfg = t.SwinConfig(image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                           window_size=4, num_labels=CLASSES)
        return t.SwinForImageClassification(cfg)
    if kind == "ConvNextForImageClassification":
        cfg = t.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=CLASSES)
        return t.ConvNextForImageClassification(cfg)
    raise ValueError(kind)


#: family -> transformers class (built by ``_build`` from a small config)
FAMILIES_HF: dict[str, str] = {
    "HF ViT": "ViTForImageClassification",
    "HF DeiT": "DeiTForImageClassification",
    "HF DeiT distilled": "DeiTForImageClassificationWithTeacher",
    "HF DINOv2": "Dinov2ForImageClassification",
    "HF BEiT": "BeitForImageClassification",
    "HF CLIP": "CLIPForImageClassification",
    "HF SigLIP": "SiglipForImageClassification",
    "HF Swin": "SwinForImageClassification",
    "HF ConvNeXt": "ConvNextForImageClassification",
}


def table_hf(families: dict[str, str], methods: list[str], build: Callable[[str], torch.nn.Module] = _build,
             out=sys.stderr) -> str:
    cols = [*methods, *INTERVENE]
    lines = ["| family (transformers class) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    notes: dict[str, int] = {}
    for fam, kind in families.items():
        torch.manual_seed(0)
        try:
            model = build(kind).eval()
        except Exception as e:  # noqa: BLE001
            lines.append(f"| {fam} (`{kind}`) | " + " | ".join(["model not built: " + _short(e)] * len(cols)) + " |")
            continue
        x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        row = []
        for m in cols:
            c = cell(model, x, m)
            if c.startswith(("not defined: ", "crash: ")):
                notes.setdefault(c, len(notes) + 1)
                c = f"{c.split(':')[0]} [{notes[c]}]"
            row.append(c)
        print(f"{fam}: {sum(c == 'runs' for c in row)}/{len(cols)} run", file=out)
        lines.append(f"| {fam} (`{kind}`) | " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"{i}. {k}" for k, i in notes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", action="store_true",
                    help="replace the block between <!-- family-table-hf --> markers")
    ap.add_argument("--families", help="comma-separated subset of the families")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    fams = FAMILIES_HF
    if args.families:
        wanted = [f.strip() for f in args.families.split(",")]
        unknown = [f for f in wanted if f not in FAMILIES_HF]
        if unknown:
            ap.error(f"unknown families {unknown}; choose from {list(FAMILIES_HF)}")
        fams = {f: FAMILIES_HF[f] for f in wanted}
    md = table_hf(fams, vx.list_methods())
    print(md)
    if args.readme:
        return write_readme_block("<!-- family-table-hf -->", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
