"""Which class to explain, and the scalar that gradient methods differentiate."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError

TargetLike = int | Sequence[int] | np.ndarray | torch.Tensor | None


def resolve_target(target: TargetLike, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into a (B,) long tensor of class indices on ``logits.device``.

    ``None`` means the top-1 class of each image; an int applies to every image;
    otherwise one int per image.

    Raises:
        InputError: wrong count, non-integer values, or a class outside ``0..C-1``.
    """
    B, C = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(v, str) for v in target)):
        raise InputError(
            f"target {target!r} is a class name, but this model has no class names to look it up in "
            "(vx.class_names(model)); give the class index instead"
        )
    if isinstance(target, bool):
        raise InputError(f"target must be a class index, got the bool {target}")
    if isinstance(target, numbers.Integral):
        if not 0 <= int(target) < C:
            raise InputError(f"target {int(target)} is out of range: the model has {C} classes (0..{C - 1})")
        t = torch.full((B,), int(target), dtype=torch.long, device=logits.device)
    else:
        try:
            arr = torch.as_tensor(np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target))
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise InputError(f"target must be None, a class index or one index per image, got {target!r} ({e})") from None
        if arr.ndim == 0:
            arr = arr.reshape(1).expand(B)
        if arr.dtype.is_floating_point or arr.dtype == torch.bool or arr.dtype.is_complex:
            raise InputError(f"target must hold integer class indices, got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.shape[0] != B:
            raise InputError(f"target has {arr.numel()} entries but the batch has {B} images; give one int or {B} ints")
        t = arr.to(device=logits.device, dtype=torch.long)
    bad = (t < 0) | (t >= C)
    if bool(bad.any()):
        v = int(t[bad][0])
        raise InputError(f"target {v} is out of range: the model has {C} classes (0..{C - 1})")
    return t


def target_score(logits: torch.Tensor, target: torch.Tensor, score: str = "logit") -> torch.Tensor:
    """Per-image scalar (B,) to differentiate: the target's logit, softmax probability or log-probability."""
    if score == "logit":
        out = logits
    elif score == "prob":
        out = logits.softmax(dim=-1)
    elif score == "log_prob":
        out = logits.log_softmax(dim=-1)
    else:
        raise InputError(f"score must be 'logit', 'prob' or 'log_prob', got {score!r}")
    return out.gather(1, target[:, None])[:, 0]


def class_index(model: torch.nn.Module, target: object) -> object:
    """``target`` with class names (a str, or a list holding strs) replaced by their indices in
    the model's class names (``vx.class_names(model)``); other values are returned as given.

    Raises:
        InputError: a name the model does not have (with the closest one), or a model
            without class names.
    """
    if not (isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(v, str) for v in target))):
        return target
    from .errors import suggest
    from .zoo import class_names

    names = class_names(model)
    if not names:
        return target  # resolve_target says the model has no class names

    def one(v: object) -> object:
        if not isinstance(v, str):
            return v
        if v not in names:
            fallback = names == [f"class {i}" for i in range(len(names))]
            why = " (this model carries no class names; give a class index)" if fallback else suggest(v, names)
            raise InputError(f"target {v!r} is not one of the model's class names{why}")
        return names.index(v)

    return one(target) if isinstance(target, str) else [one(v) for v in target]
