"""The Atlas widget's Python side: its payloads decode to the survey's own arrays, a click gives the
image and its map, a brush runs Survey.confirm, and to_html exports an escaped, self-contained page."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest
import torch

from vit_explore.errors import InputError
from vit_explore.survey import survey
from vit_explore.testing import tiny_vit
from vit_explore.widget import Atlas
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
    ref = sv.confirm(c, 0, patches=[0, 1])
    assert w.confirmed["id"] == 7 and w.confirmed["patches"] == [0, 1]
    assert w.confirmed["flip_rate"] == pytest.approx(ref["flip_rate"])
    assert w.confirmed["control_flip_rate"] == pytest.approx(ref["control_flip_rate"])
    assert w.confirmed["control_patches"] == np.flatnonzero(ref["control_patches"].ravel()).tolist()
    with pytest.raises(InputError, match="survey"):
        Atlas("not a survey")


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
