"""The Explorer's Python side: validation, which state change computes what, payloads, escaping."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vit_explore as vx
from vit_explore.errors import InputError, UnknownMethodError, UnsupportedModelError
from vit_explore.testing import tiny_vit
from vit_explore.widget import Explorer
from vit_explore.widget import _serialize as ser
from vit_explore.widget._explorer import _Worker

from ..conftest import input_for
from ..replica import readout_rows, replica_forward, tokens_into_blocks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy():
    return tiny_vit("vanilla")


@pytest.fixture
def imgs(toy):
    return input_for(toy, batch=2, seed=1)


def counts(w: Explorer) -> dict[str, int]:
    return dict(w.stats)


# ------------------------------------------------------------------ validation


def test_unknown_keyword_raises_type_error(toy, imgs):
    with pytest.raises(TypeError):
        Explorer(toy, imgs, colour_map="viridis")


def test_bad_method_name_suggests_the_right_one(toy, imgs):
    with pytest.raises(UnknownMethodError, match=r"did you mean 'rollout'"):
        Explorer(toy, imgs, methods=["raw_attention", "rolout"])
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"])
    with pytest.raises(UnknownMethodError, match=r"did you mean 'rollout'"):
        w.method = "rolout"
    with pytest.raises(UnknownMethodError, match=r"not offered by this Explorer.*methods=\[\.\.\., 'grad_cam'\]"):
        w.method = "grad_cam"
    assert w.method == "raw_attention"


def test_default_methods_are_every_registered_method_attention_first(toy, imgs):
    w = Explorer(toy, imgs)
    assert w.methods[0] == "raw_attention"
    assert sorted(w.methods) == vx.list_methods()
    for m in w.methods:
        assert w.method_info[m]["class_specific"] == vx.get_explainer(m).class_specific


@pytest.mark.parametrize(
    ("name", "value", "pattern"),
    [
        ("layer", 3, r"layer must be in 0\.\.2"),
        ("head", -2, r"head must be -1"),
        ("head", 4, r"0\.\.3"),
        ("query", 16, r"patch index in 0\.\.15"),
        ("target", 7, r"class index in 0\.\.6"),
        ("image_index", 2, r"image_index must be in 0\.\.1"),
        ("brushed", [3, 16], r"0\.\.15, got \[16\]"),
        ("mode", "nois", r"did you mean 'noise'"),
        ("opacity", 1.5, r"\[0, 1\]"),
        ("colormap", "viridiss", r"did you mean 'viridis'"),
    ],
)
def test_state_validation(toy, imgs, name, value, pattern):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    old = getattr(w, name)
    with pytest.raises(InputError, match=pattern):
        setattr(w, name, value)
    assert getattr(w, name) == old


def test_constructor_input_errors(toy, imgs):
    with pytest.raises(InputError, match="class index"):
        Explorer(toy, imgs, target=99)
    with pytest.raises(InputError, match="class_names has 2 entries but the model has 7"):
        Explorer(toy, imgs, class_names=["a", "b"])
    with pytest.raises(InputError, match="images is empty"):
        Explorer(toy, [])
    with pytest.raises(InputError, match="takes 32x32"):
        Explorer(toy, torch.randn(1, 3, 48, 48))
    with pytest.raises(UnsupportedModelError):
        Explorer(torch.nn.Linear(2, 2), imgs)
    with pytest.raises(InputError, match="no parameter 'start'"):
        Explorer(toy, imgs, params={"rollout": {"start": 1}})


def test_brushed_is_normalised_to_sorted_unique(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    w.brushed = [5, 1, 5]
    assert w.brushed == [1, 5]
    w.wait()


# ------------------------------------------------------------------ what each change computes


def test_each_state_change_triggers_exactly_its_computation(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout", "grad_cam"])
    assert w.wait(30)
    assert counts(w) == {"forward": 1}  # one captured pass: top-k, grid, the attention stack
    top0 = int(toy(imgs[:1]).argmax())
    assert w.target == top0

    # scrubbing never touches the model
    w.layer, w.head, w.query = 0, 2, 5
    w.head, w.query = -1, -1
    w.opacity, w.colormap = 0.3, "magma"
    assert w.wait(30) and counts(w) == {"forward": 1}

    w.method = "rollout"
    assert w.wait(30) and counts(w) == {"forward": 1, "explain:rollout": 1}
    assert w.map_payload["key"] == "0|rollout|-|0"
    # not class-specific: a new target reuses the map
    w.target = (top0 + 1) % 7
    assert w.wait(30) and counts(w) == {"forward": 1, "explain:rollout": 1}
    # class-specific: one computation per class, cached
    w.method = "grad_cam"
    assert w.wait(30) and counts(w)["explain:grad_cam"] == 1
    w.target = top0
    assert w.wait(30) and counts(w)["explain:grad_cam"] == 2
    w.target = (top0 + 1) % 7
    w.method = "rollout"
    w.method = "grad_cam"
    assert w.wait(30) and counts(w) == {"forward": 1, "explain:rollout": 1, "explain:grad_cam": 2}

    # brushing runs one intervention (and its causal score); a new mode another; clearing none
    w.brushed = [0, 1, 4]
    assert w.wait(30) and counts(w)["intervene"] == 1 and counts(w)["causal_score"] == 1
    w.mode = "zero"
    assert w.wait(30) and counts(w)["intervene"] == 2
    w.brushed = []
    assert w.wait(30) and counts(w)["intervene"] == 2 and w.intervention == {}

    # a new image: one forward; brush cleared; the target stays pinned (the user picked one)
    w.brushed = [3]
    w.wait(30)
    w.image_index = 1
    assert w.wait(30)
    c = counts(w)
    assert c["forward"] == 2 and w.brushed == [] and w.target == (top0 + 1) % 7
    assert c["explain:grad_cam"] == 3  # grad_cam for image 1
    w.image_index = 0
    assert w.wait(30) and counts(w)["forward"] == 2 and counts(w)["explain:grad_cam"] == 3  # all cached


def test_target_follows_the_image_until_the_user_picks_one(toy):
    x = input_for(toy, batch=6, seed=4)
    tops = [int(v) for v in toy(x).argmax(-1)]
    i = next(j for j in range(1, 6) if tops[j] != tops[0])
    w = Explorer(toy, x, methods=["raw_attention"])
    w.image_index = i
    assert w.wait(30) and w.target == tops[i]
    assert next(c["index"] for c in w.topk) == tops[i]


def test_explainer_failure_is_reported_and_the_widget_stays_usable(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"], params={"rollout": {"start_layer": 99}})
    w.method = "rollout"
    assert w.wait(30)
    assert "Rollout on image 1 failed" in w.status["error"]
    assert w.map_payload["key"] == "0|rollout|-|0" and "error" in w.map_payload
    assert w.errors and "Traceback" in w.errors[-1]
    w.set_params("rollout", start_layer=0)
    assert w.wait(30)
    assert w.status["error"] is None and "data" in w.map_payload and w.params_version == 1


# ------------------------------------------------------------------ values


def test_intervention_matches_a_hand_made_perturbation(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    w.mode = "zero"
    w.brushed = [1, 6, 11]
    assert w.wait(30)
    r = w.intervention
    xz = imgs[:1].clone()
    for p in (1, 6, 11):  # 4x4 grid of 8x8 patches, row-major
        row, col = divmod(p, 4)
        xz[:, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 0.0
    with torch.no_grad():
        after = toy(xz).double().softmax(-1)[0]
        before = toy(imgs[:1]).double().softmax(-1)[0]
    t = w.target
    assert r["patches"] == [1, 6, 11] and r["target"] == t and r["mode"] == "zero"
    assert r["target_after"] == pytest.approx(float(after[t]), abs=1e-5)
    assert r["target_before"] == pytest.approx(float(before[t]), abs=1e-5)
    assert r["delta"] == pytest.approx(float(after[t] - before[t]), abs=1e-5)
    assert [c["index"] for c in r["after"]] == [int(i) for i in after.argsort(descending=True)[:5]]
    assert isinstance(r["causal_score"], float)


def test_attention_payload_round_trip_error_bound(toy, imgs):
    """Each dequantised entry is within scale/510 of a float64 replica's attention."""
    w = Explorer(toy, imgs, methods=["raw_attention"])
    sent: list[tuple[dict, list]] = []
    w.send = lambda msg, buffers=None: sent.append((msg, buffers))  # this instance only
    nbytes = w._send_attention(1, first=1)
    assert [m["layer"] for m, _ in sent] == [1, 0, 2]  # the current layer first
    with torch.no_grad():
        _, attns, _ = replica_forward(toy, tokens_into_blocks(toy, imgs[1:2]))
    H, P, T = 4, 16, 1
    assert nbytes == 3 * ((H + 1) * (1 + P) * P + (H + 1) * (1 + P) * 4)
    for msg, (q, scales) in sent:
        assert (msg["heads"], msg["rows"], msg["cols"]) == (H + 1, 1 + P, P)
        q = np.frombuffer(q, np.uint8).reshape(H + 1, 1 + P, P)
        s = np.frombuffer(scales, np.float32).reshape(H + 1, 1 + P)
        a = attns[msg["layer"]][0]  # (H, N, N) float64
        a = torch.cat([a, a.mean(0, keepdim=True)])
        want = torch.cat([a[:, :1, T:], a[:, T:, T:]], dim=1).numpy()  # CLS row, then patch rows
        got = ser.dequantize_rows(q, s)
        bound = s.astype(np.float64)[..., None] / 510 + 1e-6
        assert np.all(np.abs(got - want) <= bound)
        assert np.allclose(s, want.max(-1), atol=1e-6)


def test_quantize_rows_hand_case():
    q, s = ser.quantize_rows(np.array([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [2.0, -1.0, 1.0]]))
    assert s.tolist() == [1.0, 0.0, 2.0]
    assert q.tolist() == [[0, 128, 255], [0, 0, 0], [255, 0, 128]]


def test_readout_row_follows_the_layout_rule():
    m = tiny_vit("distilled")
    x = input_for(m, batch=1)
    w = Explorer(m, x, methods=["raw_attention"])
    q, s = w._images[0]["attn"][0]
    with torch.no_grad():
        _, attns, _ = replica_forward(m, tokens_into_blocks(m, x))
    want = readout_rows(attns[0][0], m)  # (H, P), mean of the two prefix rows
    got = ser.dequantize_rows(q, s)[:4, 0]
    assert np.all(np.abs(got - want.numpy()) <= s[:4, :1] / 510 + 1e-6)


def test_explanation_property_is_the_current_view(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"])
    w.layer, w.head, w.query = 1, 2, 3
    ex = w.explanation
    with torch.no_grad():
        _, attns, _ = replica_forward(toy, tokens_into_blocks(toy, imgs[:1]))
    want = attns[1][0, 2, 1 + 3, 1:].reshape(4, 4)
    assert torch.allclose(ex.patch_map[0].double(), want, atol=1e-5)
    w.method = "rollout"
    ex2 = w.explanation
    assert ex2.method == "rollout" and w.stats["explain:rollout"] == 1  # the cached map


def test_payload_sizes_are_small(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"])
    assert len(w.image["data"]) == 32 * 32 * 3
    w.method = "rollout"
    w.wait(30)
    assert len(w.map_payload["data"]) == 16 * 4
    # the attention stack is never a trait (saved notebooks stay small)
    state = w.get_state()
    assert not any(isinstance(v, (bytes, memoryview)) and len(v) > 4096 for v in state.values())


# ------------------------------------------------------------------ worker


def test_worker_keeps_only_the_newest_job_per_slot():
    ran: list[int] = []
    gate = threading.Event()
    wk = _Worker(lambda busy, label: None)
    wk.submit("a", "", gate.wait)
    time.sleep(0.05)
    for i in range(5):
        wk.submit("b", "", lambda i=i: ran.append(i))
    gate.set()
    assert wk.wait(10)
    assert ran == [4]


def test_stale_intervention_is_dropped(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    for p in range(6):
        w.brushed = list(range(p + 1))
    assert w.wait(30)
    assert w.intervention["patches"] == list(range(6))
    assert w.stats["intervene"] <= 6
    assert w.intervention["id"] == w._req


# ------------------------------------------------------------------ escaping and export


HOSTILE = '</script><img src=x onerror="alert(1)">'


def test_user_strings_are_text_never_html(toy, imgs):
    names = [HOSTILE] + [f"c{i}" for i in range(6)]
    w = Explorer(toy, imgs, methods=["raw_attention"], class_names=names, title=HOSTILE)
    assert w.class_names[0] == HOSTILE  # passed through untouched, as data
    page = w.to_html()
    assert page.count("</script>") == 4  # the page's own four scripts only
    assert "<img" not in page.split("<body")[0]
    assert "&lt;/script&gt;" in page.split("</title>")[0]  # the title element escapes it
    data = json.loads(re.search(r'id="vx-data">(.*?)</script>', page, re.DOTALL).group(1))
    assert data["state"]["class_names"][0] == HOSTILE
    for f in (REPO / "js" / "src").glob("*.ts"):
        src = f.read_text()
        assert "innerHTML" not in src and "insertAdjacentHTML" not in src and "outerHTML" not in src, f


def test_to_html_embeds_state_attention_and_maps(toy, imgs, tmp_path):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout", "grad_cam"])
    out = tmp_path / "ex.html"
    page = w.to_html(out, methods="all")
    assert out.read_text() == page
    data = json.loads(re.search(r'id="vx-data">(.*?)</script>', page, re.DOTALL).group(1))
    assert len(data["attn"]) == 2 * 3  # every image, every layer
    keys = {m["key"] for m in data["maps"]}
    assert {"0|rollout|-|0", "1|rollout|-|0"} <= keys
    assert any(k.startswith("0|grad_cam|") for k in keys)
    import base64
    import gzip

    blob = gzip.decompress(base64.b64decode(re.search(r'id="vx-blob"[^>]*>(.*?)</script>', page, re.DOTALL).group(1)))

    def arr(rng, dtype):
        at, n = rng
        assert at % 8 == 0 and at + n <= len(blob)
        return np.frombuffer(blob[at : at + n], dtype)

    for a in data["attn"]:  # every array comes back exactly
        q = arr(a["data"], np.uint8).reshape(a["heads"], a["rows"], a["cols"])
        s = arr(a["scales"], np.float32).reshape(a["heads"], a["rows"])
        q0, s0 = w._images[a["image_index"]]["attn"][a["layer"]]
        assert np.array_equal(q, q0) and np.array_equal(s, s0)
    m = next(m for m in data["maps"] if m["key"] == "0|rollout|-|0")
    got = arr(m["data"], np.dtype(m["dtype"])).reshape(m["shape"])
    want = w._maps[next(k for k in w._maps if k[:2] == (0, "rollout"))].patch_map[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3)
    assert data["state"]["image"]["data"]["$b64"]
    with pytest.raises(InputError):
        w.to_html(methods="some")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex.html"]  # written through a temporary file, renamed


def test_to_html_leaves_no_half_written_file(toy, imgs, tmp_path, monkeypatch):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    out = tmp_path / "ex.html"
    out.write_text("the previous export")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("vit_explore._files.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        w.to_html(out)
    assert out.read_text() == "the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex.html"]


def test_figure_shows_probabilities_before_and_after(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"], topk=3)
    fig = w.figure()
    assert len(fig.data) == 1 and len(fig.data[0].y) == 3
    probs = toy(imgs[:1]).softmax(-1)[0].detach()
    assert fig.data[0].y[0] == pytest.approx(float(probs.max()), abs=1e-6)
    w.brushed = [0, 1]
    w.wait(30)
    fig = w.figure()
    assert [tr.name.split(" ")[0] for tr in fig.data] == ["before", "after"]


# ------------------------------------------------------------------ compare, curves, masks, recompute


def test_compare_computes_each_method_once_for_the_right_image_and_class(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout", "grad_cam"])
    assert w.compare_methods == ["raw_attention", "rollout", "grad_cam"]
    with pytest.raises(UnknownMethodError, match="not offered"):
        w.compare_methods = ["rollout", "tam"]
    assert w.wait(30) and counts(w) == {"forward": 1}  # off by default: nothing computed
    w.compare = True
    assert w.wait(60)
    assert counts(w) == {"forward": 1, "explain:rollout": 1, "explain:grad_cam": 1}
    # raw attention is drawn by the front end from its cache: no tile payload
    assert [e["method"] for e in w.compare_payload] == ["rollout", "grad_cam"]
    w.compare = False
    w.compare = True
    w.method = "rollout"  # the main view reuses the compared map
    assert w.wait(30) and counts(w) == {"forward": 1, "explain:rollout": 1, "explain:grad_cam": 1}
    assert w.map_payload["data"] == w.compare_payload[0]["data"]
    # another image and another class: each tile is that image's map for that class
    w.image_index = 1
    assert w.wait(30)
    t = (w.target + 2) % 7
    w.target = t
    assert w.wait(60)
    c = counts(w)
    assert c["explain:rollout"] == 2 and c["explain:grad_cam"] == 3  # image 1's top-1, then class t
    for e in w.compare_payload:
        want = vx.explain(toy, imgs[1:2], e["method"], t).patch_map[0].numpy()
        got = np.frombuffer(e["data"], np.float32).reshape(e["shape"])
        assert e["key"] == f"1|{e['method']}|{t if e['method'] == 'grad_cam' else '-'}|0"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_compare_tile_failure_stays_in_its_tile(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout", "grad_cam"], params={"rollout": {"start_layer": 99}})
    w.compare = True
    assert w.wait(60)
    tiles = {e["method"]: e for e in w.compare_payload}
    assert "start_layer" in tiles["rollout"]["error"] and "data" in tiles["grad_cam"]


def _hand_patch_curves(model, x, sal, target, grid, ps):
    """Deletion/insertion at patch granularity, one patch per step, by hand in float64 scoring."""
    gh, gw = grid
    order = np.argsort(-sal.reshape(-1), kind="stable")  # most relevant first, ties in raster order
    dele, ins = [], []
    zero = torch.zeros_like(x)
    for k in range(gh * gw + 1):
        m = torch.zeros(1, 1, gh * ps, gw * ps, dtype=torch.bool)
        for p in order[:k]:
            r, c = divmod(int(p), gw)
            m[..., r * ps : (r + 1) * ps, c * ps : (c + 1) * ps] = True
        with torch.no_grad():
            dele.append(float(model(torch.where(m, zero, x)).double().softmax(-1)[0, target]))
            ins.append(float(model(torch.where(m, x, zero)).double().softmax(-1)[0, target]))
    return np.array(dele), np.array(ins)


def test_curves_match_a_hand_made_patch_deletion_and_insertion(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"])
    w.method = "rollout"
    t = (w.target + 1) % 7  # a class other than the top-1: the curve scores the target, not the argmax
    w.target = t
    assert w.wait(30)
    w.compute_curves(block=True)
    cv = w.curves
    assert cv["key"] == f"0|rollout|-|0@{t}" and cv["target"] == t and cv["step"] == 1 and cv["patches"] == 16
    sal = vx.explain(toy, imgs[:1], "rollout").patch_map[0].double().numpy()
    dele, ins = _hand_patch_curves(toy, imgs[:1], sal, t, (4, 4), 8)
    np.testing.assert_allclose(cv["deletion"], dele, atol=2e-6)
    np.testing.assert_allclose(cv["insertion"], ins, atol=2e-6)
    np.testing.assert_allclose(cv["x"], np.arange(17) / 16)
    auc = lambda y: (y.sum() - y[0] / 2 - y[-1] / 2) / (len(y) - 1)
    assert cv["auc_deletion"] == pytest.approx(auc(dele), abs=2e-6)
    assert cv["auc_insertion"] == pytest.approx(auc(ins), abs=2e-6)
    assert w.stats["curves"] == 1
    w.compute_curves(block=True)  # cached
    assert w.stats["curves"] == 1 and w.stats["explain:rollout"] == 1
    # figure(): the probability bars, then the same two curves
    fig = w.figure()
    names = [tr.name.split(" ")[0] for tr in fig.data]
    assert names == ["probability", "deletion", "insertion"]
    np.testing.assert_allclose(fig.data[1].y, cv["deletion"])
    np.testing.assert_allclose(fig.data[2].y, cv["insertion"])
    # another view: the figure no longer carries the curves of the old one
    w.target = (t + 1) % 7
    assert len(w.figure().data) == 1
    with pytest.raises(InputError, match="steps must be a positive int"):
        w.compute_curves(steps=0)


def test_curves_of_raw_attention_follow_layer_head_and_query(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention"])
    w.layer, w.head, w.query = 1, 2, 3
    w.compute_curves(steps=4, block=True)  # 16 patches, 4 per step
    cv = w.curves
    assert cv["key"] == f"0|raw_attention|1|2|3|0@{w.target}" and cv["step"] == 4 and len(cv["x"]) == 5
    sal = vx.explain(toy, imgs[:1], "raw_attention", layer=1, head=2, query=3).patch_map[0].double().numpy()
    dele, _ = _hand_patch_curves(toy, imgs[:1], sal, w.target, (4, 4), 8)
    np.testing.assert_allclose(cv["deletion"], dele[::4], atol=2e-6)


def test_vit_cx_masks_and_scores_are_sent_and_selectable(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout", "vit_cx"])
    with pytest.raises(InputError, match="no masks"):
        w.cx_mask = 0
    w.method = "vit_cx"
    assert w.wait(60)
    ex = vx.explain(toy, imgs[:1], "vit_cx", w.target)
    M, S = ex.extras["masks"][0], ex.extras["mask_scores"][0]
    mk = w.cx_masks
    K = M.shape[0]
    assert mk["key"] == f"0|vit_cx|{w.target}|0" and mk["K"] == K and (mk["height"], mk["width"]) == (32, 32)
    got = np.frombuffer(mk["data"], np.uint8).reshape(K, 32, 32)
    assert np.abs(got.astype(np.int32) - np.rint(M.numpy() * 255).astype(np.int32)).max() <= 1
    np.testing.assert_allclose(mk["scores"], S.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=rf"0\.\.{K - 1}"):
        w.cx_mask = K
    w.cx_mask = K - 1
    w.method = "rollout"
    w.method = "vit_cx"  # cached: the masks stay, no new computation
    assert w.wait(30) and w.stats["explain:vit_cx"] == 1 and w.cx_mask == K - 1
    w.target = (w.target + 1) % 7  # a new map: new masks, selection reset
    assert w.wait(60) and w.cx_mask == -1 and w.cx_masks["key"] == f"0|vit_cx|{w.target}|0"


def test_masks_are_pooled_to_small_thumbnails():
    m = tiny_vit(img_size=96, patch_size=16, depth=2, embed_dim=32, num_heads=2, num_classes=3)
    x = input_for(m, batch=1, seed=2)
    w = Explorer(m, x, methods=["vit_cx"])
    assert w.wait(120)
    mk = w.cx_masks
    assert (mk["height"], mk["width"]) == (64, 64) and len(mk["data"]) == mk["K"] * 64 * 64
    M = vx.explain(m, x, "vit_cx", w.target).extras["masks"][0].double()
    want = torch.nn.functional.interpolate(M[:, None], size=(64, 64), mode="area")[:, 0].numpy()  # area = adaptive average pooling
    got = np.frombuffer(mk["data"], np.uint8).reshape(-1, 64, 64) / 255.0
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6


def test_recompute_on_the_intervened_image(toy, imgs):
    w = Explorer(toy, imgs, methods=["raw_attention", "rollout"])
    w.method, w.mode = "rollout", "zero"
    w.brushed = [1, 6, 11]
    assert w.wait(30) and w.intervened_map == {} and "explain_intervened:rollout" not in w.stats
    w.recompute = True  # reuses the intervened input: no new intervention
    assert w.wait(30) and w.stats["intervene"] == 1 and w.stats["explain_intervened:rollout"] == 1
    xz = imgs[:1].clone()
    for p in (1, 6, 11):
        r, c = divmod(p, 4)
        xz[:, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] = 0.0
    want = vx.explain(toy, xz, "rollout").patch_map[0].numpy()
    im = w.intervened_map
    assert im["patches"] == [1, 6, 11] and im["mode"] == "zero" and im["key"] == "0|rollout|-|0"
    np.testing.assert_allclose(np.frombuffer(im["data"], np.float32).reshape(4, 4), want, rtol=1e-5, atol=1e-6)
    shown = np.frombuffer(im["image"]["data"], np.uint8).reshape(32, 32, 3)
    assert np.array_equal(shown, ser.display_image(xz[0], w._mean, w._std))
    # a new stroke: intervention + recompute in the same job
    w.brushed = [0]
    assert w.wait(30) and w.stats["intervene"] == 2 and w.stats["explain_intervened:rollout"] == 2
    assert w.intervened_map["patches"] == [0]
    # another method recomputes on the same input; raw attention follows the layer
    w.method = "raw_attention"
    assert w.wait(30) and w.stats["explain_intervened:raw_attention"] == 1 and w.stats["intervene"] == 2
    w.layer = 0
    assert w.wait(30) and w.stats["explain_intervened:raw_attention"] == 2
    assert w.intervened_map["key"] == "0|raw_attention|0|-1|-1|0"
    # drop has no intervened image: a readable message, nothing computed
    w.mode = "drop"
    assert w.wait(30) and "pick another mode" in w.intervened_map["error"]
    w.recompute = False
    assert w.intervened_map == {}
    w.layer = 1  # off again: scrubbing touches nothing
    assert w.wait(30) and w.stats["explain_intervened:raw_attention"] == 2


def test_a_picked_class_is_pinned_across_images_until_unpinned(toy):
    x = input_for(toy, batch=6, seed=4)
    tops = [int(v) for v in toy(x).argmax(-1)]
    i = next(j for j in range(1, 6) if tops[j] != tops[0])
    w = Explorer(toy, x, methods=["raw_attention", "rollout"])
    assert w.pinned is False and w.target == tops[0]
    other = (tops[i] + 1) % len(w.class_names)  # neither image i's top-1 ...
    other = other if other != tops[0] else (other + 1) % len(w.class_names)
    w.target = other
    assert w.pinned is True
    w.image_index = i
    assert w.wait(30) and w.target == other  # ... and it stays: pinned
    w.pinned = False  # "back to top-1": the current image's own class, at once
    assert w.target == tops[i]
    w.image_index = 0
    assert w.wait(30) and w.target == tops[0] and w.pinned is False
    # a target given to the constructor is a pinned one
    assert Explorer(toy, x, methods=["raw_attention"], target=other).pinned is True


def test_counterfactual_result_says_what_flipped_or_that_nothing_did(toy, imgs):
    from vit_explore.counterfactual_search import counterfactual
    from vit_explore.interventions import intervene

    w = Explorer(toy, imgs, methods=["raw_attention"])
    w.find_counterfactual(block=True)
    cf, ref = w.counterfactual, counterfactual(toy, imgs[:1], w.target, mode="noise", order_by="rollout")
    assert cf["found"] == ref.found and cf["image_index"] == 0 and cf["target"] == w.target
    if ref.found:
        assert cf["patches"] == w.brushed == [int(j) for j in torch.nonzero(ref.patches.reshape(-1))]
        assert cf["new_class"] == ref.new_class and cf["new_name"] == w.class_names[ref.new_class]
        # the named class really is the top-1 once those patches are removed (the model's own numbers)
        res = intervene(toy, imgs[:1], cf["patches"], mode="noise", target=w.target)
        assert int(res.probs[0].argmax()) == cf["new_class"]
        assert cf["new_prob"] == pytest.approx(float(res.probs[0, cf["new_class"]]), abs=1e-5)
    else:
        assert cf["patches"] == [] and cf["tried"] == ref.greedy_size
    w.image_index = 1
    assert w.counterfactual == {}  # a new image: no stale message


def test_every_method_has_a_one_line_description(toy, imgs):
    w = Explorer(toy, imgs)
    for m, info in w.method_info.items():
        assert 40 < len(info["about"]) < 260 and "\n" not in info["about"], m


def test_explorer_on_a_model_without_token_attention():
    """A CNN opens with the model-agnostic methods only, no attention controls, no drop mode."""
    from vit_explore.capture.classifier import MODEL_AGNOSTIC
    from vit_explore.errors import UnsupportedModelError

    from ..agnostic_models import agnostic_input, agnostic_model

    model, x = agnostic_model("resnet"), agnostic_input("resnet", batch=2)
    w = Explorer(model, x)
    assert w.token_attention is False
    assert w.methods == [m for m in vx.list_methods() if m in MODEL_AGNOSTIC] and w.method == w.methods[0]
    assert w.grid == [3, 2]
    with torch.no_grad():
        p = model(x[:1]).softmax(-1)[0]
    assert [d["index"] for d in w.topk] == p.topk(w._k).indices.tolist()
    with pytest.raises(UnsupportedModelError, match="mode 'drop' removes patch tokens"):
        w.mode = "drop"
    w.method = "saliency"
    assert w.wait()
    ex = w.explanation
    ref = vx.explain(model, x[:1], "saliency", target=w.target)
    torch.testing.assert_close(ex.patch_map, ref.patch_map)
    assert ex.patch_map.shape == (1, 3, 2) and not w.errors
    with pytest.raises(UnsupportedModelError, match=r"'rollout' needs global token-to-token attention.*ResNet"):
        Explorer(model, x, methods=["saliency", "rollout"])
    assert Explorer(tiny_vit(), input_for(tiny_vit(), batch=1)).token_attention is True
