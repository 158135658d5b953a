"""Model-agnostic methods on Hugging Face classifiers that are not supported ViTs (Swin, ConvNeXt; capture/
hf_classifier.py), against their reference libraries (captum, pytorch-grad-cam) run on the model's ``.logits``,
and the pixel modes of ``vx.intervene`` against the model on the edited image."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import vit_explore as vx
from vit_explore.capture.classifier import inspect_model
from vit_explore.capture.hf import HFClassifier, as_vit
from vit_explore.errors import UnsupportedModelError

from ..explainers.test_perturbation_methods import reference_rise_masks
from .hf_models import hf_convnext, hf_swin, image

MAKERS = {"swin": hf_swin, "convnext": hf_convnext}
CELL = 8  # both: patch 4, two stages (total stride 8)


class Logits(torch.nn.Module):
    """The reference libraries' view of the model: ``model(pixel_values=x).logits``, written here."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(pixel_values=x).logits


@pytest.fixture(params=sorted(MAKERS))
def name(request):
    return request.param


def _targets(ref, x):
    with torch.no_grad():
        return ref(x).argmax(-1)


def test_reads_as_a_classifier(name):
    m = MAKERS[name]()
    info = inspect_model(as_vit(m))
    assert info.name == type(m).__name__ and info.patch_size == (CELL, CELL) and info.num_classes == 5
    assert info.kind == ("hierarchical" if name == "swin" else "cnn")
    with pytest.raises(UnsupportedModelError, match="grad_cam, integrated_gradients, occlusion, rise, saliency"):
        vx.explain(m, image(), "rollout")
    with pytest.raises(UnsupportedModelError, match="use a pixel mode"):
        vx.intervene(m, image(), [0], mode="drop")


def test_saliency_equals_captum(name):
    m, x = MAKERS[name](), image()
    ref = Logits(m)
    ex = vx.explain(m, x, "saliency")
    pixel = Saliency(ref).attribute(x.clone().requires_grad_(True), target=_targets(ref, x), abs=True).amax(1)
    torch.testing.assert_close(ex.extras["pixel_map"], pixel, rtol=1e-5, atol=1e-7)
    want = pixel.double().reshape(2, 4, CELL, 4, CELL).sum((2, 4))
    torch.testing.assert_close(ex.patch_map.double(), want, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_equals_captum(name):
    m, x = MAKERS[name](), image(batch=1)
    ref = Logits(m)
    ex = vx.explain(m, x, "integrated_gradients", steps=4, rule="right")
    want = IntegratedGradients(ref).attribute(x, baselines=torch.zeros_like(x), target=_targets(ref, x), n_steps=4,
                                              method="riemann_right")
    torch.testing.assert_close(ex.extras["attributions"], want, rtol=1e-4, atol=1e-6)


def test_occlusion_equals_captum(name):
    m, x = MAKERS[name](), image()
    ref = Logits(m)
    ex = vx.explain(m, x, "occlusion", mode="zero", score="logit")
    want = Occlusion(ref).attribute(x, sliding_window_shapes=(3, CELL, CELL), strides=(3, CELL, CELL), baselines=0.0,
                                    target=_targets(ref, x))
    torch.testing.assert_close(ex.patch_map, want[:, 0, ::CELL, ::CELL], rtol=1e-4, atol=1e-5)


def test_rise_equals_the_reference(name):
    m, x = MAKERS[name](), image(batch=1)
    ref = Logits(m)
    N, s, p1 = 12, 3, 0.4
    ex = vx.explain(m, x, "rise", n_masks=N, s=s, p1=p1, seed=2, batch_size=8)
    masks = torch.from_numpy(reference_rise_masks(N, s, p1, tuple(x.shape[-2:]), 2))
    c = int(_targets(ref, x)[0])
    with torch.no_grad():
        p = ref(x[0][None] * masks[:, None].float()).softmax(-1)[:, c].double()
    sal = (p[:, None, None] * masks).sum(0) / (N * p1)
    torch.testing.assert_close(ex.extras["pixel_map"][0].double(), sal, rtol=1e-5, atol=1e-6)


class _RawGradCAM(GradCAM):
    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        self.raw = np.maximum(cam, 0)
        return cam


def _tokens_to_nchw(t):  # Swin's (B, h*w, C) tokens
    side = int(t.shape[1] ** 0.5)
    return t.reshape(t.shape[0], side, side, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name,layer,default", [
    ("swin", "swin.layernorm", True), ("convnext", "convnext.encoder.stages.1", True),
    ("convnext", "convnext.encoder.stages.0", False),
])
def test_grad_cam_equals_pytorch_grad_cam(name, layer, default):
    """Layers are named as in the Hugging Face model itself."""
    m, x = MAKERS[name](), image()
    ex = vx.explain(m, x, "grad_cam") if default else vx.explain(m, x, "grad_cam", layer=layer)
    assert ex.extras["layer"] == layer
    ref = Logits(m)
    cam = _RawGradCAM(ref, [m.get_submodule(layer)], reshape_transform=_tokens_to_nchw if name == "swin" else None)
    cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in _targets(ref, x)])
    torch.testing.assert_close(ex.patch_map, torch.from_numpy(cam.raw).float(), rtol=1e-4, atol=1e-6)


def test_pixel_interventions_are_the_model_on_the_edited_image(name):
    m, x = MAKERS[name](), image(batch=1)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 0:2] = True
    pixels = region.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1)
    with torch.no_grad():
        want = m(pixel_values=torch.where(pixels, 0.0, x)).logits
        mean = m(pixel_values=torch.where(pixels, x.mean((2, 3), keepdim=True), x)).logits
    torch.testing.assert_close(vx.intervene(m, x, region, mode="zero").logits, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vx.intervene(m, x, region, mode="mean").logits, mean, rtol=1e-5, atol=1e-5)
    for mode in ("blur", "noise"):
        iv = vx.intervene(m, x, region, mode=mode)
        assert iv.logits.shape == (1, 5) and not torch.allclose(iv.logits, m(pixel_values=x).logits)


def test_a_model_without_logits_says_so():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])
    with pytest.raises(UnsupportedModelError, match="without .logits"):
        vx.explain(transformers.ConvNextModel(cfg).eval(), image(), "saliency")
    assert isinstance(as_vit(transformers.ConvNextModel(cfg)), HFClassifier)


@pytest.mark.parametrize("method", ["saliency", "grad_cam", "occlusion"])
def test_left_as_found_also_after_an_error(method):
    from ..conftest import boom

    m = hf_swin()
    m.train()
    m.classifier.weight.requires_grad_(False)

    def state():
        return ([(x.training, tuple(x._forward_hooks), dict(x._modules)) for x in m.modules()],
                [p.requires_grad for p in m.parameters()])

    before = state()
    vx.explain(m, image(), method)
    assert state() == before
    h = m.swin.layernorm.register_forward_hook(boom)
    with pytest.raises((RuntimeError, UnsupportedModelError), match="boom"):  # the classifier path says which model
        vx.explain(m, image(), method)
    h.remove()
    assert state() == before
