"""One line per method for the Explorer: what the map on screen shows (what is high, what the
method is known for). Written in ``contract.json`` beside the method labels (see ``_contract``)."""

from __future__ import annotations

from ._contract import ABOUT

__all__ = ["ABOUT"]
