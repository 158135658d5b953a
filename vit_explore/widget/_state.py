"""The one validation layer for values that reach the Explorer from the front end.

* Trait updates (``Explorer.set_state``): only the view traits in ``FRONTEND_WRITABLE`` may
  be set by the front end; each value passes the trait's type and its ``@validator``. Every
  rejection is a ``traitlets.TraitError``, so ipywidgets rolls the whole update back and
  nothing invalid reaches a job or the export.
* Custom messages (``parse_message``): checked into plain ints and lists before any job is
  scheduled; a malformed message is reported, never run.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import traitlets as t

from ..errors import InputError, UnknownMethodError, UnsupportedModelError

#: Traits the front end sets (view state). Everything else is computed by Python and only
#: sent to the front end; an update of it from the front end is refused. A new trait the
#: front end sets must be listed here (tests/widget/test_state.py reads js/src to check).
FRONTEND_WRITABLE = frozenset({
    "method", "layer", "head", "query", "target", "image_index", "opacity", "colormap", "show_grid",
    "smooth", "brushed", "mode", "keep", "compare", "compare_methods", "cx_mask", "recompute",
    "pinned", "tour_step",
})


class StateError(InputError, t.TraitError):
    """An invalid Explorer state value (from Python or the front end). A ``TraitError``, so
    ipywidgets' ``set_state`` rolls back the update that carried it."""


class UnknownMethodStateError(UnknownMethodError, t.TraitError):
    """A method key the Explorer does not offer, as a ``TraitError``."""


class UnsupportedModelStateError(UnsupportedModelError, t.TraitError):
    """A value the model cannot support (``drop`` on a CNN), as a ``TraitError``."""


def as_state_error(exc: BaseException) -> t.TraitError:
    """``exc`` as a ``TraitError`` that keeps its project class and message."""
    if isinstance(exc, t.TraitError):
        return exc
    if isinstance(exc, UnknownMethodError):
        return UnknownMethodStateError(str(exc))
    if isinstance(exc, UnsupportedModelError):
        return UnsupportedModelStateError(str(exc))
    return StateError(str(exc))


def validator(*names: str) -> Callable[[Callable[..., Any]], Any]:
    """``traitlets.validate(*names)`` whose every failure is a ``TraitError`` (see module doc)."""

    def deco(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def wrapped(self: Any, proposal: Any) -> Any:
            try:
                return fn(self, proposal)
            except Exception as e:  # noqa: BLE001 - every failure becomes a rollback
                raise as_state_error(e) from None

        return t.validate(*names)(wrapped)

    return deco


def check_update(sync_data: Mapping[str, Any]) -> None:
    """Refuse a front-end update of a trait the front end does not own."""
    if not isinstance(sync_data, Mapping):
        raise StateError(f"a state update must be a mapping, got {type(sync_data).__name__}")
    bad = sorted(str(k) for k in sync_data if k not in FRONTEND_WRITABLE)
    if bad:
        raise StateError(
            f"the front end may not set {', '.join(bad)} (computed by Python); it may set: "
            f"{', '.join(sorted(FRONTEND_WRITABLE))}"
        )


def _msg_int(content: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = content.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= int(v) <= hi:
        raise InputError(f"message field {key!r} must be an int in {lo}..{hi}, got {v!r}")
    return int(v)


def parse_message(content: Any, num_images: int, num_layers: int) -> dict[str, Any]:
    """A custom front-end message as ``{"kind": ..., ...}`` with checked fields.

    ``attn_request``: ``image_index`` in 0..num_images-1, ``first_layer`` in 0..num_layers-1,
    ``layers`` None or a list of such ints. ``counterfactual``, ``curves``: no fields.
    ``ping``: ``id`` echoed back (a str or an int). Raises ``InputError`` otherwise.
    """
    if not isinstance(content, Mapping):
        raise InputError(f"a message must be a JSON object, got {type(content).__name__}")
    kind = content.get("kind")
    if kind == "attn_request":
        i = _msg_int(content, "image_index", 0, 0, num_images - 1)
        first = _msg_int(content, "first_layer", 0, 0, num_layers - 1)
        layers = content.get("layers")
        if layers is not None:
            if not isinstance(layers, list):
                raise InputError(f"message field 'layers' must be a list of block indices, got {layers!r}")
            layers = [_msg_int({"layers": v}, "layers", 0, 0, num_layers - 1) for v in layers]
        return {"kind": kind, "image_index": i, "first_layer": first, "layers": layers}
    if kind in ("counterfactual", "curves"):
        return {"kind": kind}
    if kind == "ping":
        mid = content.get("id")
        if mid is not None and (isinstance(mid, bool) or not isinstance(mid, (str, int))):
            raise InputError(f"message field 'id' must be a str or an int, got {type(mid).__name__}")
        return {"kind": kind, "id": mid}
    raise InputError(f"unknown message kind {kind!r} (expected attn_request, counterfactual, curves or ping)")
