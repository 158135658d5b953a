"""Grad-CAM on ViT tokens, as jacobgil/pytorch-grad-cam computes it (Selvaraju et al., ICCV 2017; docs/methods.md §9)."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..capture.adapters import ViTInfo
from ..capture.attn_class import layer_blocks
from ..capture.classifier import ClassifierInfo, cam_layout, layer_pass
from ..capture.layout import TokenLayout
from ..capture.session import Needs, capture
from ..errors import InputError
from ..targets import TargetLike
from ._registry import ExplainerResult, register_explainer

_BLOCK = re.compile(r"^blocks\.(-?\d+)(\..+)?$")


def resolve_layer(layer: int | str, num_layers: int, names: tuple[str, ...] | None = None) -> str:
    """Module name of the Grad-CAM target layer.

    An int ``i`` means ``blocks[i].norm1`` (the tokens entering block ``i``; with ``names``, the
    block module of attention layer ``i``: CaiT's and XCiT's class-attention blocks come last);
    a string is a module name, in which ``blocks.-1`` counts from the end (``"blocks.-1"`` is the
    last block's output, a valid target for average-pool models).
    """
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise InputError(f"layer must be a block index or a module name, got {layer!r}")
    if isinstance(layer, int):
        if not -num_layers <= layer < num_layers:
            raise InputError(f"layer {layer} is out of range: the model has {num_layers} blocks (0..{num_layers - 1})")
        return f"{names[layer]}.norm1" if names else f"blocks.{layer % num_layers}.norm1"
    m = _BLOCK.match(layer)
    if m is None:
        return layer
    i = int(m.group(1))
    if not -num_layers <= i < num_layers:
        raise InputError(f"block {i} in {layer!r} is out of range: the model has {num_layers} blocks")
    return f"blocks.{i % num_layers}{m.group(2) or ''}"


def grad_cam_map(act: torch.Tensor, grad: torch.Tensor, layout: TokenLayout, name: str = "layer") -> torch.Tensor:
    """``ReLU(Σ_c α_c A_c)`` with ``α_c`` the gradient of channel ``c`` averaged over the grid.

    Args:
        act: token features (B, N, C) of the target layer; grad: ``dy/d act``, same shape.
        layout: drops the ``T`` prefix tokens and puts the patches on the (gh, gw) grid.

    Returns:
        (B, gh, gw), the CAM before pytorch-grad-cam's ``scale_cam_image`` (min-max, resize).
    """
    if act.ndim != 3 or act.shape[1] != layout.num_tokens:
        raise InputError(
            f"Grad-CAM needs a token sequence (B, {layout.num_tokens}, C) at its target layer, but {name!r} "
            f"outputs {tuple(act.shape)}; use a LayerNorm or block output such as 'blocks.-1.norm1'"
        )
    T = layout.num_prefix
    a = act[:, T:].reshape(act.shape[0], *layout.grid, -1)  # (B, gh, gw, C)
    g = grad[:, T:].reshape(act.shape[0], *layout.grid, -1)
    alpha = g.mean(dim=(1, 2))  # (B, C)
    return torch.einsum("bhwc,bc->bhw", a, alpha).clamp(min=0)


@register_explainer(
    "grad_cam",
    kind="model",
    class_specific=True,
    paper="Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization, ICCV 2017",
    reference="jacobgil/pytorch-grad-cam (GradCAM, target_layers=[model.blocks[-1].norm1], vit_reshape_transform)",
)
def grad_cam(
    model: nn.Module, x: torch.Tensor, *, target: TargetLike, info: ViTInfo | ClassifierInfo,
    layer: int | str | None = None,
) -> ExplainerResult:
    """Grad-CAM on the token features entering block ``layer`` (default: the last block).

    One forward and one backward of the target logit (``ClassifierOutputTarget``).
    After the last attention only the read-out tokens reach the head, so later layers of
    a CLS model give zero maps; for average-pool models ``layer="blocks.-1"`` (the last
    block's output) is valid too.

    Any other image classifier (CNN, hierarchical transformer): ``layer`` names a module
    whose output is (B, C, h, w), (B, h, w, C) or tokens (B, N, C) on a grid of the input
    (``capture.classifier.spatial_layout``); the default is the last such module whose grid
    positions get a gradient (ResNet ``layer4``, ConvNeXt ``stages.3``, Swin ``norm``). The
    map lies on that layer's (h, w) grid, and so does the Explanation's layout (cells of
    ``ceil(H/h) x ceil(W/w)`` pixels).

    Args:
        layer: block index (its ``norm1`` output) or a module name (``"blocks.-1.norm1"``);
            None: the last block for a ViT, the default above for another classifier.

    Returns:
        ``ExplainerResult`` with the raw (B, gh, gw) CAM and ``extras["layer"]``, the module used.
    """
    if isinstance(info, ClassifierInfo):
        name, act, grad, sp, logits, tgt = layer_pass(model, x, layer, target=target, info=info)  # type: ignore[arg-type]
        alpha = grad.mean(dim=(1, 2))  # (B, C)
        cam = torch.einsum("bhwc,bc->bhw", act, alpha).clamp(min=0)
        return ExplainerResult(
            cam, extras={"layer": name}, logits=logits, target=tgt, layout=cam_layout(sp, *x.shape[-2:])
        )
    names = layer_blocks(model, info.attns) if info.extra_blocks else None  # CaiT / XCiT: class blocks last
    if isinstance(layer, str):  # "blocks.-1…" counts model.blocks
        name = resolve_layer(layer, info.num_layers if names is None else len(model.blocks))  # type: ignore[arg-type]
    else:
        name = resolve_layer(-1 if layer is None else layer, info.num_layers, names)
    trace = capture(model, x, Needs(activations=(name,), activation_grads=True), target=target, info=info)
    cam = grad_cam_map(trace.activations[name], trace.activation_grads[name], trace.layout, name)
    return ExplainerResult(cam, extras={"layer": name}, logits=trace.logits, target=trace.target, layout=trace.layout)
