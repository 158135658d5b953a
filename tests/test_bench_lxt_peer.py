"""Our ``attn_lrp`` against LXT itself (bench/lxt_peer.py): LXT's own ``cp_LRP`` rules for
torchvision's ViT, run in a child process on a torchvision ``VisionTransformer`` holding the timm
model's weights, give the same pixel relevance as ours (docs/methods.md §11), with the patch
embedding on the epsilon rule and on zennit's Gamma (LXT's ViT recipe)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

import vit_explore as vx

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("lxt")
pytest.importorskip("torchvision")
pytest.importorskip("zennit")


def _peer_module():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import lxt_peer
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return lxt_peer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                          num_classes=7).eval()
    with torch.no_grad():  # LayerNorm affines away from (1, 0), so that they take part
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("gamma_conv", [0.0, 0.25])
def test_attn_lrp_equals_lxt_on_the_same_weights(gamma_conv):
    lxt_peer = _peer_module()
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 3, 6])  # not the top-1 classes alone
    with lxt_peer.LXTPeer(m, x, t, gamma_conv=gamma_conv) as peer:
        pixel, logits = peer.maps()
    with torch.no_grad():
        torch.testing.assert_close(logits, m(x), rtol=1e-5, atol=1e-5)  # the same function, in torchvision
    ours = vx.explain(m, x, "attn_lrp", target=t, gamma_conv=gamma_conv).extras["pixel_map"]
    assert pixel.abs().amax() > 0
    torch.testing.assert_close(ours, pixel, rtol=1e-4, atol=1e-5 * float(pixel.abs().amax()))
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_models_without_a_torchvision_counterpart_are_refused():
    lxt_peer = _peer_module()
    reg = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                            num_classes=3, reg_tokens=2)
    with pytest.raises(ValueError, match="no register or distillation tokens"):
        lxt_peer.to_torchvision_state(reg)
    avg = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                            num_classes=3, global_pool="avg", class_token=False)
    with pytest.raises(ValueError, match="a class token read out by the head"):
        lxt_peer.to_torchvision_state(avg)
