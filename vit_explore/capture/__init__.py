"""Capture: the only code that touches ``nn.Module`` internals.

The package is also callable: ``vx.capture(model, x, needs)`` is ``capture.session.capture``
(one forward, and a backward if asked, recording what ``needs`` lists; returns a ``Trace``).
So ``vx.capture`` names both this package and the function, and ``import
vit_explore.capture.session`` works alongside the call.
"""

import inspect
import sys
import types
from typing import Any

from .adapters import ViTInfo, inspect_vit
from .layout import TokenLayout
from .session import Needs, Trace, capture

__all__ = ["Needs", "TokenLayout", "Trace", "ViTInfo", "capture", "inspect_vit"]


class _CallablePackage(types.ModuleType):
    """This package's module type: calling it calls ``session.capture``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Trace:
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(capture)  # what help() and inspect.signature show for vx.capture(...)
