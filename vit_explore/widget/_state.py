"""The one validation layer for values that reach the Explorer from the front end.

* Trait updates (``Explorer.set_state``): only the view traits in ``FRONTEND_WRITABLE`` may
  be set by the front end; each value passes the trait's type and its ``@validator``. Every
  rejection is a ``traitlets.TraitError``, so ipywidgets rolls the whole update back and
  nothing invalid reaches a job or the export.
* Custom messages (``parse_message``): checked into plain ints and lists before any job is
  scheduled; a malformed message is reported, never run.

The Atlas goes through the same layer: ``ATLAS_WRITABLE`` and ``parse_atlas_message``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Collection, Mapping
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

#: Traits the Atlas's front end (js/src/atlas.ts) sets. ``status`` too: the front end writes
#: "confirming..." locally before a confirm request, and ipywidgets sends that buffered change
#: with the next ``save_changes`` (of ``selected`` or ``class_index``); it is shown as text.
ATLAS_WRITABLE = frozenset({"class_index", "selected", "status", "contrast"})


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


def check_update(sync_data: Mapping[str, Any], writable: frozenset[str] = FRONTEND_WRITABLE) -> None:
    """Refuse a front-end update of a trait the front end does not own (``writable``: the
    Explorer's ``FRONTEND_WRITABLE`` or the Atlas's ``ATLAS_WRITABLE``)."""
    if not isinstance(sync_data, Mapping):
        raise StateError(f"a state update must be a mapping, got {type(sync_data).__name__}")
    bad = sorted(str(k) for k in sync_data if k not in writable)
    if bad:
        raise StateError(
            f"the front end may not set {', '.join(bad)} (computed by Python); it may set: "
            f"{', '.join(sorted(writable))}"
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
        return {"kind": kind, "id": _msg_id(content)}
    raise InputError(f"unknown message kind {kind!r} (expected attn_request, counterfactual, curves or ping)")


def _msg_id(content: Mapping[str, Any]) -> str | int | None:
    mid = content.get("id")
    if mid is not None and (isinstance(mid, bool) or not isinstance(mid, (str, int))):
        raise InputError(f"message field 'id' must be a str or an int, got {type(mid).__name__}")
    return mid


def parse_atlas_message(content: Any, classes: Collection[int], n_clusters: Callable[[int], int], num_images: int,
                        num_patches: int) -> dict[str, Any]:
    """A custom message of the Atlas's front end as ``{"kind": ..., ...}`` with checked fields.

    ``confirm``: ``c`` one of the surveyed ``classes``, ``k`` in 0..n_clusters(c)-1, ``patches`` None or a non-empty list of patch indices in
    0..num_patches-1, ``id`` a str or an int echoed in ``confirmed``. ``open``: ``index`` in
    0..num_images-1. Raises ``InputError`` otherwise.
    """
    if not isinstance(content, Mapping):
        raise InputError(f"a message must be a JSON object, got {type(content).__name__}")
    kind = content.get("kind")
    if kind == "confirm":
        c = content.get("c")
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or int(c) not in classes:
            raise InputError(f"message field 'c' must be a surveyed class ({', '.join(map(str, classes))}), got {c!r}")
        k = _msg_int(content, "k", 0, 0, n_clusters(int(c)) - 1)
        patches = content.get("patches")
        if patches is not None:
            if not isinstance(patches, list) or not patches:
                raise InputError(f"message field 'patches' must be null or a non-empty list of patch indices, "
                                 f"got {patches!r}")
            patches = [_msg_int({"patches": v}, "patches", 0, 0, num_patches - 1) for v in patches]
        return {"kind": kind, "c": int(c), "k": k, "patches": patches, "id": _msg_id(content)}
    if kind == "open":
        return {"kind": kind, "index": _msg_int(content, "index", -1, 0, num_images - 1)}
    raise InputError(f"unknown message kind {kind!r} (expected confirm or open)")
