"""The causal check of a SpRAy cluster: remove its hot patches (and, as a control, as many of its
coldest patches) from its members and from the rest of the class with ``vx.intervene``, and count
how often the prediction flips."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n ((nan, nan) when n == 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def mean_interval(v: np.ndarray) -> tuple[float, float]:
    """95% Student-t interval of a mean ((nan, nan) for fewer than 2 values)."""
    from scipy.stats import t

    v = np.asarray(v, dtype=np.float64)
    if len(v) < 2:
        return (math.nan, math.nan)
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return (float(v.mean() - half), float(v.mean() + half))


def flips(
    model: nn.Module,
    batch_of,
    indices: Sequence[int] | np.ndarray,
    patches: np.ndarray,
    target: np.ndarray,
    mode: str = "mean",
    batch_size: int = 64,
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one (gh, gw) patch set to images ``indices`` -> (flipped (n,) bool, delta_p (n,) float64).

    ``flipped``: the top-1 class after the intervention differs from the one before;
    ``delta_p``: change of the softmax probability of ``target`` (one class per image).
    """
    from ..interventions import intervene

    idx = np.asarray(indices, dtype=np.int64)
    flipped = np.zeros(len(idx), dtype=bool)
    delta = np.zeros(len(idx), dtype=np.float64)
    grid = torch.as_tensor(np.asarray(patches, dtype=bool))
    for s in range(0, len(idx), batch_size):
        part = idx[s:s + batch_size]
        x = batch_of(part)
        if device is not None:
            x = x.to(device)
        tg = torch.as_tensor(np.asarray(target[s:s + batch_size], dtype=np.int64), device=x.device)
        r = intervene(model, x, grid, mode=mode, target=tg)
        flipped[s:s + len(part)] = (r.probs.argmax(-1) != r.base_probs.argmax(-1)).cpu().numpy()
        delta[s:s + len(part)] = r.delta.double().cpu().numpy()
    return flipped, delta


def summary(flipped: np.ndarray, delta: np.ndarray) -> dict[str, object]:
    """Flip rate and mean probability change with their 95% intervals."""
    n = len(flipped)
    k = int(np.sum(flipped))
    return {
        "n": n,
        "flip_rate": k / n if n else math.nan,
        "flip_rate_ci": wilson(k, n),
        "delta_p": float(np.mean(delta)) if n else math.nan,
        "delta_p_ci": mean_interval(delta),
    }
