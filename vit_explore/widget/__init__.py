"""The Explorer widget (anywidget front end in ``js/``, bundled into ``static/`` at build time)."""

from ._explorer import Explorer

__all__ = ["Explorer"]
