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
"""

from __future__ import annotations

import base64
import gzip
import html
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets as t
from torch import nn

from .._files import write_text_atomically
from ..api import explain
from ..capture.classifier import (
    MODEL_AGNOSTIC,
    ClassifierInfo,
    capture_classifier,
    inspect_model,
    not_defined,
    not_token_mode,
)
from ..capture.hf import as_vit
from ..capture.session import Needs, capture
from ..counterfactual_search import Counterfactual
from ..errors import InputError, UnknownMethodError, suggest
from ..explainers import get_explainer, list_methods
from ..explanation import Explanation
from ..inputs import ImageLike, as_batch, check_tensor, data_config
from ..perturb import ForwardEngine
from . import _serialize as ser
from . import _state
from ._about import ABOUT
from ._teaching import Teaching, TeachingTraits

STATIC = Path(__file__).resolve().parent / "static"
MODES = ("noise", "blur", "mean", "zero", "drop")
ATTN = "raw_attention"

#: Button labels of the known methods (anything else registered shows its key).
LABELS = {
    "raw_attention": "Attention",
    "rollout": "Rollout",
    "attention_flow": "Attention flow",
    "tam": "TAM",
    "chefer_lrp": "Chefer LRP",
    "chefer_generic": "Chefer generic",
    "attn_grad_cam": "Attn Grad-CAM",
    "grad_cam": "Grad-CAM",
    "ag_cam": "AG-CAM",
    "vit_cx": "ViT-CX",
    "attn_lrp": "AttnLRP",
    "saliency": "Saliency",
    "integrated_gradients": "Integrated gradients",
    "occlusion": "Occlusion",
    "rise": "RISE",
}

_MISSING_BUNDLE = """export default { render({ el }) {
  el.textContent = "vit_explore's front end is not built: run `npm ci && npm run build` in js/ (or reinstall with pip).";
} };"""


def _bundle(name: str, fallback: str) -> Path | str:
    p = STATIC / name
    return p if p.exists() else fallback


class _Worker:
    """One daemon thread running jobs by slot; a new job replaces the pending job of its slot."""

    def __init__(self, on_state: Callable[[bool, str], None],
                 on_error: Callable[[str, BaseException], object] | None = None):
        self._on_error = on_error
        self._cv = threading.Condition()
        self._pending: dict[str, tuple[str, Callable[[], object]]] = {}
        self._running: str | None = None
        self._thread: threading.Thread | None = None
        self._on_state = on_state

    def submit(self, slot: str, label: str, fn: Callable[[], object]) -> None:
        with self._cv:
            self._pending.pop(slot, None)  # superseded
            self._pending[slot] = (label, fn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vx-explorer", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._running = None
                    self._cv.notify_all()
                    if not self._cv.wait(timeout=30.0) and not self._pending:
                        self._thread = None
                        return
                slot = next(iter(self._pending))
                label, fn = self._pending.pop(slot)
                self._running = slot
            try:  # the loop outlives any job: a failure is reported, the next job runs
                if label:
                    self._on_state(True, label)
                fn()
            except Exception as e:  # noqa: BLE001
                self._report(slot, label, e)
            finally:
                with self._cv:
                    idle = not self._pending
                    if idle:
                        self._running = None
                        self._cv.notify_all()
                if idle:
                    try:
                        self._on_state(False, "")
                    except Exception as e:  # noqa: BLE001
                        self._report(slot, label, e)

    def _report(self, slot: str, label: str, exc: BaseException) -> None:
        try:
            if self._on_error is not None:
                self._on_error(label or slot, exc)
        except Exception:  # noqa: BLE001, S110 - the reporter itself failed: nothing more to do
            pass

    def idle(self) -> bool:
        with self._cv:
            return not self._pending and self._running is None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is pending or running; False on time-out."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._pending or self._running is not None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(timeout=0.05 if left is None else min(left, 0.05))
        return True


class Explorer(TeachingTraits, anywidget.AnyWidget):
    """Interactive explanations of a timm ViT on a few images (JupyterLab 4, Notebook 7, VS Code, Colab).

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

    _esm = _bundle("widget.js", _MISSING_BUNDLE)
    _css = _bundle("widget.css", "")

    _uid = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    # what the model and images are
    methods = t.List(t.Unicode()).tag(sync=True)
    method_info = t.Dict().tag(sync=True)
    num_layers = t.Int(1).tag(sync=True)
    num_heads = t.Int(1).tag(sync=True)
    #: False for a classifier without global token-to-token attention (CNN, hierarchical
    #: transformer): only the model-agnostic methods, no layer / head controls, no ``drop``
    token_attention = t.Bool(True).tag(sync=True)
    grid = t.List(t.Int()).tag(sync=True)
    num_images = t.Int(1).tag(sync=True)
    class_names = t.List(t.Unicode()).tag(sync=True)
    # view state
    method = t.Unicode(ATTN).tag(sync=True)
    layer = t.Int(0).tag(sync=True, echo_update=False)
    head = t.Int(-1).tag(sync=True, echo_update=False)
    query = t.Int(-1).tag(sync=True, echo_update=False)
    target = t.Int(0).tag(sync=True)
    pinned = t.Bool(False).tag(sync=True)
    image_index = t.Int(0).tag(sync=True)
    opacity = t.Float(0.6).tag(sync=True, echo_update=False)
    colormap = t.Unicode("auto").tag(sync=True)
    show_grid = t.Bool(True).tag(sync=True)
    smooth = t.Bool(False).tag(sync=True)
    # brushing
    brushed = t.List(t.Int()).tag(sync=True, echo_update=False)
    mode = t.Unicode("noise").tag(sync=True)
    keep = t.Bool(False).tag(sync=True)
    # computed (Python -> JS)
    image = t.Dict().tag(sync=True)
    topk = t.List(t.Dict()).tag(sync=True)
    map_payload = t.Dict().tag(sync=True)
    params_version = t.Int(0).tag(sync=True)
    intervention = t.Dict().tag(sync=True)
    status = t.Dict().tag(sync=True)
    offline = t.Bool(False).tag(sync=True)
    # compare grid, curves, masks, recompute-on-intervened
    compare = t.Bool(False).tag(sync=True)
    compare_methods = t.List(t.Unicode()).tag(sync=True)
    compare_payload = t.List(t.Dict()).tag(sync=True)
    curves = t.Dict().tag(sync=True)
    cx_masks = t.Dict().tag(sync=True)
    cx_mask = t.Int(-1).tag(sync=True)
    recompute = t.Bool(False).tag(sync=True)
    intervened_map = t.Dict().tag(sync=True)
    counterfactual = t.Dict().tag(sync=True)

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
        self._lock = threading.RLock()
        self._engine = ForwardEngine()  # the perturbed forwards' caches (same image: one forward per brush)
        self._images: dict[int, dict[str, Any]] = {}
        self._maps: dict[tuple, Explanation] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._curves: dict[tuple, dict[str, Any]] = {}
        self._last_input: tuple[tuple, torch.Tensor] | None = None
        self._internal = 0
        self._req = 0
        self.stats: Counter[str] = Counter()
        """How many computations ran: ``forward`` (one capture per image), ``explain:<method>``,
        ``intervene``, ``causal_score``, ``counterfactual``."""
        self.last_counterfactual: Counterfactual | None = None
        self.errors: list[str] = []
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

    # ------------------------------------------------------------------ validation

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

    def _check_target(self, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < self._num_classes:
            raise InputError(f"target must be a class index in 0..{self._num_classes - 1}, got {v!r}")
        return int(v)

    @_state.validator("method")
    def _valid_method(self, proposal: Any) -> str:
        m = proposal["value"]
        if m not in self.methods:
            get_explainer(m)  # unknown key: raises with a suggestion
            raise UnknownMethodError(
                f"method {m!r} is registered but not offered by this Explorer{suggest(m, self.methods)} "
                f"(offered: {', '.join(self.methods)}); create it with methods=[..., {m!r}]"
            )
        return m

    @_state.validator("class_names")
    def _valid_class_names(self, proposal: Any) -> list[str]:
        v = [str(n) for n in proposal["value"]]
        if len(v) != self._num_classes:
            raise InputError(f"class_names has {len(v)} entries but the model has {self._num_classes} classes")
        return v

    @t.observe("class_names")
    def _on_class_names(self, change: dict) -> None:
        self._labels = list(change["new"])
        if self._images.get(self.image_index) is not None:
            self.topk = self._topk_payload(self._images[self.image_index]["probs"])

    @_state.validator("layer")
    def _valid_layer(self, proposal: Any) -> int:
        v = proposal["value"]
        if not 0 <= v < self.num_layers:
            raise InputError(f"layer must be in 0..{self.num_layers - 1}, got {v}")
        return v

    @_state.validator("head")
    def _valid_head(self, proposal: Any) -> int:
        v = proposal["value"]
        if not -1 <= v < self.num_heads:
            raise InputError(f"head must be -1 (mean of heads) or in 0..{self.num_heads - 1}, got {v}")
        return v

    @_state.validator("query")
    def _valid_query(self, proposal: Any) -> int:
        v = proposal["value"]
        P = self.grid[0] * self.grid[1]
        if not -1 <= v < P:
            raise InputError(f"query must be -1 (CLS row) or a patch index in 0..{P - 1}, got {v}")
        return v

    @_state.validator("target")
    def _valid_target(self, proposal: Any) -> int:
        return self._check_target(proposal["value"])

    @_state.validator("image_index")
    def _valid_image(self, proposal: Any) -> int:
        v = proposal["value"]
        if not 0 <= v < self.num_images:
            raise InputError(f"image_index must be in 0..{self.num_images - 1}, got {v}")
        return v

    @_state.validator("brushed")
    def _valid_brushed(self, proposal: Any) -> list[int]:
        v = proposal["value"]
        P = self.grid[0] * self.grid[1]
        bad = [p for p in v if not 0 <= p < P]
        if bad:
            raise InputError(f"brushed patches must be row-major indices in 0..{P - 1}, got {bad[:5]}")
        return sorted({int(p) for p in v})

    @_state.validator("mode")
    def _valid_mode(self, proposal: Any) -> str:
        v = proposal["value"]
        if v not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {v!r}{suggest(v, MODES)}")
        if v == "drop" and isinstance(self._info, ClassifierInfo):
            raise not_token_mode(self._info)
        return v

    @_state.validator("compare_methods")
    def _valid_compare_methods(self, proposal: Any) -> list[str]:
        out: list[str] = []
        for m in proposal["value"]:
            if m not in self.methods:
                get_explainer(m)  # unknown key: raises with a suggestion
                raise UnknownMethodError(
                    f"compare_methods: {m!r} is not offered by this Explorer{suggest(m, self.methods)} "
                    f"(offered: {', '.join(self.methods)})"
                )
            if m not in out:
                out.append(m)
        return out

    @_state.validator("cx_mask")
    def _valid_cx_mask(self, proposal: Any) -> int:
        v = proposal["value"]
        K = int(self.cx_masks.get("K", 0)) if self.cx_masks else 0
        if v != -1 and not 0 <= v < K:
            raise InputError(
                f"cx_mask must be -1 (none) or a mask index in 0..{K - 1}, got {v}" if K else
                f"cx_mask must be -1: the current map has no masks (show ViT-CX first), got {v}"
            )
        return v

    @_state.validator("opacity")
    def _valid_opacity(self, proposal: Any) -> float:
        v = float(proposal["value"])
        if not 0.0 <= v <= 1.0:
            raise InputError(f"opacity must be in [0, 1], got {v}")
        return v

    @_state.validator("colormap")
    def _valid_colormap(self, proposal: Any) -> str:
        v = proposal["value"]
        allowed = ("auto", "viridis", "magma", "inferno", "cividis", "gray", "rdbu", "puor")
        if v not in allowed:
            raise InputError(f"colormap must be one of {', '.join(allowed)}, got {v!r}{suggest(v, allowed)}")
        return v

    # ------------------------------------------------------------------ per-image data

    def _ensure_image(self, i: int) -> dict[str, Any]:
        """One forward with attention capture per image: logits, layout, quantised attention."""
        with self._lock:
            if i in self._images:
                return self._images[i]
            if isinstance(self._info, ClassifierInfo):  # no attention to show: logits and grid only
                tr = capture_classifier(self._model, self._x[i : i + 1], input_grad=False, info=self._info)
            else:
                tr = capture(self._model, self._x[i : i + 1], Needs(attn=True))
            self.stats["forward"] += 1
            layout = tr.layout
            layers = []
            for a in tr.attn or ():
                rows = ser.attention_layer_rows(a[0].to(torch.float32), layout)
                layers.append(ser.quantize_rows(rows))
            probs = tr.logits[0].detach().to(torch.float32).softmax(-1).cpu()
            d = {
                "layout": layout,
                "logits": tr.logits[0].detach().cpu(),
                "probs": probs,
                "top": int(probs.argmax()),
                "attn": layers,
                "num_layers": max(1, len(layers)),
                "num_heads": int(tr.attn[0].shape[1]) if tr.attn else 1,
            }
            self._images[i] = d
            return d

    def _image_payload(self, i: int) -> dict[str, Any]:
        img = ser.display_image(self._x[i], self._mean, self._std)
        return {"data": img.tobytes(), "height": int(img.shape[0]), "width": int(img.shape[1])}

    def _topk_payload(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        p, idx = probs.topk(self._k)
        return [{"index": int(j), "name": self._labels[int(j)], "prob": float(v)} for v, j in zip(p, idx)]

    # ------------------------------------------------------------------ jobs

    def _set_busy(self, busy: bool, label: str) -> None:
        if bool(self.status.get("busy")) == busy and self.status.get("label", "") == label:
            return
        st = dict(self.status)
        st.update(busy=busy, label=label)
        self.status = st

    def _fail(self, what: str, exc: BaseException) -> str:
        msg = f"{what} failed — {type(exc).__name__}: {exc}"
        self.errors.append(traceback.format_exc())
        st = dict(self.status)
        st["error"] = msg
        self.status = st
        return msg

    def _clear_error(self) -> None:
        if self.status.get("error"):
            st = dict(self.status)
            st["error"] = None
            self.status = st

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the background work is done (for scripts and tests); False on time-out."""
        return self._worker.wait(timeout)

    def _params_for(self, method: str) -> dict[str, Any]:
        return dict(self._params.get(method, {}))

    def _map_key(self, i: int, method: str, target: int) -> tuple:
        cs = get_explainer(method).class_specific
        return (i, method, target if cs else None, self.params_version)

    @staticmethod
    def _js_key(key: tuple) -> str:
        i, method, target, pv = key
        return f"{i}|{method}|{'-' if target is None else target}|{pv}"

    def _map_message(self, key: tuple, ex: Explanation) -> dict[str, Any]:
        pm = ex.patch_map[0]
        return {"key": self._js_key(key), "signed": bool((pm < 0).any()), **ser.float_map(pm)}

    def _publish_map(self, key: tuple, ex: Explanation) -> None:
        """Show ``ex`` as the current map; a method with masks (ViT-CX) also sends them."""
        with self.hold_sync():
            self.map_payload = self._map_message(key, ex)
            js = self._js_key(key)
            if self.cx_masks.get("key") != js:
                self.cx_mask = -1
                self.cx_masks = self._masks_payload(key, ex) or {}

    def _masks_payload(self, key: tuple, ex: Explanation) -> dict[str, Any] | None:
        """ViT-CX's masks (K, h, w) as uint8 thumbnails (at most 64 px a side) and their causal scores."""
        masks, scores = ex.extras.get("masks"), ex.extras.get("mask_scores")
        if masks is None or scores is None:
            return None
        m = masks[0].detach().to(torch.float32).cpu()  # (K, H, W) in [0, 1]
        sc = scores[0].detach().to(torch.float32).cpu().reshape(-1)
        K, H, W = m.shape
        h, w = min(H, 64), min(W, 64)
        small = torch.nn.functional.adaptive_avg_pool2d(m[:, None], (h, w))[:, 0] if (h, w) != (H, W) else m
        u8 = (small.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
        return {"key": self._js_key(key), "method": key[1], "K": int(K), "height": h, "width": w,
                "data": np.ascontiguousarray(u8).tobytes(), "scores": [float(v) for v in sc],
                "target": int(ex.target[0])}

    def _schedule_map(self) -> None:
        method = self.method
        if method == ATTN:  # drawn by the front end from the attention cache
            return
        i, target = self.image_index, self.target
        key = self._map_key(i, method, target)
        if key in self._maps:
            self._publish_map(key, self._maps[key])
            return

        def job() -> None:
            try:
                ex = self._compute_map(key)
            except Exception as e:  # noqa: BLE001 - shown in the widget, which stays usable
                msg = self._fail(f"{LABELS.get(method, method)} on image {i + 1}", e)
                if self._current_key() == key:
                    self.map_payload = {"key": self._js_key(key), "error": msg}
                return
            if self._current_key() == key:  # else superseded while running: drop
                self._publish_map(key, ex)
                self._clear_error()

        self._worker.submit("map", f"computing {LABELS.get(method, method)}…", job)

    def _current_key(self) -> tuple | None:
        if self.method == ATTN:
            return None
        return self._map_key(self.image_index, self.method, self.target)

    def _compute_map(self, key: tuple) -> Explanation:
        with self._lock:
            if key in self._maps:
                return self._maps[key]
            i, method, target, _ = key
            tgt = self.target if target is None else target
            ex = explain(self._model, self._x[i : i + 1], method, tgt, **self._params_for(method))
            self.stats[f"explain:{method}"] += 1
            self._maps[key] = ex
            return ex

    # ------------------------------------------------------------------ compare, curves, intervened maps

    def _view_state(self) -> tuple:
        """What the current map depends on: (image, method, target, layer, head, query, params)."""
        return (self.image_index, self.method, self.target, self.layer, self.head, self.query, self.params_version)

    def _view_js(self, st: tuple) -> str:
        """The front end's key of a view (js/src/view.ts ``viewKey``): the map key; raw attention adds layer, head, query."""
        i, method, target, layer, head, query, pv = st
        if method == ATTN:
            return f"{i}|{ATTN}|{layer}|{head}|{query}|{pv}"
        return self._js_key(self._map_key(i, method, target)[:3] + (pv,))

    def _explain_view(self, st: tuple, x: torch.Tensor | None = None) -> Explanation:
        """The map of view ``st`` on ``x`` (default: the image itself, cached)."""
        i, method, target, layer, head, query, pv = st
        if x is None and method != ATTN:
            return self._compute_map(self._map_key(i, method, target)[:3] + (pv,))
        inp = self._x[i : i + 1] if x is None else x
        params = ({"layer": layer, "head": None if head < 0 else head, "query": None if query < 0 else query}
                  if method == ATTN else self._params_for(method))
        with self._lock:
            ex = explain(self._model, inp, method, target, **params)
        self.stats[f"explain{'' if x is None else '_intervened'}:{method}"] += 1
        return ex

    def _schedule_compare(self) -> None:
        """Fill ``compare_payload`` with every method of ``compare_methods`` (raw attention is drawn by the front end)."""
        if not self.compare:
            return
        i, target, pv = self.image_index, self.target, self.params_version
        todo = [m for m in self.compare_methods if m != ATTN]
        state = (i, target, pv, tuple(todo))

        def entry(m: str) -> dict[str, Any]:
            key = self._map_key(i, m, target)
            if key in self._maps:
                return {**self._map_message(key, self._maps[key]), "method": m}
            return {"key": self._js_key(key), "method": m, "pending": True}

        entries = [entry(m) for m in todo]
        self.compare_payload = entries
        if all(not e.get("pending") for e in entries):
            return

        def current() -> bool:
            return self.compare and (self.image_index, self.target, self.params_version,
                                     tuple(m for m in self.compare_methods if m != ATTN)) == state

        def job() -> None:
            out = list(entries)
            for j, m in enumerate(todo):
                if not current():
                    return  # superseded: the newer request is queued in this slot
                if not out[j].get("pending"):
                    continue
                key = self._map_key(i, m, target)
                try:
                    out[j] = {**self._map_message(key, self._compute_map(key)), "method": m}
                except Exception as e:  # noqa: BLE001 - shown in its tile
                    self.errors.append(traceback.format_exc())
                    out[j] = {"key": self._js_key(key), "method": m, "error": f"{type(e).__name__}: {e}"}
                if current():
                    self.compare_payload = list(out)

        self._worker.submit("compare", "computing the comparison…", job)

    def compute_curves(self, *, steps: int = 48, block: bool = False) -> None:
        """Deletion and insertion curves of the current map (runs in the background; result in ``curves``).

        Uses ``vit_explore.metrics`` with the ViT-native ``patch`` preset (Petsiuk et al., RISE,
        BMVC 2018, at patch granularity): patches are replaced by 0 (normalised space) from the
        most relevant down (deletion) or revealed on a zero image (insertion), scoring the
        softmax probability of the target; ``ceil(P / steps)`` patches per step.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive int, got {steps!r}")
        st = self._view_state()
        ck = (st, steps)
        if ck in self._curves:
            self.curves = self._curves[ck]
            return
        js = f"{self._view_js(st)}@{st[2]}"
        self.curves = {"key": js, "pending": True}

        def job() -> None:
            from ..metrics import deletion, insertion

            i, method, target = st[0], st[1], st[2]
            try:
                ex = self._explain_view(st)
                sal = ex.patch_map[:1].detach().to(torch.float32)
                P = int(sal[0].numel())
                step = max(1, -(-P // steps))
                x = self._x[i : i + 1]
                with self._lock:
                    d = deletion(self._model, x, sal, preset="patch", target=target, step=step)
                    ins = insertion(self._model, x, sal, preset="patch", target=target, step=step)
                self.stats["curves"] += 1
            except Exception as e:  # noqa: BLE001
                msg = self._fail(f"the deletion/insertion curves of {LABELS.get(method, method)}", e)
                if self.curves.get("key") == js:
                    self.curves = {"key": js, "error": msg}
                return
            out = {
                "key": js, "method": method, "label": LABELS.get(method, method), "image_index": i,
                "target": target, "target_name": self._labels[target], "preset": "patch", "step": step,
                "patches": P, "x": [float(v) for v in d.x],
                "deletion": [float(v) for v in d.curves[0]], "insertion": [float(v) for v in ins.curves[0]],
                "auc_deletion": float(d.auc[0]), "auc_insertion": float(ins.auc[0]),
            }
            self._curves[ck] = out
            if self.curves.get("key") == js:
                self.curves = out
                self._clear_error()

        self._worker.submit("curves", "computing deletion/insertion curves…", job)
        if block:
            self.wait()

    def _schedule_recompute(self) -> None:
        """Rerun the current view on the last intervened input (``recompute``), if it is current."""
        if not self.recompute or not self.brushed or self._last_input is None:
            return
        ident, xin = self._last_input
        if ident != self._intervention_ident():
            return  # an intervention for the current brush is on its way; it recomputes
        st = self._view_state()
        self._worker.submit("recompute", f"recomputing {LABELS.get(st[1], st[1])} on the intervened image…",
                            lambda: self._recompute_job(st, ident, xin))

    def _intervention_ident(self) -> tuple:
        return (self.image_index, tuple(self.brushed), self.mode, self.keep, self.target)

    def _recompute_job(self, st: tuple, ident: tuple, xin: torch.Tensor) -> None:
        i, method = st[0], st[1]
        base = {"key": self._view_js(st), "method": method, "label": LABELS.get(method, method), "image_index": i,
                "patches": list(ident[1]), "mode": ident[2], "keep": ident[3], "target": ident[4]}
        if ident[2] == "drop":
            self.intervened_map = {**base, "error": "“drop” removes tokens inside the model, so there is no "
                                   "intervened image to explain; pick another mode to recompute the map"}
            return
        try:
            ex = self._explain_view(st, xin)
        except Exception as e:  # noqa: BLE001
            msg = self._fail(f"{LABELS.get(method, method)} on the intervened image", e)
            self.intervened_map = {**base, "error": msg}
            return
        if self._view_state() != st or self._intervention_ident() != ident:
            return  # superseded
        img = self._image_payload_of(xin[0])
        pm = ex.patch_map[0]
        self.intervened_map = {**base, "signed": bool((pm < 0).any()), **ser.float_map(pm), "image": img}

    def _image_payload_of(self, x: torch.Tensor) -> dict[str, Any]:
        img = ser.display_image(x, self._mean, self._std)
        return {"data": img.tobytes(), "height": int(img.shape[0]), "width": int(img.shape[1])}

    def _schedule_intervention(self) -> None:
        self._req += 1
        req = self._req
        patches = list(self.brushed)
        if not patches:
            self.intervention = {}
            self.intervened_map = {}
            return
        i, mode, keep, target = self.image_index, self.mode, self.keep, self.target

        def job() -> None:
            if req != self._req:
                return
            t0 = time.perf_counter()
            try:
                from ..interventions import intervene

                with self._lock:
                    res = intervene(self._model, self._x[i : i + 1], patches, mode=mode, target=target, keep=keep,
                                    topk=self._k, engine=self._engine)
                self.stats["intervene"] += 1
            except Exception as e:  # noqa: BLE001
                msg = self._fail("the intervention", e)
                if req == self._req:
                    self.intervention = {"id": req, "image_index": i, "patches": patches, "mode": mode, "keep": keep,
                                         "target": target, "error": msg}
                return
            if req != self._req:
                return  # a newer stroke superseded this one
            out = self._intervention_payload(req, i, patches, mode, keep, target, res)
            out["ms"] = (time.perf_counter() - t0) * 1000.0
            self.intervention = out
            self._clear_error()
            try:  # the ViT-CX causal score costs extra passes: sent as a follow-up
                with self._lock:
                    cs = float(res.causal_score[0])
                self.stats["causal_score"] += 1
            except Exception as e:  # noqa: BLE001
                self._fail("the causal score", e)
                return
            if req == self._req:
                self.intervention = {**out, "causal_score": cs}
            ident = (i, tuple(patches), mode, keep, target)
            self._last_input = (ident, res.input[:1].detach())
            if self.recompute and req == self._req:
                st = self._view_state()
                if st[0] == i:
                    self._recompute_job(st, ident, res.input[:1].detach())

        self._worker.submit("intervene", "", job)

    def _intervention_payload(self, req: int, i: int, patches: list[int], mode: str, keep: bool, target: int,
                              res: Any) -> dict[str, Any]:
        probs = res.probs[0].detach().to(torch.float32).cpu()
        base = res.base_probs.reshape(-1, probs.shape[-1])[0].detach().to(torch.float32).cpu()
        names = self._labels
        after = self._topk_payload(probs)
        new_top = int(probs.argmax())
        return {
            "id": req,
            "image_index": i,
            "patches": patches,
            "mode": mode,
            "keep": keep,
            "target": target,
            "target_name": names[target],
            "before": self._topk_payload(base),
            "after": after,
            "target_before": float(base[target]),
            "target_after": float(probs[target]),
            "delta": float(probs[target] - base[target]),
            "new_top": {"index": new_top, "name": names[new_top], "prob": float(probs[new_top])},
            "causal_score": None,
        }

    def find_counterfactual(self, order_by: str = "rollout", *, block: bool = False) -> None:
        """Brush the smallest patch set found whose removal flips the prediction (runs in the background).

        The result object is kept in ``last_counterfactual``; ``block=True`` waits for it.
        """
        i, target, mode = self.image_index, self.target, self.mode

        def job() -> None:
            try:
                from ..counterfactual_search import counterfactual

                with self._lock:
                    cf = counterfactual(self._model, self._x[i : i + 1], target, mode=mode, order_by=order_by,
                                        engine=self._engine)
                assert isinstance(cf, Counterfactual)  # one image: one result
                self.stats["counterfactual"] += 1
            except Exception as e:  # noqa: BLE001
                self._fail("the counterfactual search", e)
                return
            self.last_counterfactual = cf
            if self.image_index != i:
                return
            idx = [int(j) for j in torch.nonzero(cf.patches.reshape(-1)).reshape(-1)]
            new = cf.new_class
            self.counterfactual = {
                "image_index": i, "found": bool(cf.found), "patches": idx if cf.found else [],
                "tried": int(cf.greedy_size), "mode": mode, "order_by": order_by,
                "target": int(cf.target), "target_name": self._labels[int(cf.target)],
                "target_before": float(cf.base_probs[int(cf.target)]), "target_after": float(cf.probs[int(cf.target)]),
                "new_class": None if new is None else int(new),
                "new_name": None if new is None else self._labels[int(new)],
                "new_prob": None if new is None else float(cf.probs[int(new)]),
            }
            if cf.found:
                self.brushed = idx

        self._worker.submit("counterfactual", "searching a counterfactual…", job)
        if block:
            self.wait()

    # ------------------------------------------------------------------ observers

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

    def _send_attention(self, i: int, first: int, layers: Sequence[int] | None = None) -> int:
        """Send image ``i``'s attention, block ``first`` first; returns the bytes sent."""
        try:
            d = self._ensure_image(i)
        except Exception as e:  # noqa: BLE001
            self._fail(f"reading image {i + 1}", e)
            return 0
        L = d["num_layers"]
        todo = [int(v) for v in layers] if layers else list(range(L))
        todo = sorted({v for v in todo if 0 <= v < L}, key=lambda v: (v != first, v))
        sent = 0
        for layer in todo:
            q, scales = d["attn"][layer]
            H1, R, P = q.shape
            msg = {"kind": "attn", "image_index": i, "layer": layer, "num_layers": L, "heads": H1, "rows": R, "cols": P}
            self.send(msg, buffers=[np.ascontiguousarray(q).data, np.ascontiguousarray(scales).data])
            sent += q.nbytes + scales.nbytes
        return sent

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

    def figure(self):
        """A static plotly figure: the top-k probabilities (before and, if patches are brushed,
        after) and, once ``compute_curves()`` ran for the current map, its deletion/insertion
        curves beside them (the same chart the Explorer draws)."""
        import plotly.graph_objects as go

        d = self._ensure_image(self.image_index)
        before = self._topk_payload(d["probs"])
        cv = self.curves
        has_curves = bool(cv) and "deletion" in cv and cv.get("key") == f"{self._view_js(self._view_state())}@{self.target}"
        if has_curves:
            from plotly.subplots import make_subplots

            fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], subplot_titles=(
                f"Top-{self._k} classes, image {self.image_index + 1}",
                f"{cv['label']}: deletion / insertion of “{cv['target_name']}”"))
            kw: dict[str, Any] = {"row": 1, "col": 1}
        else:
            fig = go.Figure()
            kw = {}
        r = self.intervention
        if r and r.get("after") and r.get("patches") == list(self.brushed):
            idx = [c["index"] for c in r["after"]]
            names = [self.class_names[j] for j in idx]
            fig.add_bar(name="before", x=names, y=[float(d["probs"][j]) for j in idx], **kw)
            fig.add_bar(name=f"after ({len(r['patches'])} patches, {r['mode']})", x=names,
                        y=[c["prob"] for c in r["after"]], **kw)
            fig.update_layout(barmode="group")
        else:
            fig.add_bar(name="probability", x=[c["name"] for c in before], y=[c["prob"] for c in before], **kw)
        if has_curves:
            fig.add_scatter(name=f"deletion (AUC {cv['auc_deletion']:.3f}, lower is better)", x=cv["x"],
                            y=cv["deletion"], mode="lines", line={"color": "#d62728"}, row=1, col=2)
            fig.add_scatter(name=f"insertion (AUC {cv['auc_insertion']:.3f}, higher is better)", x=cv["x"],
                            y=cv["insertion"], mode="lines", line={"color": "#1f77b4", "dash": "dash"}, row=1, col=2)
            fig.update_yaxes(title_text="probability", range=[0, 1], row=1, col=1)
            fig.update_yaxes(title_text=f"p(“{cv['target_name']}”)", range=[0, 1], row=1, col=2)
            fig.update_xaxes(title_text="fraction of patches deleted / inserted", range=[0, 1], row=1, col=2)
            fig.update_layout(template="plotly_white")
            return fig
        fig.update_layout(title=f"Top-{self._k} classes, image {self.image_index + 1}", yaxis_title="probability",
                          yaxis_range=[0, 1], template="plotly_white")
        return fig

    def to_html(self, path: str | Path | None = None, *, methods: str = "cached") -> str:
        """A standalone HTML page of this Explorer that works offline (no kernel, no network).

        Embeds the bundle, the state, every image's attention and the method maps:
        ``methods="cached"`` the maps already computed, ``"all"`` computes every offered method
        for every image and its current target first. Brushing needs a kernel and is disabled.
        """
        if methods not in ("cached", "all"):
            raise InputError(f"methods must be 'cached' or 'all', got {methods!r}")
        js_path, css_path = STATIC / "widget.js", STATIC / "widget.css"
        if not js_path.exists():
            raise FileNotFoundError(f"{js_path} is missing: build the front end with `npm ci && npm run build` in js/")
        self.wait()
        blob = bytearray()  # every binary array, back to back (8-byte aligned), gzipped into the page once

        def put(data: bytes | memoryview) -> list[int]:
            blob.extend(b"\0" * (-len(blob) % 8))
            at = len(blob)
            blob.extend(data)
            return [at, len(blob) - at]

        attn = []
        for i in range(self.num_images):
            d = self._ensure_image(i)
            for layer, (q, scales) in enumerate(d["attn"]):
                H1, R, P = q.shape
                attn.append({"image_index": i, "layer": layer, "num_layers": d["num_layers"], "heads": H1, "rows": R,
                             "cols": P, "data": put(q.tobytes()), "scales": put(scales.tobytes())})
        if methods == "all":
            for i in range(self.num_images):
                tgt = self.target if i == self.image_index else self._ensure_image(i)["top"]
                for m in self.methods:
                    if m != ATTN:
                        try:
                            self._compute_map(self._map_key(i, m, tgt))
                        except Exception as e:  # noqa: BLE001 - export what works
                            self.errors.append(f"{m} on image {i}: {e}")
        maps = []
        for key, ex in list(self._maps.items()):
            if key[3] != self.params_version:
                continue
            msg = self._map_message(key, ex)
            maps.append({"key": msg["key"], "data": put(msg["data"]), "shape": msg["shape"],
                         "dtype": msg["dtype"], "signed": msg["signed"]})
        skip = {"_esm", "_css", "layout", "tabbable", "tooltip", "_dom_classes", "comm", "keys", "log"}
        state = {k: getattr(self, k) for k in self.keys if not k.startswith("_view") and not k.startswith("_model")
                 and k not in skip}
        state["_uid"] = self._uid
        state["status"] = {"busy": False, "label": "", "error": None}
        state["map_payload"] = {}
        data = {"state": ser.jsonable_state(state), "attn": attn, "maps": maps}

        page = _HTML.format(
            title=html.escape(self.title or "vit_explore Explorer"),
            css=css_path.read_text(encoding="utf-8") if css_path.exists() else "",
            data=ser.script_json(data),
            blob=base64.b64encode(gzip.compress(bytes(blob), 6, mtime=0)).decode("ascii"),
            bundle=ser.script_json(js_path.read_text(encoding="utf-8")),
        )
        if path is not None:
            write_text_atomically(path, page)
        return page


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{margin:16px;font-family:system-ui,sans-serif}}{css}</style></head>
<body class="vx-standalone"><div id="vx-app"></div>
<script type="application/json" id="vx-data">{data}</script>
<script type="application/octet-stream" id="vx-blob" data-encoding="gzip+base64">{blob}</script>
<script type="application/json" id="vx-bundle">{bundle}</script>
<script type="module">
const src = JSON.parse(document.getElementById("vx-bundle").textContent);
const url = URL.createObjectURL(new Blob([src], {{ type: "text/javascript" }}));
const mod = await import(url);
const blob = await mod.gunzipBase64(document.getElementById("vx-blob").textContent);
window.__vxModel = mod.mountStandalone(document.getElementById("vx-app"),
  JSON.parse(document.getElementById("vx-data").textContent), blob);
</script></body></html>
"""
