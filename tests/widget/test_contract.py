"""The Python/TypeScript contract: the synced traits the front end types (js/src/traits.ts) are exactly the
Explorer's, and the shared constants (modes, method labels and descriptions, map keys) are written once,
in vit_explore/widget/contract.json, which both sides read."""

import json
import re
from pathlib import Path

import anywidget
import traitlets as t

from vit_explore.widget import _contract
from vit_explore.widget._about import ABOUT
from vit_explore.widget._explorer import Explorer
from vit_explore.widget._teaching import KINDS, PANELS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "js" / "src"
CONTRACT = ROOT / "vit_explore" / "widget" / "contract.json"


def ts_traits(text: str) -> dict[str, str]:
    """``name -> TypeScript type`` of the members of ``export interface Traits { ... }``."""
    m = re.search(r"export interface Traits \{(.*?)\n\}", text, re.DOTALL)
    assert m, "js/src/traits.ts has no `export interface Traits { ... }`"
    out = {}
    for line in m.group(1).splitlines():
        line = line.split("//")[0].strip()
        if not line:
            continue
        mm = re.fullmatch(r"(\w+)\??:\s*(.+);", line)
        assert mm, f"cannot parse a Traits member: {line!r}"
        out[mm.group(1)] = mm.group(2)
    return out


def python_traits() -> dict[str, t.TraitType]:
    base = set(anywidget.AnyWidget.class_trait_names(sync=True))
    return {k: v for k, v in Explorer.class_traits(sync=True).items() if k not in base}


def ts_type_fits(trait: t.TraitType, ts: str) -> bool:
    """Coarse check of the TS type against the traitlets type (a renamed or retyped trait fails)."""
    if isinstance(trait, t.Bool):
        return ts == "boolean"
    if isinstance(trait, (t.Int, t.Float)):
        return ts == "number"
    if isinstance(trait, t.Unicode):
        return ts == "string"
    if isinstance(trait, t.List):
        return ts.endswith("[]")
    if isinstance(trait, t.Dict):
        return ts not in ("boolean", "number", "string") and not ts.endswith("[]")
    return False


def test_ts_traits_equal_the_explorers_synced_traits():
    ts = ts_traits((SRC / "traits.ts").read_text())
    py = python_traits()
    assert len(py) > 30  # the parse found the Explorer's traits, not an empty set
    only_py, only_ts = sorted(set(py) - set(ts)), sorted(set(ts) - set(py))
    assert not only_py and not only_ts, f"synced in Python only: {only_py}; typed in traits.ts only: {only_ts}"
    wrong = {k: (type(py[k]).__name__, ts[k]) for k in py if not ts_type_fits(py[k], ts[k])}
    assert not wrong, f"traits.ts types that do not fit the traitlets type: {wrong}"


def test_the_trait_check_fails_on_a_divergence():
    text = (SRC / "traits.ts").read_text()
    ts = ts_traits(text.replace("  num_heads: number;", "  num_head: number;"))
    assert "num_heads" not in ts and "num_head" in ts and set(ts) != set(python_traits())
    ts = ts_traits(text.replace("  keep: boolean;", "  keep: number;"))
    assert not ts_type_fits(python_traits()["keep"], ts["keep"])


def test_python_reads_the_contract_file():
    data = json.loads(CONTRACT.read_text(encoding="utf-8"))
    assert _contract.MODES == tuple(data["modes"]) == ("noise", "blur", "mean", "zero", "drop")
    assert _contract.ATTN == data["attention_method"] == "raw_attention"
    assert _contract.LABELS == {k: v["label"] for k, v in data["methods"].items()}
    assert ABOUT == {k: v["about"] for k, v in data["methods"].items()}
    assert KINDS == tuple(data["teaching_kinds"]) and PANELS == tuple(data["tour_panels"])
    from vit_explore.widget import _explorer
    assert _explorer.MODES is _contract.MODES and _explorer.LABELS is _contract.LABELS


def test_map_keys_by_hand():
    # the same hand-written cases as js/test/contract.test.ts: both sides give these keys
    assert _contract.map_key(3, "rollout", None, 0) == "3|rollout|-|0"
    assert _contract.map_key(0, "chefer_lrp", 7, 2) == "0|chefer_lrp|7|2"
    assert _contract.attention_view_key(1, 4, -1, 12, 5) == "1|raw_attention|4|-1|12|5"
    assert Explorer._js_key((3, "rollout", None, 0)) == "3|rollout|-|0"


MODES_BY_HAND = re.compile(r'"noise",\s*"blur"')
LABEL_BY_HAND = re.compile(r'"Integrated gradients"|"Chefer LRP"')
KEY_BY_HAND = re.compile(r"\|\$\{|\}\|\{")  # `${a}|${b}` (TS) or `{a}|{b}` (Python f-string)
#: modules whose own request caches are keyed `${image}|${layer}|...` (not map keys)
OWN_KEYS = {"lens.ts", "patching.ts", "similarity.ts", "heads.ts", "masks.ts", "store.ts"}


def by_hand(name: str, text: str) -> list[str]:
    out = []
    if MODES_BY_HAND.search(text):
        out.append("the intervention modes")
    if LABEL_BY_HAND.search(text):
        out.append("method labels")
    if name not in OWN_KEYS and KEY_BY_HAND.search(text):
        out.append("a map key")
    return out


def test_no_second_copy_of_the_shared_constants():
    """The front end imports the contract; neither side writes the modes, the labels or the key format by hand."""
    ts_files = {p.name: p.read_text() for p in SRC.glob("*.ts")}
    assert 'from "../../vit_explore/widget/contract.json"' in ts_files["contract.ts"]
    users = {n for n, s in ts_files.items() if 'from "./contract"' in s}
    assert {"brush_panel.ts", "view_context.ts", "teach_common.ts"} <= users
    py_files = {p.name: p.read_text() for p in (ROOT / "vit_explore" / "widget").glob("*.py")}
    found = {n: by_hand(n, s) for n, s in {**ts_files, **py_files}.items() if by_hand(n, s)}
    assert not found, found


def test_the_copy_check_finds_the_old_copies():
    """What the check above looks for is what the two hand-written copies looked like."""
    old_ts = 'export const MODES = ["noise", "blur", "mean", "zero", "drop"];\n' \
             'return `${model.get("image_index")}|${method}|${cs ? model.get("target") : "-"}|${pv}`;'
    old_py = 'LABELS = {"integrated_gradients": "Integrated gradients"}\n' \
             "return f\"{i}|{method}|{'-' if target is None else target}|{pv}\""
    assert by_hand("view.ts", old_ts) == ["the intervention modes", "a map key"]
    assert by_hand("_explorer.py", old_py) == ["method labels", "a map key"]
