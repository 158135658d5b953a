"""The Explorer's one validation layer for front-end values (issue 20, items 1-3)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import traitlets

from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit
from vit_explore.widget import Explorer, _state
from vit_explore.widget._explorer import _Worker

from ..conftest import input_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def w():
    model = tiny_vit("vanilla")
    ex = Explorer(model, input_for(model, batch=2, seed=1), methods=["raw_attention", "rollout"])
    assert ex.wait()
    return ex


def _update(w: Explorer, state: dict) -> None:
    """An ``update`` comm message, handled as ipywidgets handles one from the browser."""
    w._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


# 14 front-end traits, each with a value the front end could send that must never be kept
BAD = [
    ("layer", 99), ("layer", -1), ("head", 77), ("query", 10_000), ("target", 77), ("target", -3),
    ("image_index", 9), ("brushed", [999]), ("brushed", [-1]), ("method", "evil"), ("mode", "laser"),
    ("colormap", "jet<script>"), ("opacity", 7.5), ("opacity", float("nan")), ("cx_mask", 5),
    ("compare_methods", ["evil"]), ("keep", "False"), ("show_grid", "yes"), ("smooth", 2),
    ("compare", "true"), ("recompute", None), ("layer", "2"), ("layer", 1.5),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_invalid_frontend_update_is_rolled_back_and_never_runs(w, name, value):
    before = {k: getattr(w, k) for k in _state.FRONTEND_WRITABLE}
    stats = dict(w.stats)
    ok_layer = 0 if w.layer != 0 else 1  # a valid change in the same message is rolled back too
    _update(w, {"layer": ok_layer, name: value} if name != "layer" else {name: value})
    assert w.wait()
    assert {k: getattr(w, k) for k in _state.FRONTEND_WRITABLE} == before
    assert dict(w.stats) == stats  # no job ran on the bad state
    assert "front-end update" in (w.status.get("error") or "")
    w.explanation  # noqa: B018 - the kept state still explains
    with pytest.raises(traitlets.TraitError):
        w.set_state({name: value})


def test_invalid_values_from_python_are_still_input_errors(w):
    with pytest.raises(InputError, match="layer must be in"):
        w.layer = 99
    with pytest.raises(traitlets.TraitError):
        w.layer = 99


def test_frontend_may_not_set_computed_traits(w):
    for name, value in [("num_layers", 99), ("grid", [1, 1]), ("methods", ["evil"]), ("topk", []), ("map_payload", {})]:
        before = getattr(w, name)
        with pytest.raises(traitlets.TraitError, match="may not set"):
            w.set_state({name: value, "layer": 0})
        assert getattr(w, name) == before


def test_a_valid_frontend_update_applies(w):
    _update(w, {"layer": 0, "head": 1})
    assert (w.layer, w.head) == (0, 1)
    w.head = -1


def test_every_trait_the_front_end_sets_is_writable():
    # the Explorer's front end (the Atlas, js/src/atlas.ts, is another widget with its own traits)
    src = "\n".join(p.read_text() for p in (REPO / "js" / "src").glob("*.ts") if not p.name.startswith("atlas"))
    names = set(re.findall(r"setState\(\{\s*(\w+)\s*:", src)) | set(re.findall(r'model\.set\("(\w+)"', src))
    names |= set(re.findall(r"patch\.(\w+)\s*=", src))
    assert names, "no setState calls found in js/src"
    assert names <= _state.FRONTEND_WRITABLE, names - _state.FRONTEND_WRITABLE


@pytest.mark.parametrize("content", [
    {"kind": "attn_request", "image_index": 0, "first_layer": 0, "layers": ["a"]},
    {"kind": "attn_request", "image_index": "a"},
    {"kind": "attn_request", "image_index": 0, "first_layer": 1.5},
    {"kind": "attn_request", "image_index": 0, "layers": "all"},
    {"kind": "ping", "id": {"x": 1}},
    {"kind": "nope"},
    ["not", "a", "dict"],
])
def test_malformed_message_is_reported_and_the_worker_lives(w, content):
    w._on_msg(w, content, [])
    assert w.wait(10)
    assert "front-end message" in w.status["error"]
    sent = []
    orig = w.send
    w.send = lambda msg, buffers=None: sent.append(msg)
    try:
        w._on_msg(w, {"kind": "attn_request", "image_index": 1, "first_layer": 0, "layers": [0]}, [])
        assert w.wait(10)
    finally:
        w.send = orig
    assert [m["layer"] for m in sent if m.get("kind") == "attn"] == [0]


def test_worker_loop_survives_a_failing_job():
    errors: list[str] = []
    wk = _Worker(lambda busy, label: None, lambda what, e: errors.append(f"{what}: {e}"))
    ran = threading.Event()
    wk.submit("a", "boom", lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert wk.wait(5)
    wk.submit("b", "", ran.set)
    assert wk.wait(5) and ran.is_set()
    assert errors == ["boom: bad"]


def test_html_comment_in_names_and_title_keeps_the_export_valid(tmp_path):
    model = tiny_vit("vanilla")
    C = model.num_classes
    names = [f"square <!-- old --> </script><script>alert({i})</script> & co" for i in range(C)]
    ex = Explorer(model, input_for(model, batch=1, seed=0), methods=["raw_attention"], class_names=names,
                  title="t <!-- x --> </script>")
    page = ex.to_html()
    body = re.search(r'id="vx-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in body and ">" not in body  # nothing in the data can end or comment the script
    data = json.loads(body)  # the same grammar as the browser's JSON.parse
    assert data["state"]["class_names"] == names
    assert data["state"]["title"] == "t <!-- x --> </script>"
    bundle = re.search(r'id="vx-bundle">(.*?)</script>', page, re.DOTALL).group(1)
    assert json.loads(bundle) == (REPO / "vit_explore" / "widget" / "static" / "widget.js").read_text()
