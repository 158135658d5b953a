"""The Atlas: a survey's SpRAy results per class as an anywidget (front end: ``js/src/atlas.ts``).

Wire format: per class, float32 (n_c, 2) embedding points, int32 (n_c,) cluster labels and dataset
indices, and per cluster a float32 (gh, gw) mean map; the selected image as RGB uint8 (H, W, 3) plus
its float32 (gh, gw) map. User strings (class names, title) travel as JSON text and are set with
``textContent`` in the browser.

Front-end values pass the Explorer's validation layer (``_state``: ``ATLAS_WRITABLE`` and
``parse_atlas_message``), and ``Survey.confirm`` runs on a worker thread (``_worker``) with
request ids, so the kernel keeps answering while it runs.
"""

from __future__ import annotations

import json
import threading
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import traitlets as t

from ..errors import InputError
from . import _state
from ._export import STATIC, built, bundle, gzip_b64, standalone_page
from ._worker import RequestIds, _Worker, model_lock

__all__ = ["STATIC", "Atlas"]

if TYPE_CHECKING:
    from ._explorer import Explorer

_MISSING = (
    "export default { render({ el }) { el.textContent = 'vit_explore: the Atlas front end is not built "
    "(run npm ci && npm run build in js/).'; } };"
)


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
        contrast: show each cluster's contrast map (its mean map minus its class's:
            ``Survey.contrast_map``) instead of its mean map, and confirm the contrast map's hot
            patches; the "vs class" box in the widget switches it.
    """

    _esm = bundle("atlas.js", _MISSING)
    _css = bundle("atlas.css", "")

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
    contrast = t.Bool(False).tag(sync=True)
    offline = t.Bool(False).tag(sync=True)
    offline_data = t.Dict().tag(sync=True)

    def __init__(self, survey: Any, *, class_names: list[str] | None = None, members: int = 6,
                 title: str = "", contrast: bool = False) -> None:
        from ..survey import Survey

        if not isinstance(survey, Survey):
            raise InputError(f"Atlas needs a vx.survey(...) result, got {type(survey).__name__}")
        self.survey = survey
        self.errors: list[str] = []
        """Tracebacks of failed requests (the widget shows a one-line message)."""
        self._ids = RequestIds()
        self._lock = model_lock(survey.model) if survey.model is not None else threading.RLock()
        self._worker = _Worker(self._set_busy, self._fail)
        super().__init__()
        self._members = int(members)
        names = list(class_names) if class_names is not None else self._names()
        self._names_list = names
        self.explorer: Explorer | None = None
        import ipywidgets

        self.output = ipywidgets.Output()
        with self.hold_sync():
            self._uid = uuid.uuid4().hex
            self.title = str(title)
            self.contrast = bool(contrast)
            self.grid = [int(v) for v in survey.grid]
            self.classes = [self._class_summary(int(c)) for c in survey.classes]
            self.class_index = int(survey.classes[0])
            self.class_data = self._class_payload(self.class_index)
        self.observe(self._on_class, names=["class_index"])
        self.observe(self._on_selected, names=["selected"])
        self.on_msg(self._on_msg)

    def close(self) -> None:
        """Close the widget and its job thread: pending jobs are dropped, a running one ends on its own."""
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.close(timeout=0)
        super().close()

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
                          "contrast_map": _f32(s.contrast_map(c, k)),
                          "contrast_hot": np.flatnonzero(s.hot_patches(c, k, contrast=True).ravel()).astype(int).tolist(),
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

    # ------------------------------------------------------------------ validation (``_state``)

    @_state.validator("class_index")
    def _valid_class_index(self, proposal: Any) -> int:
        v = proposal["value"]
        classes = [int(c) for c in self.survey.classes]
        if v not in classes:
            raise InputError(f"class_index must be a surveyed class ({', '.join(map(str, classes))}), got {v}")
        return v

    @_state.validator("selected")
    def _valid_selected(self, proposal: Any) -> int:
        v, n = proposal["value"], len(self.survey.targets)
        if not -1 <= v < n:
            raise InputError(f"selected must be -1 (none) or a dataset index in 0..{n - 1}, got {v}")
        return v

    @_state.validator("status")
    def _valid_status(self, proposal: Any) -> str:
        v = proposal["value"]
        if len(v) > 2000:
            raise InputError(f"status must be at most 2000 characters, got {len(v)}")
        return v

    def set_state(self, sync_data: dict) -> None:
        """A state update from the front end: only ``_state.ATLAS_WRITABLE``, each validated; an
        invalid value rolls the whole update back (``TraitError``) and the kept values are resent."""
        try:
            _state.check_update(sync_data, _state.ATLAS_WRITABLE)
            super().set_state(sync_data)
        except t.TraitError as e:
            keys = [k for k in sync_data if k in self.keys] if isinstance(sync_data, Mapping) else []
            self._fail("a front-end update", e)
            if keys and self.comm is not None:
                self.send_state(keys)
            raise

    # ------------------------------------------------------------------ jobs

    def _set_busy(self, busy: bool, label: str) -> None:
        if busy:
            self.status = label
        elif not self.status.startswith("error"):
            self.status = ""

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors.append(traceback.format_exc())
        self.status = f"error: {what} failed — {type(exc).__name__}: {exc}"[:2000]

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the background work (confirm requests) is done; False on time-out."""
        return self._worker.wait(timeout)

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
        s = self.survey
        try:
            msg = _state.parse_atlas_message(content, [int(c) for c in s.classes], s.n_clusters,
                                             len(s.targets), int(s.grid[0] * s.grid[1]))
        except InputError as e:
            self._fail("a front-end message", e)
            return
        if msg["kind"] == "confirm":
            self.request_confirm(msg["c"], msg["k"], msg["patches"], req=msg["id"])
        elif msg["kind"] == "open":
            try:
                self.open_in_explorer(msg["index"])
            except Exception as e:  # noqa: BLE001 - shown in the widget
                self._fail(f"opening image {msg['index']}", e)

    def request_confirm(self, c: int, k: int, patches: list[int] | None = None, req: Any = None) -> int:
        """``run_confirm`` on the worker thread (what a brush in the front end asks for): returns at
        once with this request's id; a newer request supersedes it (its result is dropped)."""
        rid = self._ids.new("confirm")

        def job() -> None:
            try:
                with self._lock:
                    r = self.survey.confirm(c, k, patches=None if not patches else list(patches),
                                            contrast=self.contrast)
            except Exception as e:  # noqa: BLE001 - shown in the widget
                self._fail("Survey.confirm", e)
                return
            if self._ids.current("confirm", rid):
                self.confirmed = self._confirmed_payload(r, req)

        self._worker.submit("confirm", "confirming...", job)
        return rid

    def run_confirm(self, c: int, k: int, patches: list[int] | None = None, req: Any = None) -> dict:
        """``Survey.confirm`` for cluster ``k`` of class ``c`` (``patches``: row-major indices, None for
        the hot patches), here and now; the figures go to the ``confirmed`` trait the front end shows."""
        self._ids.new("confirm")  # a request still running is superseded
        self.status = "confirming..."
        with self._lock:
            r = self.survey.confirm(c, k, patches=None if not patches else list(patches), contrast=self.contrast)
        self.confirmed = self._confirmed_payload(r, req)
        self.status = ""
        return r

    @staticmethod
    def _confirmed_payload(r: dict, req: Any) -> dict:
        keep = {key: v for key, v in r.items() if not isinstance(v, np.ndarray)}
        keep = {key: (list(v) if isinstance(v, tuple) else v) for key, v in keep.items()}
        keep["patches"] = np.flatnonzero(r["patches"].ravel()).astype(int).tolist()
        keep["control_patches"] = np.flatnonzero(r["control_patches"].ravel()).astype(int).tolist()
        keep["id"] = req
        return json.loads(json.dumps(keep, default=float).replace("NaN", "null"))

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
        from ._serialize import jsonable_state, script_json

        built("atlas.js")
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
        return standalone_page(
            title=self.title or "vit_explore Atlas", css_name="atlas.css", js_name="atlas.js",
            scripts=[("vx-data", "application/octet-stream", "gzip+base64", gzip_b64(payload.encode()))],
            mount=_MOUNT, path=path,
        )


_MOUNT = """
window.__vxAtlasModel = await mod.mountStandalone(document.getElementById("vx-app"),
  document.getElementById("vx-data").textContent);
"""
