"""Any image classifier: inspection, the analysis grid, errors that name what applies, hygiene."""

import pytest
import torch

import vit_explore as vx
from vit_explore.capture.classifier import MODEL_AGNOSTIC, ClassifierInfo, inspect_model, spatial_layout
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.testing import tiny_vit

from ..agnostic_models import BUILDERS, agnostic_input, agnostic_model, full_state
from ..conftest import raising_in_backward

ATTENTION_METHODS = ["raw_attention", "rollout", "attention_flow", "tam", "chefer_lrp", "chefer_generic",
                     "attn_grad_cam", "ag_cam", "attn_lrp", "vit_cx"]


@pytest.mark.parametrize(
    "name,kind,why",
    [("resnet", "cnn", "ResNet is not a transformer"), ("convnext", "cnn", "ConvNeXt is not a transformer"),
     ("swin", "hierarchical", "SwinTransformer is a hierarchical transformer"),
     ("vit_max", "vit", "global_pool='max'")],
)
def test_inspection_and_the_analysis_grid(name, kind, why):
    model = agnostic_model(name)
    info = inspect_model(model)
    assert isinstance(info, ClassifierInfo) and info.kind == kind and why in info.reason
    cell = BUILDERS[name][2]
    assert info.patch_size == (cell, cell)
    ex = vx.explain(model, agnostic_input(name), "saliency")
    H, W = BUILDERS[name][1]
    assert ex.layout.grid == (-(-H // cell), -(-W // cell)) and ex.layout.num_prefix == 0


def test_a_supported_vit_stays_a_vit():
    assert not isinstance(inspect_model(tiny_vit()), ClassifierInfo)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_token_attention_methods_say_why_and_what_applies(method):
    model, x = agnostic_model("swin"), agnostic_input("swin", batch=1)
    with pytest.raises(UnsupportedModelError) as e:
        vx.explain(model, x, method)
    msg = str(e.value)
    assert f"method {method!r} needs global token-to-token attention" in msg
    assert "SwinTransformer is a hierarchical transformer (feature reductions 4, 8, 16, 32)" in msg
    assert "methods that apply: " + ", ".join(MODEL_AGNOSTIC) in msg
    assert "read-out" not in msg and "CNNs and hybrid models" not in msg


def test_drop_mode_and_attention_maps_are_refused_with_the_pixel_modes():
    model, x = agnostic_model("resnet"), agnostic_input("resnet", batch=1)
    for call in (lambda: vx.intervene(model, x, [0], mode="drop"),
                 lambda: vx.explain(model, x, "occlusion", mode="drop"),
                 lambda: vx.counterfactual(model, x, mode="drop", order_by=torch.zeros(3, 2))):
        with pytest.raises(UnsupportedModelError, match=r"mode 'drop' removes patch tokens.*ResNet.*blur, mean, noise, zero"):
            call()
    with pytest.raises(UnsupportedModelError, match="attention_maps needs global token-to-token attention"):
        vx.attention_maps(model, x)


@pytest.mark.parametrize("mode", ["zero", "mean", "blur", "noise"])
def test_intervene_pixel_modes_on_a_cnn(mode):
    """The fed image equals the substrate on the acted-on cell and the input elsewhere, and the
    logits are the model's own on it."""
    model, x = agnostic_model("resnet"), agnostic_input("resnet", batch=1)
    iv = vx.intervene(model, x, [1], mode=mode)  # cell (0, 1) of the 3x2 grid: rows 0..31, cols 32..63
    fed = iv.input[0]
    torch.testing.assert_close(fed[:, :, :32], x[0, :, :, :32], rtol=0, atol=0)
    torch.testing.assert_close(fed[:, 32:, :], x[0, :, 32:, :], rtol=0, atol=0)
    if mode == "zero":
        assert fed[:, :32, 32:].abs().max() == 0
    elif mode == "mean":
        torch.testing.assert_close(fed[:, :32, 32:], x[0].mean(dim=(1, 2))[:, None, None].expand(3, 32, 32))
    else:
        assert not torch.equal(fed[:, :32, 32:], x[0, :, :32, 32:])
    with torch.no_grad():
        torch.testing.assert_close(iv.logits, model(iv.input), rtol=1e-5, atol=1e-5)


def test_spatial_layouts():
    info = inspect_model(agnostic_model("swin"))
    m = torch.nn.Identity()
    H = W = 64
    assert spatial_layout(torch.zeros(1, 8, 4, 4), m, info, H, W).fmt == "NCHW"
    # Swin declares channels-last maps
    sp = spatial_layout(torch.zeros(1, 2, 2, 96), m, info, H, W)
    assert sp.fmt == "NHWC" and sp.grid == (2, 2)
    sp = spatial_layout(torch.zeros(1, 1 + 16, 8), m, info, H, W)
    assert sp.fmt == "NC" and sp.prefix == 1 and sp.grid == (4, 4)
    assert spatial_layout(torch.zeros(1, 7, 8), m, info, H, W) is None  # 7 tokens: no grid
    assert spatial_layout((torch.zeros(1, 8, 4, 4),), m, info, H, W) is None


def test_grad_cam_layer_errors():
    model, x = agnostic_model("resnet"), agnostic_input("resnet", batch=1)
    with pytest.raises(InputError, match=r"no module named 'layer9' in ResNet"):
        vx.explain(model, x, "grad_cam", layer="layer9")
    with pytest.raises(InputError, match=r"'fc' outputs Tensor\(1, 5\)"):
        vx.explain(model, x, "grad_cam", layer="fc")
    with pytest.raises(InputError, match="module name"):
        vx.explain(model, x, "grad_cam", layer=3)


@pytest.mark.parametrize("method", list(MODEL_AGNOSTIC))
def test_the_model_is_left_as_found_also_after_an_error(method):
    model = agnostic_model("resnet")
    model.train()
    model.fc.weight.requires_grad_(False)
    x = agnostic_input("resnet", batch=1)
    before = full_state(model)
    kw = {"n_masks": 4} if method == "rise" else {"steps": 2} if method == "integrated_gradients" else {}
    vx.explain(model, x, method, **kw)
    assert full_state(model) == before
    if method in ("saliency", "integrated_gradients", "grad_cam"):
        with raising_in_backward(model.layer4), pytest.raises(RuntimeError, match="boom"):
            vx.explain(model, x, method, **kw)
        assert full_state(model) == before


def test_a_module_without_logits_is_named():
    with pytest.raises(UnsupportedModelError, match=r"Conv2d returned Tensor\(1, 3, 30, 30\)"):
        vx.explain(torch.nn.Conv2d(3, 3, 3), torch.zeros(1, 3, 32, 32), "saliency")


def test_a_classifier_without_a_head_is_refused():
    import timm

    with pytest.raises(UnsupportedModelError, match=r"ResNet has no classifier head \(num_classes=0\)"):
        vx.explain(timm.create_model("resnet18", num_classes=0), torch.zeros(1, 3, 64, 64), "saliency")
