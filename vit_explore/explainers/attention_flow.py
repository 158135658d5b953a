"""Attention flow (Abnar & Zuidema, ACL 2020, arXiv:2005.00928; docs/methods.md §6)."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ..capture.attn_class import check_composable
from ..capture.session import Needs, Trace
from ._fusion import add_identity, check_start_layer, row_normalize
from ._registry import register_explainer


@register_explainer(
    "attention_flow",
    needs=Needs(attn=True),
    class_specific=False,
    paper="Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020",
    reference="samiraabnar/attention_flow (attention_graph_util.compute_flows)",
)
def attention_flow(trace: Trace, *, start_layer: int = 0, workers: int = 1) -> torch.Tensor:
    """Max-flow from the read-out token at the top to each input token.

    The graph has one node per (layer, token); the edge from token ``f`` in layer ``i`` to
    token ``t`` in layer ``i-1`` has capacity ``Â_{i-1}[f, t]`` with
    ``Â = rownorm(mean_h A + I)``. The source is the CLS node at the top (distilled:
    both prefix nodes with capacity 1/2 each; average-pool models: every patch node with
    capacity 1/P), which for a CLS model equals the reference. Flows to all input tokens
    are normalised to sum to one (reference step 4); the map is their patch entries.
    The max-flows are solved on integer-scaled capacities; see ``layered_max_flow`` for
    the error bound.

    Args:
        trace: uses ``trace.attn`` (L x (B, H, N, N)).
        start_layer: first block in the graph.
        workers: processes (forked) sharing the per-token max-flow problems; 1 runs them
            in this process, which is the safe choice inside threads and notebooks (and the
            faster one for a ViT-B/16 image, whose flows take less than a process start).

    Returns:
        (B, gh, gw) normalised flow.
    """
    from ._maxflow import layered_max_flow

    start = check_start_layer(start_layer, trace.num_layers)
    check_composable("attention_flow", trace.notes, trace.below, start)
    layout = trace.layout
    # head mean per layer in float64, (B, L', N, N): no float64 (or stacked) copy of all heads
    a = torch.stack([trace.attn_at(i).mean(dim=1, dtype=torch.float64) for i in range(start, trace.num_layers)], 1)
    a_hat = row_normalize(add_identity(a)).cpu().numpy()
    weights = layout.readout_weights(torch.float64).numpy()
    check_int("workers", workers, 1, 256, fix="processes, e.g. 1 or os.cpu_count()")
    per_image = weights.ndim == 2  # an attention-pool head's read-out row differs per image
    flows = np.stack([layered_max_flow(a_hat[b], weights[b] if per_image else weights, workers=workers)
                      for b in range(a_hat.shape[0])])
    flows = flows / flows.sum(axis=1, keepdims=True)
    return layout.patch_columns(torch.from_numpy(flows).to(device=a.device, dtype=torch.float32))
