"""Turning user images into checked model inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError

ImageLike = Any  # torch.Tensor | PIL.Image.Image | np.ndarray | a list of those


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    from ._checks import check_model

    check_model(model)  # weights on the meta device: a clear error, not empty results
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def data_config(model: nn.Module) -> dict:
    """The model's own timm data config (input size, mean, std, interpolation, crop).

    A fixed-size model whose config names another size (e.g. a model built directly with a
    small ``img_size``) gets its own input size.
    """
    import timm.data

    cfg = dict(timm.data.resolve_data_config({}, model=model))
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    if img_size is not None and not getattr(model, "dynamic_img_size", False):
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if tuple(cfg["input_size"][1:]) != size:
            cfg["input_size"] = (cfg["input_size"][0], *size)
    return cfg


def preprocess(model: nn.Module, image: ImageLike, processor: Any = None) -> torch.Tensor:
    """Preprocess PIL images or HxWx3 uint8 arrays with the model's timm data config.

    Args:
        model: the timm model whose ``pretrained_cfg`` gives size, mean and std; or a Hugging
            Face model: its images go through ``processor`` when given, else the default
            processor of its ``model_type`` sized from ``config.image_size`` (``inputs_hf.py``;
            ``preprocessing_of`` says which).
        image: a PIL image, an (H, W, 3) uint8 array, or a list of them.
        processor: a Hugging Face image processor (Hugging Face models only).

    Returns:
        (B, 3, H, W) float32 tensor on the model's device.
    """
    import timm.data

    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if not images:
        raise InputError("no images given")
    from .capture.hf import is_hf, source_model

    hf = source_model(model)
    if processor is not None and not is_hf(hf):
        raise InputError("processor= applies to Hugging Face models only; timm models use their own data config")
    if is_hf(hf):
        from .inputs_hf import preprocess_hf

        pv, _ = preprocess_hf(hf, [_as_pil(im, i) for i, im in enumerate(images)], processor)
        return pv.to(_model_device_dtype(hf)[0])  # type: ignore[arg-type]  # an nn.Module: is_hf(hf)
    cfg = data_config(model)
    transform = timm.data.create_transform(**cfg, is_training=False)
    out = []
    for i, im in enumerate(images):
        out.append(transform(_as_pil(im, i)))
    device, _ = _model_device_dtype(model)
    return torch.stack(out).to(device)


def preprocessing_of(model: nn.Module, processor: Any = None) -> str:
    """Which preprocessing ``preprocess`` applies to ``model``'s images, in words."""
    from .capture.hf import is_hf, source_model

    hf = source_model(model)
    if not is_hf(hf):
        return "timm data config"
    if processor is not None:
        return f"processor: {type(processor).__name__}"
    from .inputs_hf import default_processor

    return f"defaults of {type(default_processor(hf)).__name__} sized from config.image_size"


def _as_pil(im: Any, i: int):
    """Image ``i`` of the input as an RGB PIL image (checked)."""
    from PIL import Image

    if isinstance(im, np.ndarray):
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=-1)
        if im.ndim != 3 or im.shape[-1] not in (3, 4):
            raise InputError(f"image {i}: expected an (H, W, 3) array, got shape {im.shape}")
        if im.dtype != np.uint8:
            raise InputError(
                f"image {i}: expected a uint8 array (0..255), got {im.dtype}; pass a float tensor "
                "that is already normalised, or convert with (img * 255).astype(np.uint8)"
            )
        im = Image.fromarray(im[..., :3])
    if not isinstance(im, Image.Image):
        raise InputError(f"image {i}: expected a PIL image or a uint8 array, got {type(im).__name__}")
    if im.width == 0 or im.height == 0:
        raise InputError(f"image {i} is empty ({im.width}x{im.height} pixels); give an image with pixels")
    return im.convert("RGB")


def as_batch(model: nn.Module, x: ImageLike, processor: Any = None) -> torch.Tensor:
    """A float tensor batch from a tensor, PIL image, uint8 array or a list of them
    (``processor``: a Hugging Face image processor, see ``preprocess``)."""
    if isinstance(x, torch.Tensor):
        if x.ndim == 3:
            x = x[None]
        return x
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        return torch.stack([t if t.ndim == 3 else t[0] for t in x])
    return preprocess(model, x, processor)


def check_tensor(info, x: torch.Tensor, model: nn.Module, finite: bool = True) -> torch.Tensor:
    """Validate a preprocessed batch against the model; move it to the model's device and dtype.

    ``finite=False`` skips the NaN/inf check (for a caller that checks it itself).

    Raises:
        InputError: not a float tensor, not (B, C, H, W), wrong channels, wrong size for a
            fixed-size model, a size that is not a multiple of the patch, or NaN/inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a float tensor (B, 3, H, W), got {type(x).__name__}; use vx.preprocess(model, image)")
    if not x.dtype.is_floating_point:
        raise InputError(
            f"expected a float tensor, got dtype {x.dtype}; preprocess images with vx.preprocess(model, image)"
        )
    if x.ndim != 4:
        raise InputError(f"expected a 4-d batch (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if B == 0:
        raise InputError("the batch is empty")
    if H == 0 or W == 0:
        raise InputError(f"the images are empty ({H}x{W} pixels)")
    if C != info.in_chans:
        raise InputError(f"the model takes {info.in_chans} channels but the input has {C} (shape {tuple(x.shape)})")
    if info.img_size is not None and (H, W) != info.img_size:
        raise InputError(
            f"the model takes {info.img_size[0]}x{info.img_size[1]} images but the input is {H}x{W}; resize it "
            "(vx.preprocess does) or create the model with dynamic_img_size=True"
        )
    ph, pw = info.patch_size
    if not info.dynamic_pad and (H % ph or W % pw):
        raise InputError(f"input size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
    if finite:
        check_finite(x)
    device, dtype = _model_device_dtype(model)
    return x.to(device=device, dtype=dtype if dtype.is_floating_point else x.dtype)


def check_finite(x: torch.Tensor) -> None:
    """Raise ``InputError`` if ``x`` has a NaN or an infinite value."""
    # a sum is finite when every value is (one cheap reduction); a non-finite sum of finite
    # but huge values falls through to the element-wise check
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise InputError("the input has NaN or infinite values")
