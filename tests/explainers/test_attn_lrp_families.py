"""attn_lrp on the attention families against a float64 forward with the rules applied by hand
(``vit_explore.testing.float64_attn_lrp``):
LayerNorm (every one, q_norm / k_norm / scale norms included) with sigma detached, the activation's
identity rule, a gated MLP's product with the uniform rule (each factor's gradient halved), the
rotary embedding and the score bias as plain linear maps / constants, layer scale as a product with
a constant; CP-LRP detaches A, AttnLRP halves A and q, k, v."""

import pytest
import torch

import vit_explore as vx
from vit_explore.testing.float64_attn_lrp import attn_lrp_pixels64

from ..families import FAMILIES, family_input, family_model


def replica(model, x, target, rule):
    """Pixel relevance (B, H, W), float64."""
    return attn_lrp_pixels64(model, x, target, rule)


@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attn_lrp_matches_the_float64_replica(family, rule):
    model = family_model(family)
    x = family_input(model, batch=2)
    ex = vx.explain(model, x, "attn_lrp", variant=rule)
    ref = replica(model, x, ex.target, rule)
    got = ex.extras["pixel_map"].double()
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
