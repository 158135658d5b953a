"""Static pictures of explanations: colormaps, overlays and labelled grids as PNG (PIL only)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .errors import InputError

# Anchor colours (0..1) of perceptual colormaps, interpolated to 256 entries.
_ANCHORS: dict[str, list[tuple[float, float, float]]] = {
    "inferno": [(0.0015, 0.0005, 0.0139), (0.2582, 0.0386, 0.4065), (0.5783, 0.148, 0.4044),
                (0.8651, 0.3168, 0.2261), (0.9876, 0.6453, 0.0399), (0.9884, 0.9984, 0.6449)],
    "viridis": [(0.267, 0.0049, 0.3294), (0.2297, 0.3224, 0.5457), (0.1277, 0.5669, 0.5506),
                (0.3694, 0.7889, 0.3825), (0.9932, 0.9062, 0.1439)],
    "gray": [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)],
    # diverging, for signed maps: blue (negative) - white (0) - red (positive)
    "RdBu": [(0.0196, 0.1882, 0.3804), (0.2627, 0.5765, 0.7647), (0.9686, 0.9686, 0.9686),
             (0.8392, 0.3765, 0.302), (0.4039, 0.0, 0.1216)],
}
COLORMAPS = tuple(_ANCHORS)


def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a colormap."""
    if name not in _ANCHORS:
        raise InputError(f"unknown colormap {name!r}; choose from {', '.join(COLORMAPS)}")
    anchors = np.asarray(_ANCHORS[name])
    pos = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(t, pos, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut * 255).astype(np.uint8)


def apply_colormap(values: np.ndarray, name: str = "inferno", signed: bool = False) -> np.ndarray:
    """Map an (H, W) array to (H, W, 3) uint8. Unsigned maps are min-max scaled to [0, 1];
    signed maps are scaled by their largest magnitude so that 0 sits at the colormap's centre."""
    v = np.asarray(values, dtype=np.float64)
    if signed:
        m = np.abs(v).max()
        v = 0.5 + 0.5 * (v / m if m > 0 else v)
    else:
        lo, hi = v.min(), v.max()
        v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    idx = np.clip(np.round(v * 255), 0, 255).astype(np.int64)
    return colormap_lut(name)[idx]


def to_uint8_image(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Undo the model's normalisation: (3, H, W) or (B, 3, H, W) tensor -> (H, W, 3) / (B, H, W, 3) uint8."""
    from .inputs import data_config

    cfg = data_config(model)
    mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(3, 1, 1)
    img = (x.detach() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return img.movedim(-3, -1).cpu().numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, cmap: str = "inferno", alpha: float = 0.5,
            signed: bool = False) -> np.ndarray:
    """Blend a colour-mapped (H, W) heatmap over an (H, W, 3) uint8 image of the same size."""
    if image.shape[:2] != heatmap.shape:
        raise InputError(f"image is {image.shape[:2]} but the heatmap is {heatmap.shape}; upsample it first")
    colour = apply_colormap(heatmap, cmap, signed).astype(np.float64)
    out = (1 - alpha) * image.astype(np.float64) + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def to_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, scale: int = 2,
         columns: int | None = None) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images, each upscaled ``scale`` times, with a title line above."""
    from PIL import Image, ImageDraw

    if not images:
        raise InputError("no images to tile")
    h, w = images[0].shape[:2]
    cols = columns or len(images)
    rows = -(-len(images) // cols)
    th = 14
    cw, ch = w * scale, h * scale + th
    canvas = Image.new("RGB", (cols * cw, rows * ch), "white")
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        tile = Image.fromarray(im).resize((cw, h * scale), Image.Resampling.NEAREST)
        canvas.paste(tile, (c * cw, r * ch + th))
        if titles is not None:
            draw.text((c * cw + 2, r * ch + 1), str(titles[i])[: cw // 6], fill="black")
    return np.asarray(canvas)


def show(image: np.ndarray):
    """An IPython display object for an (H, W, 3) uint8 image."""
    from IPython.display import Image as IPImage

    return IPImage(data=to_png(image))
