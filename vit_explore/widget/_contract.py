"""Constants the Python widget shares with its front end, read from ``contract.json`` (the one place
they are written; ``js/src/contract.ts`` imports the same file into the bundle): the intervention
modes, the raw-attention method key, each method's button label and one-line description, the
teaching message kinds, the tour's panels, and the format of the keys both sides give a map."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_DATA: dict[str, Any] = json.loads(Path(__file__).with_name("contract.json").read_text(encoding="utf-8"))

ATTN: str = _DATA["attention_method"]
MODES: tuple[str, ...] = tuple(_DATA["modes"])
#: Button labels of the known methods (anything else registered shows its key).
LABELS: dict[str, str] = {k: v["label"] for k, v in _DATA["methods"].items()}
#: One line per method: what the map on screen shows (the sign of a signed map is explained beside its scale).
ABOUT: dict[str, str] = {k: v["about"] for k, v in _DATA["methods"].items()}
TEACHING_KINDS: tuple[str, ...] = tuple(_DATA["teaching_kinds"])
TOUR_PANELS: tuple[str, ...] = tuple(_DATA["tour_panels"])


def map_key(image: int, method: str, target: int | None, params_version: int) -> str:
    """Key of a method's map (``target`` None for a class-agnostic method), as the front end builds it."""
    no = _DATA["no_target"]
    return str(_DATA["map_key"]).format(image=image, method=method, target=no if target is None else target,
                                        params_version=params_version)


def attention_view_key(image: int, layer: int, head: int, query: int, params_version: int) -> str:
    """Key of a raw-attention view: the map key with layer, head and query in place of the target."""
    return str(_DATA["attention_view_key"]).format(image=image, method=ATTN, layer=layer, head=head, query=query,
                                                   params_version=params_version)
