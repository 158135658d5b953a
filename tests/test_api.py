"""``vx.explain``: inputs, targets, errors and the Explanation object."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vit_explore as vx
from vit_explore.errors import InputError, UnknownMethodError, UnsupportedModelError
from vit_explore.explanation import normalize_maps
from vit_explore.testing import tiny_vit

from .conftest import input_for


@pytest.fixture(scope="module")
def m():
    return tiny_vit()


@pytest.fixture(scope="module")
def xb(m):
    return input_for(m, batch=2)


def test_bad_inputs_get_their_own_clear_errors(m, xb):
    with pytest.raises(InputError, match="takes 3 channels but the input has 1"):
        vx.explain(m, xb[:, :1])
    with pytest.raises(InputError, match="takes 32x32 images but the input is 40x40"):
        vx.explain(m, torch.zeros(1, 3, 40, 40))
    bad = xb.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        vx.explain(m, bad)
    with pytest.raises(InputError, match="target 7 is out of range: the model has 7 classes"):
        vx.explain(m, xb, target=7)
    with pytest.raises(InputError, match="target -1 is out of range"):
        vx.explain(m, xb, target=[0, -1])
    with pytest.raises(InputError, match="3 entries but the batch has 2"):
        vx.explain(m, xb, target=[0, 1, 2])
    with pytest.raises(UnknownMethodError, match="did you mean 'rollout'"):
        vx.explain(m, xb, method="rolout")
    with pytest.raises(InputError, match="no parameter 'start_layr'; did you mean 'start_layer'"):
        vx.explain(m, xb, method="rollout", start_layr=1)
    with pytest.raises(InputError, match="4-d batch"):
        vx.explain(m, torch.zeros(2, 2, 3, 32, 32))
    with pytest.raises(InputError, match="float tensor"):
        vx.explain(m, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="head 9 is out of range"):
        vx.explain(m, xb, method="raw_attention", head=9)
    with pytest.raises(InputError, match="start_layer 5 is out of range"):
        vx.explain(m, xb, method="rollout", start_layer=5)


def test_a_cnn_is_refused_attention_methods_with_a_clear_message(xb):
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=3)
    with pytest.raises(
        UnsupportedModelError,
        match=r"'rollout' needs global token-to-token attention, but ResNet is not a transformer.*"
        r"methods that apply: grad_cam, integrated_gradients, occlusion, rise, saliency",
    ):
        vx.explain(cnn, xb)
    with pytest.raises(UnsupportedModelError, match="expected a timm VisionTransformer"):
        vx.explain("vit_base_patch16_224", xb)


def test_unsupported_block_and_pooling_are_named():
    psb = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
        block_fn=timm.models.vision_transformer.ParallelScalingBlock, num_classes=3,
    )
    with pytest.raises(UnsupportedModelError, match="block 0 is a ParallelScalingBlock.*methods that apply"):
        vx.explain(psb, torch.zeros(1, 3, 32, 32))
    mp = tiny_vit(global_pool="max")
    with pytest.raises(UnsupportedModelError, match="global_pool='max' is not supported"):
        vx.explain(mp, torch.zeros(1, 3, 32, 32))
    # the model-agnostic methods run on both
    assert vx.explain(mp, torch.zeros(1, 3, 32, 32), "saliency").patch_map.shape == (1, 4, 4)


def test_unknown_and_planned_methods():
    with pytest.raises(UnknownMethodError, match="did you mean 'attention_flow'"):
        vx.get_explainer("atention_flow")
    assert {"raw_attention", "rollout", "attention_flow"} <= set(vx.list_methods())
    assert vx.list_methods("*rollout*") == ["rollout"]


def test_targets_default_int_and_per_image(m, xb):
    ex = vx.explain(m, xb)
    assert ex.target.tolist() == m(xb).argmax(-1).tolist()
    assert vx.explain(m, xb, target=4).target.tolist() == [4, 4]
    assert vx.explain(m, xb, target=np.array([1, 2])).target.tolist() == [1, 2]
    assert vx.explain(m, xb, target=torch.tensor([3, 0])).target.tolist() == [3, 0]


def test_explanation_fields_and_indexing(m, xb):
    ex = vx.explain(m, xb, "rollout", start_layer=1)
    assert ex.patch_map.dtype == torch.float32 and ex.patch_map.shape == (2, 4, 4)
    assert ex.method == "rollout" and ex.params["start_layer"] == 1 and ex.params["head_fusion"] == "mean"
    assert ex.logits.shape == (2, 7)
    torch.testing.assert_close(ex.probs.sum(-1), torch.ones(2))
    one = ex[1]
    assert len(one) == 1 and one.target.tolist() == ex.target[1:].tolist()
    with pytest.raises(IndexError):
        ex[2]


def test_heatmap_is_bilinear_half_pixel_and_normalised(m, xb):
    ex = vx.explain(m, xb, "rollout")
    ex = type(ex)(**{**ex.__dict__, "patch_map": torch.tensor([[[0.0, 1.0]]] * 2)})
    # align_corners=False: output centres at -0.25, 0.25, 0.75, 1.25 input cells (edges clamp)
    got = ex.heatmap(size=(1, 4), normalize="none")
    torch.testing.assert_close(got, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]] * 2))
    assert ex.heatmap().shape == (2, 32, 32)
    maps = torch.tensor([[[2.0, 4.0]], [[3.0, 3.0]]])
    torch.testing.assert_close(normalize_maps(maps), torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]]))
    torch.testing.assert_close(normalize_maps(torch.tensor([[[-2.0, 1.0]]]), "maxabs"), torch.tensor([[[-1.0, 0.5]]]))


@pytest.mark.parametrize("method,kw", [("saliency", {}), ("integrated_gradients", {"steps": 3}),
                                       ("rise", {"n_masks": 8}), ("vit_cx", {})])
def test_heatmap_is_the_methods_own_pixel_map(m, xb, method, kw):
    """Methods with a pixel-level map: heatmap() is that map, normalised (not the upsampled
    patch map); a size other than the input's resizes the pixel map."""
    ex = vx.explain(m, xb, method, **kw)
    pixel = ex.extras["pixel_map"]
    assert pixel.shape == (2, 32, 32)
    lo = pixel.amin(dim=(1, 2), keepdim=True)
    hi = pixel.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(ex.heatmap(), (pixel - lo) / (hi - lo))
    torch.testing.assert_close(ex.heatmap(normalize="none"), pixel)
    up = torch.nn.functional.interpolate(pixel[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(ex.heatmap(size=64, normalize="none"), up)
    patch_up = torch.nn.functional.interpolate(ex.patch_map[:, None], size=(32, 32), mode="bilinear")[:, 0]
    assert not torch.allclose(ex.heatmap(normalize="none"), patch_up)


def test_pil_and_uint8_images_are_preprocessed_with_the_models_config(m):
    from vit_explore.inputs import data_config

    cfg = data_config(m)
    arr = np.full((50, 70, 3), 128, dtype=np.uint8)
    x = vx.preprocess(m, arr)
    assert x.shape == (1, 3, 32, 32)
    expected = (128 / 255 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    torch.testing.assert_close(x[0, :, 10, 10], expected.float(), rtol=0, atol=1e-5)
    ex = vx.explain(m, [Image.fromarray(arr), arr], "raw_attention")
    assert ex.patch_map.shape == (2, 4, 4)
    with pytest.raises(InputError, match="uint8"):
        vx.preprocess(m, arr.astype(np.float32))


def test_inputs_are_not_mutated(m, xb):
    before = xb.clone()
    vx.explain(m, xb, "attention_flow")
    assert torch.equal(before, xb)
