"""Argument checks shared by every public function, and the one check of a model's output.

Each check names the value, what it got and how to fix it, and raises ``InputError`` (a
``ValueError``), so a caller never sees a ``TypeError`` from deep inside torch or numpy.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._modules import submodules
from .errors import InputError, NonFiniteOutputError, UnsupportedModelError, suggest

SEED_MAX = 2**63 - 1
MAX_PASSES = 1_000_000  # a count of forward passes (masks, integration steps) beyond this cannot finish  # torch.Generator.manual_seed takes a signed 64-bit seed


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None, *, fix: str = "") -> int:
    """``v`` as an int in ``lo..hi`` (inclusive); bools, floats and strings are refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InputError(f"{name} must be an int, got {type(v).__name__} {_show(v)}{'; ' + fix if fix else ''}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        raise InputError(f"{name} must be in {rng}, got {v}{'; ' + fix if fix else ''}")
    return v


def check_float(name: str, v: Any, lo: float | None = None, hi: float | None = None, *,
                open_lo: bool = False, fix: str = "") -> float:
    """``v`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InputError(f"{name} must be a number, got {type(v).__name__} {_show(v)}{'; ' + fix if fix else ''}")
    f = float(v)
    if not math.isfinite(f):
        raise InputError(f"{name} must be a finite number, got {f}{'; ' + fix if fix else ''}")
    if (lo is not None and (f < lo or (open_lo and f == lo))) or (hi is not None and f > hi):
        left = "(" if open_lo else "["
        rng = f"{left}{lo}, {hi}]" if hi is not None else f"{'>' if open_lo else '>='} {lo}"
        raise InputError(f"{name} must be in {rng}, got {f}{'; ' + fix if fix else ''}")
    return f


def check_bool(name: str, v: Any) -> bool:
    """``v`` as a bool: True/False (or a numpy bool); the string ``'False'`` is not false-y here."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    raise InputError(f"{name} must be True or False, got {type(v).__name__} {_show(v)}")


def check_choice(name: str, v: Any, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        hint = suggest(v, choices) if isinstance(v, str) else ""
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_show(v)}{hint}")
    return v


def check_seed(name: str, v: Any) -> int:
    """A seed: an int in ``0..2**63-1``."""
    return check_int(name, v, 0, SEED_MAX, fix="pass an int seed such as 0")


def check_optional_int(name: str, v: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    return None if v is None else check_int(name, v, lo, hi)


def as_tensor(name: str, v: Any) -> torch.Tensor:
    """``v`` (a tensor, array, number or nested list of numbers / bools) as a CPU tensor."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    try:
        import numpy as np

        arr = np.asarray(v)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"dtype {arr.dtype}")
        return torch.as_tensor(arr)
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise InputError(f"{name} must be numbers or bools (a tensor, an array or a list), got "
                         f"{type(v).__name__} {_show(v)} ({e})") from None


def as_list(name: str, v: Any) -> list[Any]:
    """``v`` (a list, tuple, range, array or tensor) as a list; other values are refused."""
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
        raise InputError(f"{name} must be a list of ints, got {type(v).__name__} {_show(v)}")
    return list(v)


# --------------------------------------------------------------------------- by annotation


def check_annotated(name: str, v: Any, ann: Any) -> None:
    """Check ``v`` against a parameter annotation (int, float, bool, str, None, Literal,
    unions and sequences of those); annotations it does not know are not checked."""
    if not _matches(v, ann):
        raise InputError(f"parameter {name!r} must be {_describe(ann)}, got {type(v).__name__} {_show(v)}")
    if name == "seed" and isinstance(v, numbers.Integral) and not isinstance(v, bool):
        check_seed(name, v)
    if isinstance(v, float) and not math.isfinite(v):
        raise InputError(f"parameter {name!r} must be a finite number, got {v}")


def _matches(v: Any, ann: Any) -> bool:
    origin = typing.get_origin(ann)
    if ann is typing.Any or ann is inspect.Parameter.empty:
        return True
    if ann is None or ann is type(None):
        return v is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return any(v == a and type(v) is type(a) for a in typing.get_args(ann))
    if ann is bool:
        return isinstance(v, bool)
    if ann is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if ann is float:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if ann is str:
        return isinstance(v, str)
    if origin in (tuple, list, Sequence, typing.Sequence) or ann in (tuple, list):
        if not isinstance(v, (tuple, list)):
            return False
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(ann):
            return len(v) == len(args) and all(_matches(e, a) for e, a in zip(v, args))
        return not args or all(_matches(e, args[0]) for e in v)
    if isinstance(ann, type):
        return isinstance(v, ann)
    return True  # an annotation this checker does not model




def _describe(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if ann is None or ann is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(ann)))
    if origin is not None:
        return f"a {origin.__name__} of {', '.join(_describe(a) for a in typing.get_args(ann) if a is not Ellipsis)}"
    return getattr(ann, "__name__", str(ann))


def param_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s resolved parameter annotations ({} when they cannot be resolved)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable hint is simply not checked
        return {}


# --------------------------------------------------------------------------- model and output


def check_model(model: Any) -> Any:
    """An ``nn.Module``'s weights hold data (not on the meta device); other objects pass
    through (``inspect_vit`` says what it expects)."""
    if not isinstance(model, nn.Module):
        return model  # inspect_vit says what is expected
    # ``submodules``: a plain walk (``model.parameters()`` costs ~10x more: 0.7 ms on the toy ViT, every call)
    if any(t is not None and t.is_meta for m in submodules(model) for t in m._parameters.values()):
        raise UnsupportedModelError(
            "the model's weights are on the meta device (no data): load or materialise them first, "
            "e.g. model.to_empty(device='cpu') then load_state_dict(...), or vx.load_model(...)"
        )
    return model


def checked_output(out: Any, x: torch.Tensor | None = None) -> Any:
    """The one check of a model's output: logits (B, C) with only finite values.

    Every forward pass vit_explore runs goes through here, so a model that returns NaN or
    inf (NaN weights, an overflowing input such as 3e38 pixels) is reported, never turned into
    a class-0 target or a NaN map. Non-tensors are returned as they are (their callers say
    what they expected). With ``x``, the input fed: a NaN or infinite pixel in it is
    reported as the input's own error (``check_finite``)."""
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not out.is_meta:
        with torch.no_grad():
            ok = bool(torch.isfinite(out).all())
        if not ok:
            if x is not None:
                from .inputs import check_finite

                check_finite(x)
            bad = (~torch.isfinite(out.detach())).reshape(out.shape[0], -1).any(-1).nonzero().reshape(-1).tolist()
            raise NonFiniteOutputError(
                f"the model's output is not finite (NaN or inf in the logits of image(s) {bad[:8]}): check the "
                "weights for NaN/inf (a damaged checkpoint?) and that the input is preprocessed (huge pixel "
                "values overflow); nothing was computed from it"
            )
    return out
