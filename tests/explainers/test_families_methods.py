"""Methods on the attention families: AttnLRP's product rule for gated MLPs and its halving site,
and every attention method on every family: a finite map on the patch grid or the specific error."""

import pytest
import torch

import vit_explore as vx
from vit_explore.capture import inspect_vit
from vit_explore.capture.attn_timm import TimmAttention
from vit_explore.capture.rules import lrp_rules
from vit_explore.errors import UnsupportedModelError
from vit_explore.testing import tiny_vit

from ..conftest import input_for
from ..families import FAMILIES, family_input, family_model


def test_gated_mlp_takes_the_uniform_rule():
    """GluMlp ``h = act(x2) * x1`` (the two halves of ``fc1``'s output): with the rules on, the
    relevance (value x gradient) at each half of ``fc1``'s own output is half the relevance at
    ``h``, element-wise (the SiLU's identity rule passes it through unchanged)."""
    m = family_model("eva02")
    x = family_input(m)
    mlp = m.blocks[1].mlp
    got = {}

    def keep(name):
        def hook(mod, args, out):
            out.retain_grad()
            got[name] = out

        return hook

    # registered before the rules' hooks: these see (and keep) fc1's own output
    hs = [mlp.fc1.register_forward_hook(keep("fc1")), mlp.drop1.register_forward_hook(keep("h"))]
    try:
        with lrp_rules(m, inspect_vit(m), variant="cp"), torch.enable_grad():
            m(x.clone().requires_grad_(True))[:, 1].sum().backward()
    finally:
        for h in hs:
            h.remove()
    r_h = (got["h"] * got["h"].grad).detach()
    r_fc1 = (got["fc1"] * got["fc1"].grad).detach()
    r1, r2 = r_fc1.chunk(2, dim=-1)
    assert r_h.abs().max() > 0
    tol = 1e-5 * float(r_h.abs().max())  # float32 rounding of tiny entries
    torch.testing.assert_close(r1, r_h / 2, rtol=1e-4, atol=tol)
    torch.testing.assert_close(r2, r_h / 2, rtol=1e-4, atol=tol)


def test_attnlrp_halving_at_proj_input_equals_halving_at_qkv(monkeypatch):
    """Where ``qkv`` is not a called module the q/k/v halving moves to ``proj``'s input: on a
    model where both are possible, the two give the same relevance."""
    model = tiny_vit("layerscale")
    x = input_for(model, batch=2)
    at_qkv = vx.explain(model, x, "attn_lrp", variant="attnlrp").extras["pixel_map"]
    monkeypatch.setattr(TimmAttention, "qkv_called", staticmethod(lambda attn: False))
    at_proj = vx.explain(model, x, "attn_lrp", variant="attnlrp").extras["pixel_map"]
    assert at_qkv.abs().max() > 0
    torch.testing.assert_close(at_proj, at_qkv, rtol=1e-4, atol=1e-6)


def test_attn_lrp_refuses_other_norm_layers():
    m = family_model("rope")
    m.blocks[0].norm1 = torch.nn.GroupNorm(1, 64)  # not a LayerNorm: no AttnLRP rule here
    with pytest.raises(UnsupportedModelError, match="GroupNorm.*LayerNorm"):
        vx.explain(m, family_input(m), "attn_lrp")


METHODS = ["raw_attention", "rollout", "attention_flow", "ag_cam", "attn_grad_cam", "chefer_generic",
           "attn_lrp", "tam", "vit_cx", "chefer_lrp"]
REFUSED: dict[str, str] = {}  # method -> the specific error expected on every family here (none today)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_method_gives_a_map_on_the_grid_or_the_specific_error(family):
    m = family_model(family)
    x = family_input(m, batch=1)
    ph, pw = m.patch_embed.patch_size
    grid = (x.shape[2] // ph, x.shape[3] // pw)
    for method in METHODS:
        kw = {"steps": 3} if method == "tam" else {}
        if method in REFUSED:
            with pytest.raises(UnsupportedModelError, match=REFUSED[method]):
                vx.explain(m, x, method, **kw)
            continue
        ex = vx.explain(m, x, method, **kw)
        assert ex.patch_map.shape == (1, *grid), method
        assert torch.isfinite(ex.patch_map).all(), method
