"""Exception types. Each one also inherits the builtin a caller would expect."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VitExploreError(Exception):
    """Base class of every error raised by vit_explore."""


class UnknownMethodError(VitExploreError, KeyError):
    """An explainer name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(VitExploreError, TypeError):
    """A model (or one of its blocks) that capture does not understand."""


class CaptureError(VitExploreError, RuntimeError):
    """A forward or backward pass did not record what a method needs."""


class InputError(VitExploreError, ValueError):
    """An image, target or parameter of the wrong shape, size or value."""


class NonFiniteOutputError(InputError):
    """The model returned NaN or infinite logits (NaN weights, an overflowing input)."""


class WeightsError(VitExploreError, FileNotFoundError):
    """A checkpoint that is missing or cannot be read."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
