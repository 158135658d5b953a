"""``Explorer``: an anywidget to scrub layers and heads, switch methods and classes, and brush
patches for live interventions (front end: ``js/``, bundled into ``static/``).

Data flow:
* small state (method, layer, head, target, brushed patches, the current map, top-k, the last
  intervention) lives in synced traits, so Python can read and set it;
* the attention of every block is sent as custom messages (uint8 with per-row scales, the
  current block first) into a front-end cache: scrubbing needs no kernel message and saved
  notebooks do not carry the stack;
* heavy work (explainers, interventions, counterfactuals) runs on one worker thread, so the
  kernel keeps answering comm messages; each job slot keeps only its newest request, and a
  result whose request was superseded while it ran is dropped.

The class is assembled from parts, each in its module: ``_traits`` (synced traits, their
validators and constants), ``_payloads`` (what is sent to the front end), ``_jobs`` (the work on
the worker thread of ``_worker``), ``_export`` (``to_html`` and ``figure``); this module holds
the constructor, the observers and message handling, and the public API.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anywidget
import torch
import traitlets as t
from torch import nn

from ..api import explain
from ..capture.classifier import MODEL_AGNOSTIC, ClassifierInfo, inspect_model, not_defined
from ..capture.hf import as_vit
from ..errors import InputError
from ..explainers import get_explainer, list_methods
from ..explanation import Explanation
from ..inputs import ImageLike, as_batch, check_tensor, data_config
from ..perturb import ForwardEngine
from . import _state
from ._about import ABOUT
from ._export import STATIC, bundle, explorer_figure, explorer_html
from ._jobs import ExplorerJobs
from ._teaching import Teaching
from ._traits import ATTN, LABELS, MODES
from ._worker import RequestIds, _Worker, model_lock

__all__ = ["ATTN", "LABELS", "MODES", "STATIC", "Explorer"]

_MISSING_BUNDLE = """export default { render({ el }) {
  el.textContent = "vit_explore's front end is not built: run `npm ci && npm run build` in js/ (or reinstall with pip).";
} };"""


class Explorer(ExplorerJobs, anywidget.AnyWidget):
    """Interactive explanations of a timm ViT on a few images (JupyterLab 4, Notebook 7, Voilà, marimo).

    Args:
        model: a timm ViT (any variant ``vx.explain`` supports), in eval mode.
        images: a preprocessed (B, 3, H, W) tensor, one (3, H, W) tensor, a PIL image, an
            (H, W, 3) uint8 array, or a list of them.
        methods: method keys to offer (default: every registered method, raw attention first).
        target: the class to explain (default: each image's top-1 prediction).
        class_names: labels of the classes (default: the model's ``label_names``).
        params: per-method parameters, ``{"rollout": {"start_layer": 1}}``.
        topk: how many classes the prediction panel lists.
        title: a caption (shown as text).
        tour: a guided tour, a list of step dicts (see ``vit_explore.widget._teaching.check_tour``),
            or ``"default"`` for the workshop tour (patches to class); None: no tour.

    State readable and settable from Python: ``method``, ``layer``, ``head`` (-1: mean of
    heads), ``query`` (-1: the CLS row, else a patch whose attention row is shown),
    ``target``, ``image_index``, ``brushed`` (row-major patch indices), ``mode``, ``keep``,
    ``compare`` (show the grid of ``compare_methods`` side by side), ``recompute`` (rerun the
    current method on the intervened image after each stroke), ``cx_mask`` (the ViT-CX mask
    overlaid, -1 none), ``pinned`` (whether ``target`` stays for every image; False: each
    image's own top-1, and setting it False returns to that) and ``explanation`` (the current
    ``Explanation``). ``counterfactual`` holds what the last counterfactual search found.
    ``compute_curves()`` runs the deletion/insertion curves of the current map.
    """

    _esm = bundle("widget.js", _MISSING_BUNDLE)
    _css = bundle("widget.css", "")

    def __init__(
        self,
        model: nn.Module,
        images: ImageLike,
        methods: Sequence[str] | None = None,
        target: int | None = None,
        *,
        class_names: Sequence[str] | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        topk: int = 5,
        title: str = "",
        tour: Sequence[Mapping[str, Any]] | str | None = None,
    ) -> None:
        model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
        info = inspect_model(model)
        tokens = not isinstance(info, ClassifierInfo)
        x = self._as_images(model, images)
        x = check_tensor(info, x, model)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be a positive int, got {topk!r}")
        names = self._check_methods(methods)
        if not tokens:
            assert isinstance(info, ClassifierInfo)
            if methods is None:
                names = [m for m in names if m in MODEL_AGNOSTIC]
            bad = [m for m in names if m not in MODEL_AGNOSTIC]
            if bad:
                raise not_defined(info, f"method {bad[0]!r}")
        self._info = info
        cfg = data_config(model)
        C = info.num_classes
        labels = self._class_names(model, class_names, C)
        self._model = model
        self._labels = labels
        self._x = x
        self._mean = tuple(float(v) for v in cfg.get("mean", (0.5, 0.5, 0.5)))
        self._std = tuple(float(v) for v in cfg.get("std", (0.5, 0.5, 0.5)))
        self._k = min(topk, C)
        self._num_classes = C
        self._lock = model_lock(model)  # one per model: an Atlas and its Explorer never run it at once
        self._engine = ForwardEngine()  # the perturbed forwards' caches (same image: one forward per brush)
        self._images = {}
        self._maps = {}
        self._params = {}
        self._curves = {}
        self._last_input = None
        self._internal = 0
        self._ids = RequestIds()
        self.stats = Counter()
        """How many computations ran: ``forward`` (one capture per image), ``explain:<method>``,
        ``intervene``, ``causal_score``, ``counterfactual``."""
        self.last_counterfactual = None
        self.errors = []
        """Tracebacks of failed jobs (the widget shows a one-line message)."""
        for m, p in (params or {}).items():
            self._params[m] = get_explainer(m).bind(dict(p))
        self._worker = _Worker(self._set_busy, lambda what, e: self._fail(what, e))

        first = self._ensure_image(0)  # one forward: top-k, grid, layers and heads
        layout = first["layout"]
        if target is not None:
            self._check_target(target)
        super().__init__(
            _uid=uuid.uuid4().hex,
            title=str(title),
            methods=names,
            method_info={
                m: {"class_specific": bool(get_explainer(m).class_specific), "label": LABELS.get(m, m),
                    "about": ABOUT.get(m, "")} for m in names
            },
            num_layers=first["num_layers"],
            num_heads=first["num_heads"],
            token_attention=tokens,
            grid=list(layout.grid),
            num_images=int(x.shape[0]),
            class_names=labels,
            method=names[0],
            layer=first["num_layers"] - 1,
            target=int(first["top"]) if target is None else int(target),
            pinned=target is not None,
            image=self._image_payload(0),
            topk=self._topk_payload(first["probs"]),
            status={"busy": False, "label": "", "error": None},
            compare_methods=list(names),
        )
        self.observe(self._on_method, names=["method"])
        self.observe(self._on_compare, names=["compare", "compare_methods"])
        self.observe(self._on_recompute, names=["recompute"])
        self.observe(self._on_view_for_recompute, names=["layer", "head", "query"])
        self.observe(self._on_target, names=["target"])
        self.observe(self._on_pinned, names=["pinned"])
        self.observe(self._on_image, names=["image_index"])
        self.observe(self._on_brush, names=["brushed", "mode", "keep"])
        self.on_msg(self._on_msg)
        self._teaching = Teaching(self, tour)  # logit lens, similarity, head attribution, patching, tour
        self._schedule_map()

    def close(self) -> None:
        """Close the widget and its job thread: pending jobs are dropped, a running one ends on its own."""
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.close(timeout=0)
        super().close()

    # ------------------------------------------------------------------ constructor arguments

    @staticmethod
    def _as_images(model: nn.Module, images: ImageLike) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            if not images:
                raise InputError("images is empty; give a tensor (B, 3, H, W), a PIL image, an array or a list of them")
            parts = [as_batch(model, im) for im in images]
            return torch.cat(parts)
        return as_batch(model, images)

    @staticmethod
    def _check_methods(methods: Sequence[str] | None) -> list[str]:
        if methods is None:
            names = list_methods()
            return ([ATTN] if ATTN in names else []) + [m for m in names if m != ATTN]
        if isinstance(methods, str):
            methods = [methods]
        out: list[str] = []
        for m in methods:
            get_explainer(m)  # UnknownMethodError with a suggestion
            if m not in out:
                out.append(m)
        if not out:
            raise InputError("methods is empty; pass None for every registered method")
        return out

    @staticmethod
    def _class_names(model: nn.Module, names: Sequence[str] | None, C: int) -> list[str]:
        if names is None:
            from ..zoo import class_names as model_class_names

            labels = model_class_names(model)
            return labels if len(labels) == C else [f"class {i}" for i in range(C)]
        labels = [str(n) for n in names]
        if len(labels) != C:
            raise InputError(f"class_names has {len(labels)} entries but the model has {C} classes")
        return labels

    # ------------------------------------------------------------------ observers

    @t.observe("class_names")
    def _on_class_names(self, change: dict) -> None:
        self._labels = list(change["new"])
        if self._images.get(self.image_index) is not None:
            self.topk = self._topk_payload(self._images[self.image_index]["probs"])

    def _on_method(self, change: dict) -> None:
        self._schedule_map()
        self._schedule_recompute()

    def _on_compare(self, change: dict) -> None:
        if self.compare:
            self._schedule_compare()

    def _on_recompute(self, change: dict) -> None:
        if change["new"]:
            self._schedule_recompute()
        else:
            self.intervened_map = {}

    def _on_view_for_recompute(self, change: dict) -> None:
        if self.method == ATTN:
            self._schedule_recompute()

    def _on_target(self, change: dict) -> None:
        if not self._internal:
            self.pinned = True
        if get_explainer(self.method).class_specific:
            self._schedule_map()
        if self.brushed:
            self._schedule_intervention()
        self._schedule_compare()

    def _on_pinned(self, change: dict) -> None:
        """Unpinning goes back to the current image's own top-1 class."""
        d = self._images.get(self.image_index)
        if change["new"] or d is None or self.target == d["top"]:
            return
        self._internal += 1
        try:
            self.target = int(d["top"])
        finally:
            self._internal -= 1

    def _on_image(self, change: dict) -> None:
        i = change["new"]
        with self.hold_sync():
            self.image = self._image_payload(i)
            self.brushed = []
            self.query = -1
            self.intervention = {}
            self.intervened_map = {}
            self.counterfactual = {}

        def job() -> None:
            try:
                d = self._ensure_image(i)
            except Exception as e:  # noqa: BLE001
                self._fail(f"reading image {i + 1}", e)
                return
            if self.image_index != i:
                return
            with self.hold_sync():
                self.topk = self._topk_payload(d["probs"])
                if not self.pinned and self.target != d["top"]:
                    self._internal += 1
                    try:
                        self.target = d["top"]
                    finally:
                        self._internal -= 1
            self._schedule_map()
            self._schedule_compare()

        if i in self._images:
            job()
        else:
            self._worker.submit("image", f"running the model on image {i + 1}…", job)

    def _on_brush(self, change: dict) -> None:
        self._schedule_intervention()

    # ------------------------------------------------------------------ from the front end

    def set_state(self, sync_data: dict) -> None:
        """Apply a state update from the front end through the one validation layer
        (``_state``): only view traits, each validated; any invalid value rolls the whole
        update back, the front end is sent the kept values and the widget shows the error."""
        try:
            _state.check_update(sync_data)
            super().set_state(sync_data)
        except t.TraitError as e:
            keys = [k for k in sync_data if k in self.keys] if isinstance(sync_data, Mapping) else []
            self._fail("a front-end update", e)
            if keys and self.comm is not None:
                self.send_state(keys)  # the front end echoed its values: resend the kept ones
            raise

    def _on_msg(self, widget: Any, content: dict, buffers: list) -> None:
        if self._teaching.handle(content):  # teaching requests check their own fields (widget/_teaching.py)
            return
        try:
            msg = _state.parse_message(content, self.num_images, self.num_layers)
        except InputError as e:
            self._fail("a front-end message", e)
            return
        kind = msg["kind"]
        if kind == "attn_request":
            i, first, layers = msg["image_index"], msg["first_layer"], msg["layers"]
            self._worker.submit(f"attn:{i}", "", lambda: self._send_attention(i, first, layers))
        elif kind == "counterfactual":
            self.find_counterfactual()
        elif kind == "curves":
            self.compute_curves()
        elif kind == "ping":  # an empty round trip (bench/bench_explorer.py's baseline)
            self.send({"kind": "pong", "id": msg["id"]})

    # ------------------------------------------------------------------ public API

    def set_params(self, method: str, **params: Any) -> None:
        """Set a method's parameters (validated); maps are recomputed on demand."""
        self._params[method] = get_explainer(method).bind(params)
        self.params_version += 1
        self._schedule_map()
        self._schedule_compare()

    @property
    def explanation(self) -> Explanation:
        """The ``Explanation`` behind the current view (raw attention uses layer, head and query)."""
        i = self.image_index
        if self.method == ATTN:
            with self._lock:
                ex = explain(self._model, self._x[i : i + 1], ATTN, self.target, layer=self.layer,
                             head=None if self.head < 0 else self.head, query=None if self.query < 0 else self.query)
            self.stats[f"explain:{ATTN}"] += 1
            return ex
        return self._compute_map(self._map_key(i, self.method, self.target))

    @property
    def images(self) -> torch.Tensor:
        """The (B, 3, H, W) preprocessed images."""
        return self._x

    def compute_curves(self, *, steps: int = 48, block: bool = False) -> None:
        """Deletion and insertion curves of the current map (runs in the background; result in ``curves``).

        Uses ``vit_explore.metrics`` with the ViT-native ``patch`` preset (Petsiuk et al., RISE,
        BMVC 2018, at patch granularity): patches are replaced by 0 (normalised space) from the
        most relevant down (deletion) or revealed on a zero image (insertion), scoring the
        softmax probability of the target; ``ceil(P / steps)`` patches per step.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive int, got {steps!r}")
        self._schedule_curves(steps)
        if block:
            self.wait()

    def find_counterfactual(self, order_by: str = "rollout", *, block: bool = False) -> None:
        """Brush the smallest patch set found whose removal flips the prediction (runs in the background).

        The result object is kept in ``last_counterfactual``; ``block=True`` waits for it.
        """
        self._schedule_counterfactual(order_by)
        if block:
            self.wait()

    def figure(self) -> Any:
        """A static plotly figure: the top-k probabilities (before and, if patches are brushed,
        after) and, once ``compute_curves()`` ran for the current map, its deletion/insertion
        curves beside them (the same chart the Explorer draws)."""
        return explorer_figure(self)

    def to_html(self, path: str | Path | None = None, *, methods: str = "cached") -> str:
        """A standalone HTML page of this Explorer that works offline (no kernel, no network).

        Embeds the bundle, the state, every image's attention and the method maps:
        ``methods="cached"`` the maps already computed, ``"all"`` computes every offered method
        for every image and its current target first. Brushing needs a kernel and is disabled.
        """
        return explorer_html(self, path, methods)
