"""The Atlas widget's Python side: its payloads decode to the survey's own arrays, a click gives the
image and its map, a brush runs Survey.confirm, and to_html exports an escaped, self-contained page."""

from __future__ import annotations

import base64
import gzip
import json
import threading

import numpy as np
import pytest
import torch
import traitlets

from vit_explore.errors import InputError
from vit_explore.survey import survey
from vit_explore.testing import tiny_vit
from vit_explore.widget import Atlas, _state
from vit_explore.widget._atlas import STATIC


@pytest.fixture(scope="module")
def sv(tmp_path_factory):
    model = tiny_vit("vanilla", depth=2, num_classes=3)
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    return survey(model, x, method="rollout", batch_size=20, store=tmp_path_factory.mktemp("s"), progress=False,
                  n_neighbors=5, embedding="tsne")


def test_class_payload_is_the_survey(sv):
    w = Atlas(sv, class_names=["a", "b", "<c>"])
    assert [c["c"] for c in w.classes] == sv.classes.tolist()
    for c in sv.classes:
        w.class_index = int(c)
        d = w.class_data
        np.testing.assert_array_equal(np.frombuffer(d["indices"], np.int32), sv.indices(c))
        np.testing.assert_array_equal(np.frombuffer(d["labels"], np.int32), sv.clusters(c))
        np.testing.assert_array_equal(np.frombuffer(d["points"], np.float32).reshape(-1, 2), sv.embedding(c))
        for card in d["clusters"]:
            mm = np.frombuffer(card["mean_map"], np.float32).reshape(sv.grid)
            np.testing.assert_allclose(mm, sv.mean_map(c, card["k"]), rtol=1e-6)
            assert card["hot"] == np.flatnonzero(sv.hot_patches(c, card["k"]).ravel()).tolist()
            assert card["size"] == len(sv.members(c, card["k"]))
            cm = np.frombuffer(card["contrast_map"], np.float32).reshape(sv.grid)
            np.testing.assert_allclose(cm, sv.contrast_map(c, card["k"]), rtol=1e-6, atol=1e-7)
            assert card["contrast_hot"] == np.flatnonzero(sv.hot_patches(c, card["k"], contrast=True).ravel()).tolist()


def test_select_and_confirm(sv):
    w = Atlas(sv)
    i = int(sv.indices(sv.classes[0])[0])
    w.selected = i
    p = w.selected_payload
    assert p["index"] == i
    np.testing.assert_array_equal(np.frombuffer(p["map"], np.float32).reshape(sv.grid), sv.map(i))
    rgb = np.frombuffer(p["rgb"], np.uint8).reshape(p["h"], p["w"], 3)
    np.testing.assert_array_equal(rgb, sv.source.display(i))
    c = int(sv.classes[0])
    w._on_msg(w, {"kind": "confirm", "c": c, "k": 0, "patches": [0, 1], "id": 7}, [])
    assert w.wait(60)  # the confirm runs on the Atlas's worker thread
    ref = sv.confirm(c, 0, patches=[0, 1])
    assert w.confirmed["id"] == 7 and w.confirmed["patches"] == [0, 1]
    assert w.confirmed["flip_rate"] == pytest.approx(ref["flip_rate"])
    assert w.confirmed["control_flip_rate"] == pytest.approx(ref["control_flip_rate"])
    assert w.confirmed["control_patches"] == np.flatnonzero(ref["control_patches"].ravel()).tolist()
    with pytest.raises(InputError, match="survey"):
        Atlas("not a survey")


def test_confirm_follows_the_contrast_switch(sv):
    """With ``contrast`` on (the front end's "vs class" box), "confirm hot patches" tests the contrast
    map's hot patches: the result equals ``Survey.confirm(..., contrast=True)``; the front end may set it."""
    c = int(sv.classes[0])
    k = next(k for k in range(sv.n_clusters(c)) if sv.hot_patches(c, k, contrast=True).any())
    w = Atlas(sv, contrast=True)
    assert w.contrast
    w._on_msg(w, {"kind": "confirm", "c": c, "k": k, "patches": None, "id": 3}, [])
    assert w.wait(60)
    ref = sv.confirm(c, k, contrast=True)
    assert w.confirmed["patches"] == np.flatnonzero(ref["patches"].ravel()).tolist()
    assert w.confirmed["flip_rate"] == pytest.approx(ref["flip_rate"])
    w.set_state({"contrast": False})  # what the front end's box sends
    assert not w.contrast
    w._on_msg(w, {"kind": "confirm", "c": c, "k": 0, "patches": None, "id": 4}, [])
    assert w.wait(60)
    assert w.confirmed["patches"] == np.flatnonzero(sv.hot_patches(c, 0).ravel()).tolist()


@pytest.mark.skipif(not (STATIC / "atlas.js").exists(), reason="front end not built (npm run build in js/)")
def test_to_html_is_offline_and_escaped(sv, tmp_path):
    w = Atlas(sv, title="<script>alert(1)</script>", class_names=["<b>x</b> <!-- old -->", "y", "z"])
    page = w.to_html(tmp_path / "atlas.html")
    assert (tmp_path / "atlas.html").read_text() == page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    blob = page.split('data-encoding="gzip+base64">', 1)[1].split("</script>", 1)[0]
    state = json.loads(gzip.decompress(base64.b64decode(blob)))  # "<!--" in a name stays valid JSON
    assert "<b>x</b> <!-- old -->" in json.dumps(state["classes"], ensure_ascii=False)
    assert state["offline"] and set(state["offline_data"]["classes"]) == {str(c) for c in sv.classes}
    for d in state["offline_data"]["classes"].values():
        for card in d["clusters"]:
            assert set(map(str, card["members"])) <= set(state["offline_data"]["images"])


def _update(w: Atlas, state: dict) -> None:
    """An ``update`` comm message, handled as ipywidgets handles one from the browser."""
    w._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def _custom(w: Atlas, content: object) -> None:
    """A custom comm message (``model.send`` in js/src/atlas.ts), handled as ipywidgets does."""
    w._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def _gate(sv, monkeypatch):
    """Make ``sv.confirm`` wait for ``gate`` (30 s at most: a confirm run on the kernel thread fails the
    test instead of hanging it); returns (gate, started, calls)."""
    gate, started, calls = threading.Event(), threading.Event(), []
    orig = sv.confirm

    def gated(*a, **kw):
        calls.append((threading.current_thread().name, a, kw))
        started.set()
        if not gate.wait(30):
            raise TimeoutError("confirm ran on the caller's thread: the gate was never opened")
        return orig(*a, **kw)

    monkeypatch.setattr(sv, "confirm", gated)
    return gate, started, calls


def test_confirm_request_returns_while_the_kernel_keeps_answering(sv, monkeypatch):
    w = Atlas(sv)
    c = int(sv.classes[0])
    gate, started, calls = _gate(sv, monkeypatch)
    _custom(w, {"kind": "confirm", "c": c, "k": 0, "patches": [0, 1], "id": 11})  # returns: confirm is blocked
    assert started.wait(30)
    # the kernel keeps answering while confirm runs: a selection is validated and applied
    i = int(sv.indices(c)[1])
    _update(w, {"selected": i})
    assert w.selected == i and w.selected_payload["index"] == i
    assert w.status == "confirming..." and w.confirmed == {}
    gate.set()
    assert w.wait(60)
    monkeypatch.undo()
    assert calls[0][0] != threading.current_thread().name  # ran on the worker thread
    ref = sv.confirm(c, 0, patches=[0, 1])
    assert w.confirmed["id"] == 11 and w.confirmed["patches"] == [0, 1]
    assert w.confirmed["flip_rate"] == pytest.approx(ref["flip_rate"])
    assert w.confirmed["control_flip_rate"] == pytest.approx(ref["control_flip_rate"])
    assert w.status == ""


def test_a_newer_confirm_request_supersedes_an_older_one(sv, monkeypatch):
    w = Atlas(sv)
    c = int(sv.classes[0])
    seen: list = []
    w.observe(lambda ch: seen.append(ch["new"].get("id")), names=["confirmed"])
    gate, started, calls = _gate(sv, monkeypatch)
    _custom(w, {"kind": "confirm", "c": c, "k": 0, "patches": [0], "id": 1})
    assert started.wait(30)
    _custom(w, {"kind": "confirm", "c": c, "k": 0, "patches": [1], "id": 2})  # pending, then replaced
    _custom(w, {"kind": "confirm", "c": c, "k": 0, "patches": [2, 3], "id": 3})
    gate.set()
    assert w.wait(60)
    assert [kw["patches"] for _, _, kw in calls] == [[0], [2, 3]]  # request 2 never ran
    assert seen == [3]  # request 1 finished after 3 was asked for: dropped
    assert w.confirmed["patches"] == [2, 3]


BAD_UPDATES = [
    ("class_index", 99), ("class_index", "0"), ("class_index", 1.5), ("selected", 10_000), ("selected", -2),
    ("selected", "3"), ("status", 5), ("status", "x" * 5000), ("confirmed", {"id": 1}), ("class_data", {}),
    ("offline", True), ("grid", [1, 1]),
]


@pytest.mark.parametrize(("name", "value"), BAD_UPDATES, ids=[f"{n}={str(v)[:12]!r}" for n, v in BAD_UPDATES])
def test_invalid_atlas_update_is_rolled_back(sv, name, value):
    w = Atlas(sv)
    keep = sorted((_state.ATLAS_WRITABLE - {"status"}) | {"confirmed", "class_data", "offline", "grid"})
    before = {k: getattr(w, k) for k in keep}
    ok = int(sv.indices(sv.classes[0])[0])  # a valid change in the same message is rolled back too
    _update(w, {"selected": ok, name: value} if name != "selected" else {name: value})
    assert {k: getattr(w, k) for k in keep} == before
    assert "front-end update" in w.status
    with pytest.raises(traitlets.TraitError):
        w.set_state({name: value})


def _bad_messages(sv):
    c = int(sv.classes[0])
    return [
        {"kind": "confirm", "c": 99, "k": 0}, {"kind": "confirm", "c": str(c), "k": 0},
        {"kind": "confirm", "c": c, "k": 99}, {"kind": "confirm", "c": c, "k": 0, "patches": [9999]},
        {"kind": "confirm", "c": c, "k": 0, "patches": "all"}, {"kind": "confirm", "c": c, "k": 0, "patches": []},
        {"kind": "confirm", "c": c, "k": 0, "id": {"x": 1}}, {"kind": "open", "index": -5},
        {"kind": "open"}, {"kind": "nope"}, ["not", "a", "dict"],
    ]


def test_malformed_atlas_message_is_reported_never_run(sv, monkeypatch):
    w = Atlas(sv)
    gate, _started, calls = _gate(sv, monkeypatch)
    gate.set()
    for content in _bad_messages(sv):
        w.status = ""
        _custom(w, content)
        assert w.wait(10)
        assert w.status.startswith("error: a front-end message"), (content, w.status)
        assert calls == [] and w.explorer is None
    c = int(sv.classes[0])
    _custom(w, {"kind": "confirm", "c": c, "k": 0, "patches": [0], "id": 5})  # the worker still runs
    assert w.wait(60)
    assert len(calls) == 1 and w.confirmed["id"] == 5
