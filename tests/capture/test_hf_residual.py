"""The residual-stream tools on Hugging Face classifiers (their views, capture/hf.py): head attribution and
activation patching against the timm twin, the decomposition's completeness where timm has no twin (BEiT's
timm Block keeps its layer scale as gamma_1, which the attribution refuses; DINOv2's concat read-out)."""

import pytest
import torch

import vit_explore as vx
from vit_explore.errors import UnsupportedModelError

from .hf_models import (
    hf_beit,
    hf_clip,
    hf_dinov2,
    hf_siglip,
    hf_vit,
    image,
    timm_beit_twin,
    timm_encoder_twin,
    timm_twin,
)

TWINS = {"vit": (hf_vit, timm_twin), "clip": (hf_clip, timm_encoder_twin), "siglip": (hf_siglip, timm_encoder_twin)}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_head_attribution_equals_the_timm_twin(name):
    mk, tw = TWINS[name]
    m = mk()
    x = image()
    a, b = vx.head_attribution(m, x), vx.head_attribution(tw(m), x)
    torch.testing.assert_close(a.direct, b.direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.ablation, b.ablation, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mk", [hf_beit, hf_dinov2], ids=["beit", "dinov2"])
def test_head_attribution_is_complete(mk):
    """direct + embed + attn biases + MLPs + constant = the model's own target logit; ablating a head
    changes the probability as the model with that head's output zeroed (vx.ablate_heads) says."""
    m = mk()
    x = image()
    a = vx.head_attribution(m, x)
    total = a.direct.sum((1, 2)) + a.embed + a.attn_bias.sum(1) + a.mlp.sum(1) + a.bias
    with torch.no_grad():
        logits = m(pixel_values=x).logits.double()
        torch.testing.assert_close(total, logits.gather(1, a.target[:, None])[:, 0], rtol=1e-5, atol=1e-5)
        with vx.ablate_heads(m, {1: [2]}):
            p = m(pixel_values=x).logits.double().softmax(-1).gather(1, a.target[:, None])[:, 0]
    torch.testing.assert_close(a.ablation[:, 1, 2], p - a.prob, rtol=1e-5, atol=1e-6)
    assert a.direct.abs().max() > 1e-3


@pytest.mark.parametrize("name", ["vit", "beit", "clip", "siglip"])
def test_patch_activations_equal_the_timm_twin(name):
    mk, tw = {**TWINS, "beit": (hf_beit, timm_beit_twin)}[name]
    m = mk()
    src, tgt = image(seed=1, batch=1), image(seed=2, batch=1)
    for site in ("residual", "head:1"):
        a = vx.patch_activations(m, src, tgt, layer=1, positions=[0, 5], site=site)
        b = vx.patch_activations(tw(m), src, tgt, layer=1, positions=[0, 5], site=site)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dinov2_lens_reads_out_as_the_model_and_says_why_not_per_token():
    m, x = hf_dinov2(), image()
    lens = vx.logit_lens(m, x)
    torch.testing.assert_close(lens.readout[:, -1], m(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(UnsupportedModelError, match="concat"):
        vx.logit_lens(m, x, tokens="all")
