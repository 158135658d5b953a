"""Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021, arXiv:2103.15679; docs/methods.md §5)."""

from __future__ import annotations

import torch

from ..capture.attn_class import check_composable
from ..capture.session import Needs, Trace
from ._fusion import check_start_layer
from ._registry import register_explainer


@register_explainer(
    "chefer_generic",
    needs=Needs(attn=True, attn_grad=True),
    class_specific=True,
    paper="Chefer, Gur & Wolf, Generic Attention-model Explainability for Interpreting Bi-Modal and "
    "Encoder-Decoder Transformers, ICCV 2021",
    reference="hila-chefer/Transformer-MM-Explainability (Transformer_MM_explainability_ViT.ipynb: generate_relevance)",
)
def chefer_generic(trace: Trace, *, start_layer: int = 0) -> torch.Tensor:
    """Gradient-weighted attention rollout, without LRP and without row normalisation.

    ``R = I``; for every block ``l = start … L-1``: ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` (clamp per
    head, then the head mean) and ``R ← R + Ā_l R``. The map is the read-out row of ``R - I``
    over the patch columns (§5): for a class token the reference's row of ``R`` (``I`` lies in
    the prefix columns); for a mean pool it leaves out the constant ``1/P`` of the pooled tokens'
    own identity term, which otherwise swamps the gradient-weighted terms (an attention pool's row
    ``w`` is its attention to each token, not a constant: there the map is ``w R``). Only the read-out row is
    needed, so it is propagated as a vector from the last block down: ``d ← d + (w + d) Ā_l``
    (``w`` the read-out weights; the same product, O(N²) a block).

    Args:
        trace: uses ``trace.attn`` and ``trace.attn_grad`` (L x (B, H, N, N)).
        start_layer: first block included (the reference: 0).

    Returns:
        (B, gh, gw), raw (the reference min-max normalises after upsampling).
    """
    start = check_start_layer(start_layer, trace.num_layers)
    check_composable("chefer_generic", trace.notes, trace.below, start, probabilities=False)
    layout = trace.layout
    a_last = trace.attn_at(-1)
    B = a_last.shape[0]
    w = layout.readout_weights(a_last.dtype, a_last.device).expand(B, -1)  # (B, N)
    d = torch.zeros_like(w)  # w (R - I), accumulated without forming (or subtracting) the constant w I
    for i in range(trace.num_layers - 1, start - 1, -1):
        a_bar = (trace.attn_grad_at(i) * trace.attn_at(i)).clamp(min=0).mean(dim=1)  # (B, N, N)
        d = d + ((w + d)[:, None, :] @ a_bar)[:, 0]
    if layout.readout == "map":  # an attention pool's w is its attention to each token: part of its read-out (§1.3)
        d = d + w
    return layout.patch_columns(d)
