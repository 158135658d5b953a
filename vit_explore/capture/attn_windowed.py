"""SAM ViT (``timm.models.vision_transformer_sam``): windowed and global blocks with decomposed
relative positions, then a convolutional neck. Which token-attention methods are defined there.

Most blocks attend within ``window_size x window_size`` windows of the (padded) patch grid: their
attention is block-diagonal over windows, not N x N over all tokens, and rollout-type products
through them would have to invent the zero blocks and the padding. Only the global blocks
(``window_size == 0``) attend over all tokens. Above all, the classifier reads no token row: the
last tokens go through the neck (a 1x1 and a 3x3 convolution with LayerNorm2d) and then a global
pool, so the 3x3 convolution mixes neighbouring tokens after the last attention, and there is no
read-out row for the attention methods to start from. Defined on SAM ViT: the model-agnostic
methods (saliency, integrated gradients, occlusion, RISE, Grad-CAM on any layer, e.g. a neck
layer) and the pixel modes of ``vx.intervene``; token-attention methods are refused with
``windowed_reason``.
"""

from __future__ import annotations

from torch import nn


def windowed_reason(model: nn.Module) -> str | None:
    """Why token-to-token attention methods are not defined for a windowed-attention ViT, or None."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module) or not len(list(blocks.children())):
        return None
    found = [getattr(b, "window_size", None) for b in blocks.children()]
    if any(not isinstance(s, int) for s in found):
        return None
    sizes = [int(s) for s in found if isinstance(s, int)]
    if not any(s > 0 for s in sizes):
        return None
    windowed = [i for i, s in enumerate(sizes) if s > 0]
    global_ = [i for i, s in enumerate(sizes) if s == 0]
    name = type(model).__name__
    why = (
        f"{name}'s blocks {', '.join(map(str, windowed))} attend within {sizes[windowed[0]]}x{sizes[windowed[0]]} "
        "windows of the patch grid (block-diagonal, not N x N over all tokens)"
        + (f"; only blocks {', '.join(map(str, global_))} attend globally" if global_ else "")
    )
    if isinstance(getattr(model, "neck", None), nn.Module):
        why += (
            ", and its classifier reads no token: the tokens pass a convolutional neck (its 3x3 convolution mixes "
            "neighbouring tokens) before the global pool, so there is no read-out row"
        )
    return why
