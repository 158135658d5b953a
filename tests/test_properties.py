"""Property test (issue 20): random bad values at every parameter of every public function and
at every Explorer trait give a clear project error (``VitExploreError``; ``TraitError`` for
traits) or a correct result, never another exception type, never a hang, and leave the model
exactly as found (parameters, buffers, training flags, requires_grad, hooks, fused_attn)."""

from __future__ import annotations

import inspect
import time

import pytest
import torch
import traitlets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vit_explore as vx
from vit_explore.errors import VitExploreError
from vit_explore.testing import tiny_vit

from .conftest import input_for

pytestmark = pytest.mark.filterwarnings("ignore")
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
STATS = {"cases": 0, "seconds": 0.0}

#: values of every kind a user (or a hostile caller) might pass
BAD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([-1, 0, 1, 2, 3, 99, -99]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.sampled_from(["2", "a", "<!--"]),
    st.lists(st.integers(-3, 20), max_size=4), st.lists(st.booleans(), max_size=4),
    st.just(torch.tensor([float("nan")])), st.just(torch.zeros(0)), st.just({"a": 1}), st.just(object()),
)


@pytest.fixture(scope="module")
def model():
    return tiny_vit("vanilla", seed=0, depth=2)


def snapshot(model: torch.nn.Module) -> dict:
    attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "fused": [m.__dict__.get("fused_attn", "-") for m in attns],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["training"] == b["training"] and a["requires_grad"] == b["requires_grad"]
    assert a["hooks"] == b["hooks"] and a["fused"] == b["fused"]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


def check(model: torch.nn.Module, fn, limit: float = 60.0) -> None:
    """Run ``fn``: a project error or a result; the model unchanged; bounded time."""
    before = snapshot(model)
    t0 = time.perf_counter()
    try:
        fn()
    except VitExploreError:
        pass
    finally:
        dt = time.perf_counter() - t0
        STATS["cases"] += 1
        STATS["seconds"] += dt
    assert dt < limit, f"took {dt:.1f} s"
    assert_same(before, snapshot(model))


# cheap values for the methods' costly parameters, so a valid draw runs fast
CHEAP = {"n_masks": 8, "steps": 2, "batch_size": 8, "internal_batch_size": 8, "workers": 1}


@pytest.mark.parametrize("method", vx.list_methods())
def test_explain_with_random_parameter_values(model, method):
    spec = vx.get_explainer(method)
    x = input_for(model, batch=1, seed=0)
    names = list(spec.defaults)
    if not names:
        pytest.skip(f"{method} has no parameters")
    base = {k: v for k, v in CHEAP.items() if k in spec.defaults}

    @settings(SETTINGS, max_examples=6)  # x 15 methods
    @given(name=st.sampled_from(names), value=BAD)
    def prop(name, value):
        check(model, lambda: vx.explain(model, x, method, **{**base, name: value}))

    prop()


@given(target=BAD, method=st.sampled_from(["rollout", "grad_cam", 1, None, "evil"]), x=st.sampled_from(
    ["ok", "nan", "int", "3d-bad", "empty", "list"]))
@SETTINGS
def test_explain_arguments(model, target, method, x):
    xs = {"ok": input_for(model, 1), "nan": torch.full((1, 3, 32, 32), float("nan")),
          "int": torch.zeros(1, 3, 32, 32, dtype=torch.long), "3d-bad": torch.zeros(5, 7, 3),
          "empty": torch.zeros(0, 3, 32, 32), "list": [1, 2]}[x]
    check(model, lambda: vx.explain(model, xs, method, target=target))


INTERVENE = ["patches", "mode", "target", "keep", "seed", "sigma", "blur_sigma", "blur_size", "topk", "batch_size"]


@given(name=st.sampled_from(INTERVENE), value=BAD)
@SETTINGS
def test_intervene(model, name, value):
    x = input_for(model, 1)
    kw = {"patches": [0, 1], "mode": "blur", name: value}
    check(model, lambda: vx.intervene(model, x, **kw))


@given(name=st.sampled_from(["patches", "target", "keep", "seed", "sigma", "batch_size"]), value=BAD)
@SETTINGS
def test_causal_score(model, name, value):
    x = input_for(model, 1)
    kw = {"patches": [0, 1], name: value}
    check(model, lambda: vx.causal_score(model, x, **kw))


@given(name=st.sampled_from(["target", "mode", "order_by", "max_patches", "batch_size", "seed", "sigma",
                             "blur_sigma", "blur_size", "prune"]), value=BAD)
@SETTINGS
def test_counterfactual(model, name, value):
    x = input_for(model, 1)
    kw = {"order_by": torch.rand(4, 4, generator=torch.Generator().manual_seed(0)), "max_patches": 4,
          "mode": "zero", name: value}
    check(model, lambda: vx.counterfactual(model, x, **kw))


@given(heads=st.one_of(BAD, st.dictionaries(BAD, BAD, max_size=2)))
@SETTINGS
def test_ablate_heads(model, heads):
    x = input_for(model, 1)

    def run():
        with vx.ablate_heads(model, heads):
            model(x)

    check(model, run)


@given(layers=BAD, keep=BAD)
@SETTINGS
def test_block_tokens(model, layers, keep):
    from vit_explore.capture.ablation import block_tokens

    x = input_for(model, 1)
    params = inspect.signature(block_tokens).parameters
    names = [p for p in params if p != "model"]

    def run():
        with block_tokens(model, **dict(zip(names, (keep, layers)))):
            model(x)

    check(model, run)


@given(query=BAD)
@SETTINGS
def test_attention_maps(model, query):
    check(model, lambda: vx.attention_maps(model, input_for(model, 1), query=query))


@given(image=st.one_of(BAD, st.sampled_from(["zero-pil", "gray", "float-array", "4d"])))
@SETTINGS
def test_preprocess(model, image):
    import numpy as np
    from PIL import Image

    im = {"zero-pil": Image.new("RGB", (0, 0)), "gray": np.zeros((5, 5), np.uint8),
          "float-array": np.zeros((5, 5, 3)), "4d": np.zeros((1, 5, 5, 3), np.uint8)}.get(image, image) \
        if isinstance(image, str) else image
    check(model, lambda: vx.preprocess(model, im))


@given(name=st.sampled_from(["pretrained", "arch", "num_classes", "name_or_path"]), value=BAD)
@SETTINGS
def test_load_model(name, value):
    kw = {"name_or_path": "toy-shapes", name: value}
    before = time.perf_counter()
    try:
        vx.load_model(**kw)
    except VitExploreError:
        pass
    STATS["cases"] += 1
    STATS["seconds"] += time.perf_counter() - before


@pytest.fixture(scope="module")
def explorer(model):
    w = vx.Explorer(model, input_for(model, batch=2, seed=1), methods=["raw_attention", "rollout"])
    assert w.wait(60)
    return w


TRAITS = ["method", "layer", "head", "query", "target", "image_index", "opacity", "colormap", "show_grid",
          "smooth", "brushed", "mode", "keep", "compare", "compare_methods", "cx_mask", "recompute",
          "num_layers", "grid", "title", "class_names"]


@given(name=st.sampled_from(TRAITS), value=BAD)
@SETTINGS
def test_explorer_traits_from_the_front_end(model, explorer, name, value):
    before = {k: getattr(explorer, k) for k in TRAITS}
    snap = snapshot(model)
    t0 = time.perf_counter()
    try:
        explorer.set_state({name: value})
        rejected = False
    except traitlets.TraitError:
        rejected = True
    assert explorer.wait(60)
    STATS["cases"] += 1
    STATS["seconds"] += time.perf_counter() - t0
    if rejected:
        assert {k: getattr(explorer, k) for k in TRAITS} == before
    assert_same(snap, snapshot(model))
    explorer.explanation  # noqa: B018 - whatever was kept still explains
    with explorer.hold_trait_notifications():
        for k, v in before.items():
            if getattr(explorer, k) != v and k in ("method", "layer", "head", "query", "target", "image_index",
                                                   "brushed", "mode", "keep", "compare", "recompute"):
                setattr(explorer, k, v)


def test_zz_report_case_count():
    print(f"\nproperty tests: {STATS['cases']} cases, {STATS['seconds']:.1f} s inside the calls")
    assert STATS["cases"] > 0
