"""Preprocessing for Hugging Face models: the user's image processor, or the default processor
of the model's type sized from ``model.config.image_size`` (``transformers`` is imported only here,
and only when a Hugging Face model's images are preprocessed)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import InputError


def default_processor(model: Any) -> Any:
    """The image processor class ``transformers`` maps the model's ``config.model_type`` to (its PIL
    variant), with its defaults (mean, std, resampling, rescale, crop ratio) and the output size set to
    ``config.image_size``. A processor that resizes then centre-crops keeps its resize/crop ratio."""
    import transformers
    from transformers.models.auto import image_processing_auto as auto

    cfg = model.config
    names = auto.IMAGE_PROCESSOR_MAPPING_NAMES.get(getattr(cfg, "model_type", ""))
    name = names.get("pil") or names.get("torchvision") if isinstance(names, dict) else names
    cls = getattr(transformers, name or "", None)
    if cls is None:
        raise InputError(
            f"no default image processor is known for model_type {getattr(cfg, 'model_type', None)!r}; "
            "pass processor=AutoImageProcessor.from_pretrained(...) or a preprocessed float tensor"
        )
    proc = cls()
    s = cfg.image_size
    h, w = (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
    kwargs: dict[str, Any] = {}
    crop = getattr(proc, "crop_size", None)
    if getattr(proc, "do_center_crop", False) and crop is not None and crop.height:
        ratio = (proc.size.shortest_edge or proc.size.height) / crop.height
        kwargs["crop_size"] = {"height": h, "width": w}
        kwargs["size"] = (
            {"shortest_edge": round(min(h, w) * ratio)} if proc.size.shortest_edge
            else {"height": round(h * ratio), "width": round(w * ratio)}
        )
    else:
        kwargs["size"] = {"height": h, "width": w}
    return cls(**kwargs)


def preprocess_hf(model: Any, images: list, processor: Any = None) -> tuple[torch.Tensor, str]:
    """(B, 3, H, W) float32 ``pixel_values`` of PIL images, and which preprocessing made them."""
    how = "processor"
    if processor is None:
        processor = default_processor(model)
        how = f"defaults of {type(processor).__name__} sized from config.image_size"
    try:
        out = processor(images=images, return_tensors="pt")
    except TypeError as e:
        raise InputError(f"processor {type(processor).__name__} did not take images=...: {e}") from None
    pv = out["pixel_values"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return pv.float(), f"{how}: {type(processor).__name__}"
