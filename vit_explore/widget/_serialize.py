"""Compact wire formats of the Explorer (decoded by js/src/decode.ts).

* Attention: one block at a time, ``(heads+1, rows, cols)`` uint8 with one float32 scale per
  row (``value = u8 / 255 * scale``, ``scale`` = the row's maximum). Row 0 is the read-out
  row (CLS), row ``1 + p`` the query row of patch ``p``; columns are the patches; the extra
  last head is the mean over heads. Per-row scaling keeps each query's structure: the
  rounding error of an entry is at most ``scale / 510``.
* Maps: float32 ``(gh, gw)`` bytes (a few hundred bytes; no quantisation needed).
* Images: un-normalised RGB uint8 ``(H, W, 3)`` bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import torch

from ..capture.layout import TokenLayout


def quantize_rows(a: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Quantise ``(..., cols)`` non-negative values to uint8 with one scale per row.

    Returns:
        ``(q, scales)``: ``q`` uint8 with ``a``'s shape, ``scales`` float32 ``a.shape[:-1]``
        (the row maxima; 0 for an all-zero row). Negative values clip to 0.
    """
    x = a.detach().to(torch.float32).cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float32)
    x = np.clip(x, 0.0, None)
    scales = x.max(axis=-1).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    q = np.rint(x / safe * 255.0).clip(0, 255).astype(np.uint8)
    return q, scales


def dequantize_rows(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of ``quantize_rows`` (what the front end computes), float32."""
    return q.astype(np.float32) / 255.0 * scales.astype(np.float32)[..., None]


def attention_layer_rows(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """One block's attention of one image, as the rows the Explorer shows.

    Args:
        attn: (H, N, N) attention probabilities.
        layout: the token layout of the pass.

    Returns:
        (H + 1, 1 + P, P): heads then their mean; row 0 the read-out row (layout rule: CLS,
        distilled mean or patch average), rows 1.. the patch query rows; patch columns.
    """
    a = torch.cat([attn, attn.mean(dim=0, keepdim=True)], dim=0)  # (H+1, N, N)
    readout = layout.patch_columns(layout.readout_row(a)).reshape(a.shape[0], 1, -1)  # (H+1, 1, P)
    T = layout.num_prefix
    patch_rows = a[:, T:, T:]  # (H+1, P, P)
    return torch.cat([readout, patch_rows], dim=1)


def float_map(values: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """A (gh, gw) map as ``{data: bytes, shape, dtype}`` (float32)."""
    v = values.detach().to(torch.float32).cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = np.ascontiguousarray(v, dtype=np.float32)
    return {"data": v.tobytes(), "shape": list(v.shape), "dtype": "float32"}


def display_image(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Un-normalise one (3, H, W) model input into an (H, W, 3) uint8 image for display."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    img = (x.detach().to(torch.float32).cpu() * s + m).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def jsonable_state(value: Any) -> Any:
    """Replace bytes anywhere inside ``value`` by ``{"$b64": ...}`` (decoded by the standalone shim)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": b64(value)}
    if isinstance(value, dict):
        return {str(k): jsonable_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable_state(v) for v in value]
    return value


def script_json(obj: Any) -> str:
    """``obj`` as JSON to put inside a ``<script>`` element of an HTML page.

    JSON's own escapes for <, > and &: no "</script>" or "<!--" can end or bend the script
    element, and ``JSON.parse`` reads them back unchanged.
    """
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
