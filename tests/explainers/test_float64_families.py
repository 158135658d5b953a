"""Every attention method (and saliency, integrated gradients, Grad-CAM, occlusion, RISE) on every
attention family against its float64 restatement
(``vit_explore.testing.float64``: the method's math written again over the attention, gradients
and weight-restated scores of the model run in float64; no call into the explainers or capture).

Families: the ViT variants of ``vit_explore.testing.tiny_vit`` (CLS, distilled, registers, GAP,
layer scale, non-square) and the rotary / relative-position families of ``tests/families.py``
(EVA-02, EVA-02 base, RoPE, RoPE + APE, DINOv3, BEiT, BEiT v2, relpos, srelpos). The family models
are sharpened (qkv x4, head x50) so that attention is peaked and the gradients are far from zero:
every term of every method shows in the map."""

import copy

import pytest
import torch

import vit_explore as vx
from vit_explore.testing import tiny_vit
from vit_explore.testing.float64 import (
    ATOL,
    FLOOR,
    METHODS64,
    RTOL,
    close_to,
    model64,
    reference64,
    run64,
)

from ..families import FAMILIES, family_model

VIT_VARIANTS = ["vanilla", "distilled", "registers", "gap", "layerscale", "nonsquare"]
ALL = [f"vit:{v}" for v in VIT_VARIANTS] + sorted(FAMILIES)


def sharp(name):
    """tiny_vit as it is (its logits already spread); a family model with qkv x4 and head x50."""
    if name.startswith("vit:"):
        return tiny_vit(name.split(":")[1])
    m = family_model(name)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(k in n for k in ("qkv.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
        m.get_classifier().weight.mul_(50.0)
    return m


_CACHE: dict = {}


def fam(name):
    if name not in _CACHE:
        m = sharp(name)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 3, *m.patch_embed.img_size, generator=g)
        with torch.no_grad():
            t = m(x).argsort(1)[:, -2]  # the runner-up class: not the argmax default
        _CACHE[name] = (m, x, t)
    return _CACHE[name]


@pytest.mark.parametrize("method", sorted(METHODS64))
@pytest.mark.parametrize("family", ALL)
def test_method_equals_its_float64_restatement(family, method):
    m, x, t = fam(family)
    C = m.num_classes
    # attn_grad_cam's ReLU zeroes the whole map for some classes: every class, at least one non-zero
    targets = [t] if method != "attn_grad_cam" else [torch.full_like(t, c) for c in range(C)]
    nonzero = False
    for tt in targets:
        # chefer_lrp's rules divide by near-zero sums, which amplifies float32 rounding (to ~1e-3 of
        # the map, test_chefer_lrp*.py bound that): its code is compared run on the float64 model
        mm, xx = (copy.deepcopy(m).double(), x.double()) if method == "chefer_lrp" else (m, x)
        ex = vx.explain(mm, xx, method, target=tt, **METHODS64[method])
        ref = reference64(m, x, method, tt)
        nonzero |= float(ref.abs().max()) > 0
        ok, err = close_to(ex.patch_map, ref, FLOOR.get(method, 0.0))
        assert ok, f"{method} on {family}: largest error {err:.2e} of the map's magnitude (rtol {RTOL}, atol {ATOL})"
    assert nonzero


@pytest.mark.parametrize("family", ["vit:vanilla", "dinov3", "beit", "srelpos"])
def test_restated_scores_are_the_models(family):
    """The restatement's own footing: softmax of the weight-restated scores equals the attention
    the float64 model used (so ag_cam's σ(S) is the model's S, bias and rotation included)."""
    m, x, t = fam(family)
    r = run64(model64(m), x, t)
    for a, s in zip(r.A, r.S):
        torch.testing.assert_close(s.softmax(-1), a, rtol=0, atol=1e-12)


def test_a_restatement_without_the_bias_is_not_exact():
    """The comparison can fail: ag_cam's restatement with the relative position bias left out of
    the scores disagrees with the explainer on BEiT."""
    import vit_explore.testing.float64_model as f64

    m, x, t = fam("beit")
    ex = vx.explain(m, x, "ag_cam", target=t)
    real = f64.scores64

    def no_bias(attn, xin, kwargs):
        table = attn.relative_position_bias_table
        N = xin.shape[1]
        bias = table[attn.relative_position_index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)
        return real(attn, xin, kwargs) - bias

    f64.scores64 = no_bias
    try:
        ref = reference64(m, x, "ag_cam", t)
    finally:
        f64.scores64 = real
    assert not close_to(ex.patch_map, ref)[0]


def test_batch_of_two_equals_each_image():
    m, x, t = fam("eva02")
    both = reference64(m, x, "chefer_generic", t)
    for b in range(2):
        one = vx.explain(m, x[b : b + 1], "chefer_generic", target=t[b : b + 1]).patch_map
        assert close_to(one, both[b : b + 1])[0]


def test_a_wrong_autograd_gradient_is_caught_not_used():
    """The restatements' input gradients are checked against a float64 central difference: a
    model whose backward is wrong (here: a pass-through that zeroes the gradient) is refused."""
    from vit_explore.testing.float64_perturb import GradientCheckError, saliency64

    class ZeroGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return torch.zeros_like(g)

    m, x, t = fam("vit:vanilla")
    m64 = model64(m)
    assert float(saliency64(m64, x, t).abs().max()) > 0  # the honest model passes
    h = m64.patch_embed.register_forward_hook(lambda mod, a, out: ZeroGrad.apply(out))
    try:
        with pytest.raises(GradientCheckError, match="finite-difference"):
            saliency64(m64, x, t)
    finally:
        h.remove()
