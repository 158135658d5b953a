"""Any Hugging Face ``transformers`` image classifier whose output has ``.logits`` (Swin, ConvNeXt,
ResNet, ...), seen as a plain classifier ``(B, 3, H, W) -> (B, classes)``.

``HFClassifier(model)`` owns nothing: its children are the model's own top-level children,
under their own names (so ``layer="swin.layernorm"`` names the same module in the view and in the
model), and calling it returns ``model(pixel_values=x).logits``. ``capture.classifier`` reads it
as any classifier: the model-agnostic methods (saliency, integrated gradients, occlusion, RISE,
Grad-CAM) and the pixel modes of ``vx.intervene`` run on it; the analysis grid's cell is the
total reduction of the model's last stage, read from its config (``patch_size · 2^(stages-1)``
for a Swin or a ConvNeXt), else 32.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..errors import UnsupportedModelError

__all__ = ["HFClassifier", "logits_of"]


def logits_of(out: object) -> object:
    """``out.logits`` for a Hugging Face ``ModelOutput`` (or any object with a tensor ``.logits``),
    else ``out`` unchanged."""
    lg = getattr(out, "logits", None)
    return lg if isinstance(lg, torch.Tensor) and not isinstance(out, torch.Tensor) else out


def _reductions(cfg) -> list[int]:
    """The stages' total strides from a config with ``patch_size`` and per-stage ``depths``."""
    p, depths = getattr(cfg, "patch_size", None), getattr(cfg, "depths", None)
    if not isinstance(p, int) or not isinstance(depths, (list, tuple)) or not depths:
        return [p] if isinstance(p, int) else []
    return [p * 2**i for i in range(len(depths))]


class HFClassifier(nn.Module):
    """A Hugging Face image classifier called as timm's are (see the module docstring).

    Attributes (what ``capture.classifier.inspect_classifier`` reads): ``num_classes``
    (``config.num_labels``), ``in_chans`` (``config.num_channels``), ``feature_info`` (the
    stages' reductions, where the config has them), ``vx_name`` (the model's class name),
    ``vx_kind`` / ``vx_reason`` (why no token-to-token attention method applies).
    """

    _active = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_hf", model)  # not a child: the children above are its modules
        cfg = model.config
        name = self.vx_name = type(model).__name__
        self.num_classes = int(getattr(cfg, "num_labels", 0) or 0)
        self.in_chans = int(getattr(cfg, "num_channels", 3) or 3)
        red = _reductions(cfg)
        if red:
            self.feature_info = [{"reduction": r} for r in red]
        attention = any("Attention" in type(m).__name__ for m in model.modules())
        if not attention:
            self.vx_kind = "cnn"
            self.vx_reason = f"{name} is not a transformer (no attention module), so it has no token-to-token attention"
        elif len(red) > 1:
            self.vx_kind = "hierarchical"
            self.vx_reason = (
                f"{name} is a hierarchical transformer (stage reductions {', '.join(map(str, red))}): its attention "
                "runs within windows or pooled stages of a changing grid, so it has no global token-to-token "
                "attention over one patch grid"
            )
        else:
            from .hf_parts import SUPPORTED

            self.vx_kind = "vit"
            self.vx_reason = (
                f"capture does not read the attention of {name} from transformers (it reads {', '.join(SUPPORTED)})"
            )

    @property
    def hf(self) -> nn.Module:
        return cast(nn.Module, self._hf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=x)
        lg = logits_of(out)
        if lg is out:
            raise UnsupportedModelError(
                f"{type(self._hf).__name__} returned {type(out).__name__} without .logits; the model-agnostic "
                "methods need an image classifier (a model whose output has .logits (B, classes))"
            )
        return cast(torch.Tensor, lg)
