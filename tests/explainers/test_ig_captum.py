"""integrated_gradients against captum's IntegratedGradients on the embedded model:
``rule="right"`` equals ``riemann_right``; our trapezoid rule is captum's
``riemann_trapezoid`` divided by (steps-1)/steps (captum's weights sum to that, ours to 1)."""

from __future__ import annotations

import pytest
import torch

import vit_explore as vx

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = vx.load_model("toy-shapes").eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model(x).argmax(-1)
    return model, x, t


@pytest.mark.parametrize("rule, method", [("right", "riemann_right"), ("trapezoid", "riemann_trapezoid")])
def test_integrated_gradients_vs_captum(toy, rule, method):
    model, x, t = toy
    steps = 6
    ours = vx.explain(model, x, "integrated_gradients", target=t, steps=steps, rule=rule, internal_batch_size=4)
    theirs = captum_attr.IntegratedGradients(model).attribute(x, target=t, n_steps=steps, method=method,
                                                              internal_batch_size=4)
    scale = 1.0 if rule == "right" else (steps - 1) / steps
    torch.testing.assert_close(ours.extras["attributions"].to(theirs.dtype) * scale, theirs, rtol=1e-4, atol=1e-6)
