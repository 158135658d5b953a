"""The Explorer's teaching requests (logit lens, similarity, head attribution, ablation, patching) and tours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vit_explore as vx
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit
from vit_explore.widget import Explorer
from vit_explore.widget._teaching import default_tour

from ..conftest import input_for


@pytest.fixture
def toy():
    return tiny_vit("vanilla", depth=4)


@pytest.fixture
def imgs(toy):
    return input_for(toy, batch=2, seed=1)


def ask(w: Explorer, content: dict) -> tuple[dict, list[np.ndarray]]:
    sent: list = []
    w.send = lambda msg, buffers=None: sent.append((msg, buffers or []))  # this instance only
    w._on_msg(w, content, [])
    assert w.wait(60)
    (msg, bufs), = [s for s in sent if s[0]["kind"] == content["kind"]]
    return msg, [np.frombuffer(b, dtype=np.float32) for b in bufs]


def test_lens_is_sent_once_compactly_and_matches_the_api(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    msg, (readout, patches) = ask(w, {"kind": "lens_request", "image_index": 1, "target": 3})
    lens = vx.logit_lens(toy, imgs[1:], tokens="all")
    L, C = 4, 7
    assert (msg["num_layers"], msg["num_classes"], msg["grid"]) == (L, C, [4, 4])
    np.testing.assert_allclose(readout.reshape(L, C), lens.probs[0].numpy(), atol=1e-6)
    want = lens.patches[0].softmax(-1)[..., 3].numpy()
    np.testing.assert_allclose(patches.reshape(L, 4, 4), want, atol=1e-6)
    # another class reuses the cached lens: no second forward
    msg, (p5,) = ask(w, {"kind": "lens_class", "image_index": 1, "target": 5})
    np.testing.assert_allclose(p5.reshape(L, 4, 4), lens.patches[0].softmax(-1)[..., 5].numpy(), atol=1e-6)
    assert w.stats["logit_lens"] == 1


def test_similarity_head_attribution_ablation_and_patching_match_the_api(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    msg, (sim,) = ask(w, {"kind": "similarity", "image_index": 0, "layer": 2, "query": 6, "id": 7})
    assert msg["id"] == 7
    np.testing.assert_allclose(sim.reshape(4, 4), vx.token_similarity(toy, imgs[:1], 2, 6)[0].numpy(), atol=1e-6)

    msg, (direct, abl) = ask(w, {"kind": "head_attr", "image_index": 0, "target": 2})
    ha = vx.head_attribution(toy, imgs[:1], 2)
    np.testing.assert_allclose(direct.reshape(4, 4), ha.direct[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(abl.reshape(4, 4), ha.ablation[0].numpy(), atol=1e-6)

    msg, _ = ask(w, {"kind": "ablate", "image_index": 0, "target": 2, "heads": [[1, 2], [3, 0]]})
    with vx.ablate_heads(toy, {1: [2], 3: [0]}), torch.no_grad():
        p = toy(imgs[:1]).softmax(-1)[0]
    assert msg["heads"] == [[1, 2], [3, 0]]
    assert msg["target_after"] == pytest.approx(float(p[2]), abs=1e-6)
    assert msg["after"][0]["index"] == int(p.argmax())

    msg, _ = ask(w, {"kind": "patch", "image_index": 0, "source_index": 1, "layer": 1, "positions": [5, 1],
                     "target": 2})
    p = vx.patch_activations(toy, imgs[1:], imgs[:1], 1, [1, 5])[0]
    assert msg["positions"] == [1, 5]
    assert msg["target_after"] == pytest.approx(float(p[2]), abs=1e-6)
    with torch.no_grad():
        assert msg["target_before"] == pytest.approx(float(toy(imgs[:1]).softmax(-1)[0, 2]), abs=1e-6)


def test_bad_requests_are_reported_not_raised(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    msg, _ = ask(w, {"kind": "similarity", "image_index": 0, "layer": 9, "query": 0})
    assert "layer must be an int in 0..3" in msg["error"]
    msg, _ = ask(w, {"kind": "ablate", "image_index": 0, "target": 0, "heads": [[0, 4]]})
    assert "out of range" in msg["error"]
    msg, _ = ask(w, {"kind": "patch", "image_index": 0, "source_index": 1, "layer": 0, "positions": [16], "target": 0})
    assert "outside the 4x4" in msg["error"]
    assert w.status["error"]


def test_default_tour_resolves_layers_and_custom_tours_are_checked(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"], tour="default")
    assert [s["title"] for s in w.tour] == [s["title"] for s in default_tour()]
    layers = [s.get("layer") for s in w.tour]
    assert layers[2:5] == [0, 2, 3] and w.tour_step == -1
    w2 = Explorer(toy, imgs, methods=["raw_attention"], tour=[{"title": "a", "text": "b", "layer": -1, "panel": "lens"}])
    assert w2.tour == [{"title": "a", "text": "b", "layer": 3, "panel": "lens"}]
    assert Explorer(toy, imgs, methods=["raw_attention"]).tour == []
    for tour, pattern in [
        ([{"title": "a", "layer": 4}], "out of range"),
        ([{"title": "a", "colour": 1}], "unknown key"),
        ([{"title": "a", "method": "rollout"}], "not one of"),
        ([{"title": "a", "panel": "nope"}], "panel must be"),
        ([{}], "needs a title"),
        ("tour", "list of step dicts"),
    ]:
        with pytest.raises(InputError, match=pattern):
            Explorer(toy, imgs, methods=["raw_attention"], tour=tour)
