"""The Explorer widget (anywidget front end in ``js/``, bundled into ``static/`` at build time)."""

from ._atlas import Atlas
from ._explorer import Explorer

__all__ = ["Atlas", "Explorer"]
