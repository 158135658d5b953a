"""SAM ViT: windowed blocks and a convolutional neck before the pool. Token-attention methods are
refused with the reason (windows, no read-out row); the model-agnostic methods run, and saliency
equals the model's own input gradient."""

import pytest
import timm
import torch

import vit_explore as vx
from vit_explore.capture.classifier import inspect_model
from vit_explore.errors import UnsupportedModelError


def sam(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("samvit_base_patch16", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, global_attn_indexes=(1,), window_size=2, neck_chans=16,
                             num_classes=5).eval()


def test_the_reason_names_the_windows_and_the_neck():
    info = inspect_model(sam())
    assert "blocks 0 attend within 2x2 windows" in info.reason and "only blocks 1 attend globally" in info.reason
    assert "neck" in info.reason and "no read-out row" in info.reason


@pytest.mark.parametrize("method", ["rollout", "raw_attention", "chefer_lrp", "attn_lrp", "ag_cam", "tam"])
def test_token_methods_refuse_and_name_what_applies(method):
    with pytest.raises(UnsupportedModelError, match="windows.*neck.*methods that apply: grad_cam"):
        vx.explain(sam(), torch.zeros(1, 3, 32, 32), method)


def test_saliency_is_the_models_own_gradient_and_grad_cam_runs_on_the_neck():
    model = sam()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ex = vx.explain(model, x, "saliency", target=[1, 2])
    xi = x.clone().requires_grad_(True)
    model(xi).gather(1, torch.tensor([[1], [2]])).sum().backward()
    torch.testing.assert_close(ex.extras["pixel_map"], xi.grad.abs().amax(1), rtol=1e-5, atol=1e-8)
    cam = vx.explain(model, x, "grad_cam", layer="neck.3")
    assert torch.isfinite(cam.patch_map).all() and cam.patch_map.shape[0] == 2
