"""The Atlas: a survey's SpRAy results per class as an anywidget (front end: ``js/src/atlas.ts``).

Wire format: per class, float32 (n_c, 2) embedding points, int32 (n_c,) cluster labels and dataset
indices, and per cluster a float32 (gh, gw) mean map; the selected image as RGB uint8 (H, W, 3) plus
its float32 (gh, gw) map. User strings (class names, title) travel as JSON text and are set with
``textContent`` in the browser.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import traitlets as t

from .._files import write_text_atomically
from ..errors import InputError

if TYPE_CHECKING:
    from ._explorer import Explorer

STATIC = Path(__file__).resolve().parent / "static"
_MISSING = (
    "export default { render({ el }) { el.textContent = 'vit_explore: the Atlas front end is not built "
    "(run npm ci && npm run build in js/).'; } };"
)


def _bundle(name: str, fallback: str) -> Any:
    p = STATIC / name
    return p if p.exists() else fallback


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def _i32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.int32).tobytes()


class Atlas(anywidget.AnyWidget):
    """Browse a :class:`~vit_explore.survey.Survey`: per class, the 2-D embedding of every image's map
    (a canvas scatter coloured by cluster), one card per cluster (mean map, size, a few members) and
    the eigengap; click a point or member to see the image with its map; brush patches on a cluster's
    mean map to run ``Survey.confirm`` (member against control flip rates); "open in Explorer" puts
    the image in a ``vx.Explorer`` (``atlas.explorer``, also shown in ``atlas.output``).

    Args:
        survey: the survey (with its model and data attached to confirm and open images).
        class_names: names of the classes (default: the model's label names, else numbers).
        members: how many members each card shows.
        title: a caption (shown as text).
    """

    _esm = _bundle("atlas.js", _MISSING)
    _css = _bundle("atlas.css", "")

    _uid = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    grid = t.List(t.Int()).tag(sync=True)
    classes = t.List(t.Dict()).tag(sync=True)
    class_index = t.Int(0).tag(sync=True)
    class_data = t.Dict().tag(sync=True)
    selected = t.Int(-1).tag(sync=True)
    selected_payload = t.Dict().tag(sync=True)
    confirmed = t.Dict().tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    offline = t.Bool(False).tag(sync=True)
    offline_data = t.Dict().tag(sync=True)

    def __init__(self, survey: Any, *, class_names: list[str] | None = None, members: int = 6,
                 title: str = "") -> None:
        from ..survey import Survey

        if not isinstance(survey, Survey):
            raise InputError(f"Atlas needs a vx.survey(...) result, got {type(survey).__name__}")
        super().__init__()
        self.survey = survey
        self._members = int(members)
        names = list(class_names) if class_names is not None else self._names()
        self._names_list = names
        self.explorer: Explorer | None = None
        import ipywidgets

        self.output = ipywidgets.Output()
        with self.hold_sync():
            self._uid = uuid.uuid4().hex
            self.title = str(title)
            self.grid = [int(v) for v in survey.grid]
            self.classes = [self._class_summary(int(c)) for c in survey.classes]
            self.class_index = int(survey.classes[0])
            self.class_data = self._class_payload(self.class_index)
        self.observe(self._on_class, names=["class_index"])
        self.observe(self._on_selected, names=["selected"])
        self.on_msg(self._on_msg)

    # ------------------------------------------------------------------ payloads

    def _names(self) -> list[str]:
        if self.survey.model is not None:
            from ..zoo import class_names

            return [str(n) for n in class_names(self.survey.model)]
        return [f"class {i}" for i in range(int(self.survey.classes.max()) + 1)]

    def _name(self, c: int) -> str:
        return self._names_list[c] if 0 <= c < len(self._names_list) else str(c)

    def _class_summary(self, c: int) -> dict:
        s = self.survey
        return {"c": c, "name": self._name(c), "n": len(s.indices(c))}

    def _class_payload(self, c: int) -> dict:
        s = self.survey
        idx = s.indices(c)
        lab = s.clusters(c)
        cards = []
        for k in range(s.n_clusters(c)):
            mem = s.members(c, k)
            cards.append({"k": k, "size": len(mem), "mean_map": _f32(s.mean_map(c, k)),
                          "hot": np.flatnonzero(s.hot_patches(c, k).ravel()).astype(int).tolist(),
                          "members": mem[: self._members].astype(int).tolist()})
        return {"c": c, "name": self._name(c), "n": len(idx), "k": s.n_clusters(c),
                "eigengap": [float(v) for v in s.eigengap(c)], "points": _f32(s.embedding(c)),
                "labels": _i32(lab), "indices": _i32(idx), "clusters": cards,
                "outliers": s.outliers(c).astype(int).tolist()}

    def _image_payload(self, i: int) -> dict:
        s = self.survey
        if s.source is None:
            raise InputError("this survey has no data attached: images cannot be shown")
        rgb = s.source.display(i)
        c = int(s.targets[i])
        pos = int(np.searchsorted(s.indices(c), i))
        return {"index": int(i), "rgb": rgb.tobytes(), "h": int(rgb.shape[0]), "w": int(rgb.shape[1]),
                "map": _f32(s.map(i)), "class": c, "name": self._name(c), "cluster": int(s.clusters(c)[pos]),
                "pred": int(s.predictions[i]), "prob": float(s.store.arrays["prob"][i])}

    # ------------------------------------------------------------------ events

    def _on_class(self, change: dict) -> None:
        self.class_data = self._class_payload(int(change["new"]))

    def _on_selected(self, change: dict) -> None:
        i = int(change["new"])
        if i < 0:
            self.selected_payload = {}
            return
        try:
            self.selected_payload = self._image_payload(i)
        except Exception as e:  # noqa: BLE001 - shown in the widget
            self.status = f"error: {e}"

    def _on_msg(self, widget: Any, content: dict, buffers: list) -> None:
        kind = content.get("kind")
        try:
            if kind == "confirm":
                self.run_confirm(int(content["c"]), int(content["k"]), content.get("patches"),
                                 req=content.get("id"))
            elif kind == "open":
                self.open_in_explorer(int(content["index"]))
        except Exception as e:  # noqa: BLE001 - shown in the widget
            self.status = f"error: {e}"

    def run_confirm(self, c: int, k: int, patches: list[int] | None = None, req: Any = None) -> dict:
        """``Survey.confirm`` for cluster ``k`` of class ``c`` (``patches``: row-major indices, None for
        the hot patches); the figures go to the ``confirmed`` trait the front end shows."""
        self.status = "confirming..."
        r = self.survey.confirm(c, k, patches=None if not patches else list(patches))
        keep = {key: v for key, v in r.items() if not isinstance(v, np.ndarray)}
        keep = {key: (list(v) if isinstance(v, tuple) else v) for key, v in keep.items()}
        keep["patches"] = np.flatnonzero(r["patches"].ravel()).astype(int).tolist()
        keep["control_patches"] = np.flatnonzero(r["control_patches"].ravel()).astype(int).tolist()
        keep["id"] = req
        self.confirmed = json.loads(json.dumps(keep, default=float).replace("NaN", "null"))
        self.status = ""
        return r

    def open_in_explorer(self, i: int) -> Any:
        """A ``vx.Explorer`` on dataset image ``i`` (kept as ``atlas.explorer``, shown in ``atlas.output``)."""
        from IPython.display import display

        from ._explorer import Explorer

        s = self.survey
        if s.model is None or s.source is None:
            raise InputError("this survey has no model or data attached: cannot open an Explorer")
        x = s.source.batch([int(i)])
        self.explorer = Explorer(s.model, x, title=f"image {int(i)}")
        self.output.clear_output()
        with self.output:
            display(self.explorer)
        return self.explorer

    # ------------------------------------------------------------------ export

    def to_html(self, path: str | Path | None = None) -> str:
        """A standalone HTML page (no kernel, no network) with every class's scatter and cards and the
        images of the members the cards show; brushing needs a kernel and is disabled there."""
        js_path = STATIC / "atlas.js"
        if not js_path.exists():
            raise FileNotFoundError(f"{js_path} is missing: build the front end with `npm ci && npm run build` in js/")
        from ._serialize import jsonable_state, script_json

        classes = {str(int(c)): self._class_payload(int(c)) for c in self.survey.classes}
        images = {}
        if self.survey.source is not None:
            for d in classes.values():
                for card in d["clusters"]:
                    for i in card["members"]:
                        images[str(i)] = self._image_payload(i)
        state = {"_uid": self._uid, "title": self.title, "grid": self.grid, "classes": self.classes,
                 "class_index": self.class_index, "class_data": classes[str(self.class_index)], "selected": -1,
                 "selected_payload": {}, "confirmed": {}, "status": "", "offline": True,
                 "offline_data": {"classes": classes, "images": images}}
        payload = script_json(jsonable_state(state))
        page = _HTML.format(
            title=html.escape(self.title or "vit_explore Atlas"),
            css=(STATIC / "atlas.css").read_text(encoding="utf-8") if (STATIC / "atlas.css").exists() else "",
            data=base64.b64encode(gzip.compress(payload.encode(), 6, mtime=0)).decode("ascii"),
            bundle=script_json(js_path.read_text(encoding="utf-8")),
        )
        if path is not None:
            write_text_atomically(path, page)
        return page


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{margin:16px;font-family:system-ui,sans-serif}}{css}</style></head>
<body class="vx-standalone"><div id="vx-app"></div>
<script type="application/octet-stream" id="vx-data" data-encoding="gzip+base64">{data}</script>
<script type="application/json" id="vx-bundle">{bundle}</script>
<script type="module">
const src = JSON.parse(document.getElementById("vx-bundle").textContent);
const url = URL.createObjectURL(new Blob([src], {{ type: "text/javascript" }}));
const mod = await import(url);
window.__vxAtlasModel = await mod.mountStandalone(document.getElementById("vx-app"),
  document.getElementById("vx-data").textContent);
</script></body></html>
"""
