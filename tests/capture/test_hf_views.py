"""One view per Hugging Face model (capture/hf.py ``as_vit``): reused by every entry point and across calls
(so the interventions' cache of the unmodified forward hits), rebuilt when the model's modules change,
and not keeping a model alive once the caller lets go of it."""

import gc
import weakref

import torch

import vit_explore as vx
from vit_explore.capture.hf import HFViT, as_vit

from .hf_models import hf_convnext, hf_vit, image


def _count_views(monkeypatch) -> list[int]:
    built = []
    init = HFViT.__init__

    def counting(self, model):
        built.append(1)
        init(self, model)

    monkeypatch.setattr(HFViT, "__init__", counting)
    return built


def test_one_view_for_every_entry_point_and_call(monkeypatch):
    built = _count_views(monkeypatch)
    m, x = hf_vit(), image(batch=1)
    view = as_vit(m)
    assert as_vit(m) is view and as_vit(view) is view and len(built) == 1
    vx.explain(m, x, "rollout")
    vx.explain(m, x, "chefer_lrp")
    vx.attention_maps(m, x)
    vx.intervene(m, x, [0], mode="zero")
    with vx.ablate_heads(m, {0: 1}), vx.block_tokens(m, [1], layers=[0]):
        m(pixel_values=x)
    assert len(built) == 1
    assert as_vit(hf_convnext()) is not None  # another model, another view (an HFClassifier)


def test_the_intervention_cache_hits_on_the_second_call():
    """The unmodified forward is fused into the first call's batch, then taken from the engine's
    cache: the second call runs only its own edited image (the batch sizes the model sees, recorded
    here). The cache is the caller's ``ForwardEngine`` (vit_explore.perturb), as the Explorer holds one."""
    from vit_explore.perturb import ForwardEngine

    m, x = hf_vit(), image(batch=1)
    eng = ForwardEngine()
    rows: list[int] = []
    h = m.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(kwargs["pixel_values"].shape[0]),
                                    with_kwargs=True)
    try:
        a = vx.intervene(m, x, [0], mode="zero", engine=eng)
        b = vx.intervene(m, x, [5], mode="zero", engine=eng)
    finally:
        h.remove()
    assert rows == [2, 1], rows
    torch.testing.assert_close(a.base_logits, b.base_logits)
    with torch.no_grad():
        torch.testing.assert_close(b.base_logits, m(pixel_values=x).logits)


def test_a_replaced_module_builds_a_new_view():
    m, x = hf_vit(), image(batch=1)
    view = as_vit(m)
    m.classifier = torch.nn.Linear(m.classifier.in_features, 3)
    new = as_vit(m)
    assert new is not view and new.head is m.classifier and new.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(vx.intervene(m, x, [0], mode="zero").base_logits, m(pixel_values=x).logits)


def test_the_view_inside_a_pass_is_the_one_running():
    m, x = hf_vit(), image(batch=1)
    seen = []
    h = m.vit.layers[0].layernorm_before.register_forward_hook(lambda *a: seen.append(as_vit(m)))
    try:
        vx.explain(m, x, "rollout")
    finally:
        h.remove()
    assert seen and all(v is as_vit(m) for v in seen)


def test_views_do_not_keep_models_alive():
    m = hf_vit()
    as_vit(m)
    ref = weakref.ref(m)
    as_vit(hf_vit(seed=1))  # the last view handed out is another model's
    del m
    gc.collect()
    assert ref() is None
