"""Model-agnostic methods on classifiers that are not ViTs, against their reference libraries
(captum Saliency / IntegratedGradients / Occlusion, pytorch-grad-cam GradCAM) and RISE's reference."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import vit_explore as vx

from ..agnostic_models import BUILDERS, agnostic_input, agnostic_model
from .test_perturbation_methods import reference_rise_masks

NAMES = ["resnet", "convnext", "swin", "vit_max"]


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def _targets(model, x):
    with torch.no_grad():
        return model(x).argmax(-1)


def test_saliency_equals_captum(name):
    model, x = agnostic_model(name), agnostic_input(name)
    ex = vx.explain(model, x, "saliency")
    ref = Saliency(model).attribute(x.clone().requires_grad_(True), target=_targets(model, x), abs=True)
    pixel = ref.amax(dim=1)
    torch.testing.assert_close(ex.extras["pixel_map"], pixel, rtol=1e-5, atol=1e-7)
    cell = BUILDERS[name][2]
    H, W = x.shape[-2:]
    gh, gw = -(-H // cell), -(-W // cell)
    assert ex.layout.grid == (gh, gw) and ex.layout.num_prefix == 0
    want = torch.nn.functional.pad(pixel.double(), (0, gw * cell - W, 0, gh * cell - H))
    want = want.reshape(x.shape[0], gh, cell, gw, cell).sum(dim=(2, 4))
    torch.testing.assert_close(ex.patch_map.double(), want, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_equals_captum(name):
    model, x = agnostic_model(name), agnostic_input(name)
    x = x[:1]
    ig, t = IntegratedGradients(model), _targets(model, x)
    ex = vx.explain(model, x, "integrated_gradients", steps=4, rule="right")
    ref = ig.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=4, method="riemann_right")
    torch.testing.assert_close(ex.extras["attributions"], ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ex.extras["pixel_map"], ref.sum(1), rtol=1e-4, atol=1e-6)
    # captum's riemann_trapezoid takes steps of 1/n (weights summing to (n-1)/n); ours are the
    # trapezoid rule's 1/(n-1), which keeps completeness: the same points, scaled by n/(n-1)
    ex = vx.explain(model, x, "integrated_gradients", steps=4)
    ref = ig.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=4, method="riemann_trapezoid")
    torch.testing.assert_close(ex.extras["attributions"], ref * 4 / 3, rtol=1e-4, atol=1e-6)


def test_occlusion_equals_captum(name):
    model, x = agnostic_model(name), agnostic_input(name)
    cell = BUILDERS[name][2]
    ex = vx.explain(model, x, "occlusion", mode="zero", score="logit")
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, cell, cell), strides=(3, cell, cell), baselines=0.0,
        target=_targets(model, x),
    )
    # captum gives every pixel of a window its window's logit drop
    torch.testing.assert_close(ex.patch_map, ref[:, 0, ::cell, ::cell], rtol=1e-4, atol=1e-5)


def test_rise_equals_the_reference(name):
    model, x = agnostic_model(name), agnostic_input(name, batch=1)
    H, W = x.shape[-2:]
    N, s, p1 = 12, 3, 0.4
    ex = vx.explain(model, x, "rise", n_masks=N, s=s, p1=p1, seed=2, batch_size=8)
    masks = torch.from_numpy(reference_rise_masks(N, s, p1, (H, W), 2))
    c = int(_targets(model, x)[0])
    with torch.no_grad():
        p = model(x[0][None] * masks[:, None].float()).softmax(-1)[:, c].double()
    sal = (p[:, None, None] * masks).sum(0) / (N * p1)
    torch.testing.assert_close(ex.extras["pixel_map"][0].double(), sal, rtol=1e-5, atol=1e-6)


class _RawGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM, keeping its ReLU'd CAM before ``scale_cam_image``."""

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        self.raw = np.maximum(cam, 0)
        return cam


def _nhwc_to_nchw(t):
    return t.permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    "name,layer,default",
    [("resnet", "layer4", True), ("resnet", "layer3", False), ("convnext", "stages", True),
     ("convnext", "stages.2", False), ("swin", "norm", True), ("swin", "layers.2", False)],
)
def test_grad_cam_equals_pytorch_grad_cam(name, layer, default):
    model, x = agnostic_model(name), agnostic_input(name)
    ex = vx.explain(model, x, "grad_cam") if default else vx.explain(model, x, "grad_cam", layer=layer)
    assert ex.extras["layer"] == layer
    t = _targets(model, x)
    cam = _RawGradCAM(model, [model.get_submodule(layer)], reshape_transform=_nhwc_to_nchw if name == "swin" else None)
    cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    torch.testing.assert_close(ex.patch_map, torch.from_numpy(cam.raw).float(), rtol=1e-4, atol=1e-6)
    H, W = x.shape[-2:]
    assert ex.layout.grid == tuple(cam.raw.shape[1:])
    assert ex.layout.input_size == (H, W) and ex.heatmap().shape == (x.shape[0], H, W)


def test_grad_cam_default_skips_layers_a_class_token_read_out_never_sees():
    """On a class-token model the last blocks' patch outputs get no gradient: the default is
    the last layer whose patch positions do (as a ViT's ``blocks[-1].norm1``)."""
    from vit_explore.testing import tiny_vit

    model = tiny_vit(num_classes=5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    from vit_explore.capture.classifier import inspect_classifier, layer_pass

    name, _act, grad, sp, _, _ = layer_pass(model, x, None, target=None, info=inspect_classifier(model))
    assert name == "blocks.2.norm1" and sp.prefix == 1 and sp.grid == (4, 4)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet", "swin"])
def test_batch_equals_per_image(name):
    model, x = agnostic_model(name), agnostic_input(name, batch=3)
    for method, kw in (("saliency", {}), ("grad_cam", {}), ("occlusion", {})):
        full = vx.explain(model, x, method, **kw).patch_map
        for b in range(3):
            one = vx.explain(model, x[b : b + 1], method, **kw).patch_map
            torch.testing.assert_close(full[b : b + 1], one, rtol=1e-4, atol=1e-6)
