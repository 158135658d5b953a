"""attention_flow takes the head mean per layer in float64 without a float64 copy of all
heads; its maps equal, bit for bit, those of the former formulation restated here
(``torch.stack(attn, 1).double().mean(2)``)."""

from __future__ import annotations

import numpy as np
import torch

import vit_explore as vx
from vit_explore.capture.session import Needs, capture
from vit_explore.explainers._fusion import add_identity, row_normalize
from vit_explore.explainers._maxflow import layered_max_flow
from vit_explore.explainers.attention_flow import attention_flow


def old_attention_flow(trace):
    layout = trace.layout
    a = torch.stack([trace.attn_at(i) for i in range(trace.num_layers)], dim=1)
    a_hat = row_normalize(add_identity(a.double().mean(dim=2))).cpu().numpy()
    weights = layout.readout_weights(torch.float64).numpy()
    flows = np.stack([layered_max_flow(a_hat[b], weights, workers=1) for b in range(a_hat.shape[0])])
    flows = flows / flows.sum(axis=1, keepdims=True)
    return layout.patch_columns(torch.from_numpy(flows).to(dtype=torch.float32))


def test_attention_flow_equals_the_former_formulation():
    model = vx.load_model("toy-shapes").eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    trace = capture(model, x, Needs(attn=True))
    assert torch.equal(attention_flow(trace), old_attention_flow(trace))
