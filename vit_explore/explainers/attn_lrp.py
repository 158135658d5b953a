"""AttnLRP / CP-LRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation
for Transformers", ICML 2024, arXiv:2402.05602; docs/methods.md §11), for timm ViTs, written from
the paper's rules as modified gradients: relevance = input x modified gradient.

Rules (scoped to the call by ``capture.rules.lrp_rules``; nothing global is patched):
LayerNorm -> identity rule (stop-grad through sigma; likewise the norm of ``vx.zero_shot``'s L2
normalisation), GELU -> identity rule (gradient
``f(x)/x``), attention -> CP-LRP (``variant="cp"``, default for ViTs: probabilities detached,
relevance only through ``v``) or AttnLRP (``"attnlrp"``: uniform rule through both matmuls,
q, k gradients / 4, v / 2), Linear / patch-embedding Conv2d -> epsilon (plain gradient x
input) or LRP-gamma (``gamma_linear``, ``gamma_conv`` > 0, zennit's ``Gamma`` rule).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .._checks import checked_output
from ..capture.adapters import ViTInfo, layout_for
from ..capture.rules import lrp_rules
from ..errors import CaptureError
from ..targets import TargetLike, resolve_target, target_score
from ._registry import ExplainerResult, register_explainer


@register_explainer(
    "attn_lrp",
    kind="model",
    class_specific=True,
    paper="Achtibat et al., AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers, ICML 2024",
    reference="rachtibat/LRP-eXplains-Transformers (lxt.efficient, vit_torch.cp_LRP); rules re-implemented for timm",
)
def attn_lrp(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: TargetLike,
    info: ViTInfo,
    variant: Literal["cp", "attnlrp"] = "cp",
    gamma_linear: float = 0.0,
    gamma_conv: float = 0.0,
    rules: bool = True,
) -> ExplainerResult:
    """LRP relevance of every input pixel for the target logit, as input x modified gradient.

    Args:
        x: (B, 3, H, W).
        target: class per image (None: top-1), or a callable score (``vit_explore.targets``): the
            rules act inside the model, the callable is differentiated as it is, so the relevance
            entering the model's output is ``output * d score / d output``.
        variant: ``"cp"`` (CP-LRP, the recommendation for ViTs) or ``"attnlrp"``.
        gamma_linear, gamma_conv: LRP-gamma on every Linear / Conv2d (0: epsilon rule).
        rules: False turns every rule off (plain gradient x input, a baseline).

    Returns:
        ``ExplainerResult``: ``patch_map`` (B, gh, gw) = the pixel relevance summed within each
        patch (signed); ``extras["pixel_map"]`` (B, H, W) = ``sum_c x * grad`` (signed; LXT
        normalises it by its largest magnitude for display).
    """
    # autograd on for the pass even inside the caller's no_grad() / inference_mode() (restored after)
    with torch.inference_mode(False), torch.enable_grad(), lrp_rules(
        model, info, variant=variant, gamma_linear=gamma_linear, gamma_conv=gamma_conv, enabled=rules
    ):
        xin = x.detach().clone().requires_grad_(True)
        logits = checked_output(model(xin), x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise CaptureError("expected the model to return logits (B, num_classes)")
        tgt = resolve_target(target, logits)
        y = target_score(logits, tgt).sum()  # a callable target: relevance starts at its gradient x output
        (grad,) = torch.autograd.grad(y, xin)
    pixel = (xin.detach() * grad).sum(dim=1)
    _B, _, H, W = x.shape
    layout = layout_for(info, H, W)
    return ExplainerResult(
        layout.pool_pixels(pixel),
        extras={"pixel_map": pixel},
        logits=logits.detach(),
        target=tgt,
        layout=layout,
    )
