"""``Explanation``: the one result type every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .capture.layout import TokenLayout
from .errors import InputError

Normalize = Literal["minmax", "max", "maxabs", "none"]


@dataclass(frozen=True)
class Explanation:
    """A batch of explanation maps.

    Attributes:
        patch_map: (B, gh, gw) float32, the raw values exactly as the reference algorithm
            computes them, before any upsampling or normalisation.
        target: (B,) long, the explained class of each image (-1 for a callable target, whose
            scores are in ``extras["target_score"]``).
        logits: (B, C) logits of the unmodified input.
        method: method key; params: the parameters used (defaults filled in).
        layout: token layout (grid, prefix tokens, read-out rows, input size).
        extras: method-specific outputs (e.g. a pixel-level map, masks, per-mask scores).
    """

    patch_map: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    method: str
    params: dict[str, Any]
    layout: TokenLayout
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.patch_map.shape[0]

    def __getitem__(self, i: int | slice) -> Explanation:
        """The explanation of image ``i`` (a batch of one), or of a slice of images."""
        if isinstance(i, int):
            if not -len(self) <= i < len(self):
                raise IndexError(f"image {i} is out of range for a batch of {len(self)}")
            i = slice(i % len(self), i % len(self) + 1)
        extras = {
            k: v[i] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == len(self) else v
            for k, v in self.extras.items()
        }
        return replace(self, patch_map=self.patch_map[i], target=self.target[i], logits=self.logits[i], extras=extras)

    @property
    def probs(self) -> torch.Tensor:
        """Softmax probabilities (B, C)."""
        return self.logits.softmax(dim=-1)

    def heatmap(self, size: tuple[int, int] | int | None = None, normalize: Normalize = "minmax") -> torch.Tensor:
        """Pixel-level map (B, H, W), normalised per image.

        A method that computes its own pixel map (``extras["pixel_map"]``: saliency,
        integrated gradients, RISE, ViT-CX) gives that map (resized bilinearly only when
        ``size`` differs from the input); a patch-level map is upsampled bilinearly with
        ``align_corners=False``.

        Args:
            size: output (H, W); default the input image size.
            normalize: ``"minmax"`` to [0, 1] (a constant map becomes 0), ``"max"`` divides by
                the maximum, ``"maxabs"`` by the largest magnitude (signed maps), ``"none"``.
        """
        if size is None:
            size = self.layout.input_size
        elif isinstance(size, int):
            size = (size, size)
        pixel = self.extras.get("pixel_map")
        own = (
            isinstance(pixel, torch.Tensor) and pixel.ndim == 3 and pixel.shape[0] == len(self)
            and tuple(pixel.shape[1:]) == tuple(self.layout.input_size)
        )
        m = pixel if own and isinstance(pixel, torch.Tensor) else self.patch_map
        if own and tuple(m.shape[1:]) == tuple(size):
            return normalize_maps(m.float(), normalize)
        up = F.interpolate(m[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        return normalize_maps(up, normalize)


def normalize_maps(maps: torch.Tensor, how: Normalize = "minmax") -> torch.Tensor:
    """Normalise each map of a (B, ...) batch separately."""
    flat = maps.reshape(maps.shape[0], -1)
    if how == "none":
        return maps
    if how == "minmax":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        span = hi - lo
        out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(flat))
    elif how in ("max", "maxabs"):
        m = flat.abs().max(dim=1, keepdim=True).values if how == "maxabs" else flat.max(dim=1, keepdim=True).values
        out = torch.where(m != 0, flat / torch.where(m != 0, m, torch.ones_like(m)), torch.zeros_like(flat))
    else:
        raise InputError(f"normalize must be 'minmax', 'max', 'maxabs' or 'none', got {how!r}")
    return out.reshape(maps.shape)
