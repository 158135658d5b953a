"""Kernel side of the Explorer's teaching views: logit lens, token similarity, head attribution
with live head ablation, activation patching, and the guided tour (front end: js/src/lens.ts,
similarity.ts, headattr.ts, patching.ts, tour.ts).

Requests arrive as custom messages ``{"kind": ...}`` (``KINDS``) and are answered by one custom
message of the same kind with float32 buffers. The logit lens of an image is computed once
(every layer, every patch, every class) and sent compactly: the read-out probabilities (L, C)
and the per-patch probabilities of one class (L, gh, gw), more classes on request.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import traitlets as t

from ..attribution import head_attribution
from ..capture.ablation import ablate_heads, forward_logits
from ..errors import InputError
from ..lens import logit_lens, token_similarity
from ..patching import patch_activations
from ._contract import TEACHING_KINDS, TOUR_PANELS

KINDS = TEACHING_KINDS
PANELS = TOUR_PANELS
STEP_KEYS = ("title", "text", "method", "layer", "head", "query", "opacity", "show_grid", "panel")


def default_tour() -> list[dict[str, Any]]:
    """The workshop tour: patches, embedding, attention at the first, a middle and the last
    block, read-out, class. Layers ``"first"``, ``"middle"``, ``"last"`` fit any depth."""
    return [
        {"title": "Patches", "text": "The image is cut into a grid of square patches. Each patch becomes one token: "
         "the model never sees pixels one by one, only these tiles.", "opacity": 0.0, "show_grid": True,
         "method": "raw_attention", "layer": "first", "head": -1, "query": -1},
        {"title": "Embedding", "text": "Each patch is flattened and projected to a vector, and a position embedding "
         "is added; a class token (CLS) joins them. Click a patch in the similarity view: at the first block, "
         "similar-looking patches have similar tokens.", "panel": "similarity", "layer": "first",
         "opacity": 0.6},
        {"title": "Attention, first block", "text": "Every token attends to every other. The map shows how much "
         "the read-out token looks at each patch in the first block: usually broad and local.",
         "method": "raw_attention", "layer": "first", "head": -1, "query": -1, "panel": "heads"},
        {"title": "Attention, a middle block", "text": "In the middle blocks the heads specialise: step through "
         "the heads (, and .) to see each one's pattern.", "method": "raw_attention", "layer": "middle",
         "head": -1, "query": -1},
        {"title": "Attention, last block", "text": "In the last block the read-out token gathers what it needs "
         "from the patches that matter for the class.", "method": "raw_attention", "layer": "last", "head": -1,
         "query": -1},
        {"title": "Read-out", "text": "The logit lens reads the class out after every block with the model's own "
         "final norm and head: watch the prediction form across the blocks.", "panel": "lens", "layer": "last"},
        {"title": "Class", "text": "The class with the highest probability is the prediction. The head grid shows "
         "each head's direct contribution to it; switch heads off (ablation) to see which ones it needs.",
         "panel": "heads", "layer": "last"},
    ]


def check_tour(tour: object, num_layers: int, num_heads: int, methods: Sequence[str]) -> list[dict[str, Any]]:
    """Validate a tour (a list of step dicts, ``STEP_KEYS``) and resolve its layers to indices."""
    if tour is None:
        return []
    if isinstance(tour, (Mapping, str, bytes)) or not isinstance(tour, Sequence):
        raise InputError(f"tour must be a list of step dicts, got {type(tour).__name__}")
    out = []
    for k, step in enumerate(tour):
        if not isinstance(step, Mapping):
            raise InputError(f"tour step {k} must be a dict, got {type(step).__name__}")
        bad = sorted(set(step) - set(STEP_KEYS))
        if bad:
            raise InputError(f"tour step {k} has unknown key(s) {', '.join(map(repr, bad))}; allowed: {', '.join(STEP_KEYS)}")
        s: dict[str, Any] = {}
        for key in ("title", "text"):
            if not isinstance(step.get(key, ""), str):
                raise InputError(f"tour step {k}: {key} must be a str")
            s[key] = str(step.get(key, ""))
        if not s["title"] and not s["text"]:
            raise InputError(f"tour step {k} needs a title or a text")
        if "layer" in step:
            s["layer"] = _tour_layer(step["layer"], num_layers, k)
        if "head" in step:
            h = step["head"]
            if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not -1 <= int(h) < num_heads:
                raise InputError(f"tour step {k}: head {h!r} is out of range (-1 for the mean, 0..{num_heads - 1})")
            s["head"] = int(h)
        if "query" in step:
            q = step["query"]
            if isinstance(q, bool) or not isinstance(q, numbers.Integral) or int(q) < -1:
                raise InputError(f"tour step {k}: query must be -1 (the read-out row) or a patch index, got {q!r}")
            s["query"] = int(q)
        if "method" in step:
            if step["method"] not in methods:
                raise InputError(f"tour step {k}: method {step['method']!r} is not one of the Explorer's methods "
                                 f"({', '.join(methods)})")
            s["method"] = str(step["method"])
        if "opacity" in step:
            o = step["opacity"]
            if isinstance(o, bool) or not isinstance(o, numbers.Real) or not 0.0 <= float(o) <= 1.0:
                raise InputError(f"tour step {k}: opacity must be in [0, 1], got {o!r}")
            s["opacity"] = float(o)
        if "show_grid" in step:
            s["show_grid"] = bool(step["show_grid"])
        if "panel" in step:
            if step["panel"] not in PANELS:
                raise InputError(f"tour step {k}: panel must be one of {', '.join(PANELS)}, got {step['panel']!r}")
            s["panel"] = str(step["panel"])
        out.append(s)
    return out


def _tour_layer(v: object, L: int, k: int) -> int:
    named = {"first": 0, "middle": L // 2, "last": L - 1}
    if isinstance(v, str) and v in named:
        return named[v]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not -L <= int(v) < L:
        raise InputError(f"tour step {k}: layer {v!r} is out of range (0..{L - 1}, negative from the end, "
                         "or 'first', 'middle', 'last')")
    return int(v) % L


class TeachingTraits(t.HasTraits):
    """Synced state of the teaching views (mixed into ``Explorer``)."""

    tour = t.List(t.Dict()).tag(sync=True)
    tour_step = t.Int(-1).tag(sync=True)

    @t.validate("tour_step")
    def _valid_tour_step(self, proposal: Any) -> int:
        v, n = proposal["value"], len(self.tour)
        if not -1 <= v < n:
            raise t.TraitError(f"tour_step must be in -1..{n - 1} (-1: the tour is closed), got {v}")
        return v


def _f32(a: torch.Tensor) -> memoryview:
    return np.ascontiguousarray(a.detach().to(torch.float32).cpu().numpy()).data


class Teaching:
    """Answers the teaching views' requests for one ``Explorer`` (on its worker thread)."""

    def __init__(self, w: Any, tour: object) -> None:
        self.w = w
        self._lens: dict[int, Any] = {}
        self._attr: dict[tuple[int, int], Any] = {}
        steps = default_tour() if tour == "default" else tour
        w.tour = check_tour(steps, w.num_layers, w.num_heads, list(w.methods))

    # ------------------------------------------------------------------ dispatch

    def handle(self, content: Mapping[str, Any]) -> bool:
        """Run a teaching request in the background; False if ``content`` is not one."""
        kind = content.get("kind") if isinstance(content, Mapping) else None
        if kind not in KINDS:
            return False
        w = self.w
        try:
            i = self._int(content, "image_index", 0, w.num_images - 1)
        except InputError as e:
            w._fail(f"the {kind} request", e)
            return True
        rid = content.get("id")

        def job() -> None:
            try:
                msg, bufs = getattr(self, f"_{kind}")(i, content)
            except Exception as e:  # noqa: BLE001
                err = w._fail(f"the {kind.replace('_', ' ')} view", e)
                w.send({"kind": kind, "id": rid, "image_index": i, "error": err})
                return
            w.send({"kind": kind, "id": rid, "image_index": i, **msg}, buffers=bufs)

        w._worker.submit(f"teach:{kind}", "", job)
        return True

    @staticmethod
    def _int(content: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
        v = content.get(key)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= int(v) <= hi:
            raise InputError(f"{key} must be an int in {lo}..{hi}, got {v!r}")
        return int(v)

    def _x(self, i: int) -> torch.Tensor:
        return self.w._x[i : i + 1]

    # ------------------------------------------------------------------ requests

    def lens(self, i: int):
        if i not in self._lens:
            with self.w._lock:
                self._lens[i] = logit_lens(self.w._model, self._x(i), tokens="all")
            self.w.stats["logit_lens"] += 1
        return self._lens[i]

    def _lens_request(self, i: int, content: Mapping[str, Any]):
        lens = self.lens(i)
        C = lens.readout.shape[-1]
        c = self._int(content, "target", 0, C - 1)
        L = lens.readout.shape[1]
        gh, gw = lens.layout.grid
        msg = {"num_layers": L, "num_classes": C, "grid": [gh, gw], "target": c}
        return msg, [_f32(lens.probs[0]), _f32(self._patch_probs(lens, c))]

    def _lens_class(self, i: int, content: Mapping[str, Any]):
        lens = self.lens(i)
        c = self._int(content, "target", 0, lens.readout.shape[-1] - 1)
        return {"target": c, "grid": list(lens.layout.grid)}, [_f32(self._patch_probs(lens, c))]

    @staticmethod
    def _patch_probs(lens: Any, c: int) -> torch.Tensor:
        """(L, gh, gw) each patch's logit-lens probability of class ``c``."""
        return lens.patches[0].softmax(-1)[..., c]

    def _similarity(self, i: int, content: Mapping[str, Any]):
        w = self.w
        layer = self._int(content, "layer", 0, w.num_layers - 1)
        gh, gw = w.grid
        q = self._int(content, "query", 0, gh * gw - 1)
        with w._lock:
            sim = token_similarity(w._model, self._x(i), layer, q)
        w.stats["similarity"] += 1
        return {"layer": layer, "query": q, "grid": [gh, gw]}, [_f32(sim[0])]

    def attribution(self, i: int, target: int):
        key = (i, target)
        if key not in self._attr:
            with self.w._lock:
                self._attr[key] = head_attribution(self.w._model, self._x(i), target)
            self.w.stats["head_attribution"] += 1
        return self._attr[key]

    def _head_attr(self, i: int, content: Mapping[str, Any]):
        c = self._int(content, "target", 0, self.w._num_classes - 1)
        ha = self.attribution(i, c)
        L, H = ha.direct.shape[1:]
        msg = {"target": c, "num_layers": L, "num_heads": H, "prob": float(ha.prob[0]), "logit": float(ha.logit[0])}
        return msg, [_f32(ha.direct[0]), _f32(ha.ablation[0])]

    def _heads_plan(self, content: Mapping[str, Any]) -> dict[int, list[int]]:
        heads = content.get("heads")
        if not isinstance(heads, list):
            raise InputError(f"heads must be a list of [layer, head] pairs, got {heads!r}")
        plan: dict[int, list[int]] = {}
        for pair in heads:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise InputError(f"heads must be [layer, head] pairs, got {pair!r}")
            plan.setdefault(int(pair[0]), []).append(int(pair[1]))
        return plan

    def _probs_message(self, i: int, probs: torch.Tensor, c: int) -> dict[str, Any]:
        w = self.w
        base = w._ensure_image(i)["probs"]
        p = probs.detach().to(torch.float32).cpu()
        return {"target": c, "after": w._topk_payload(p), "before": w._topk_payload(base),
                "target_before": float(base[c]), "target_after": float(p[c])}

    def _ablate(self, i: int, content: Mapping[str, Any]):
        w = self.w
        c = self._int(content, "target", 0, w._num_classes - 1)
        plan = self._heads_plan(content)
        with w._lock, ablate_heads(w._model, plan):  # validates layers and heads
            logits = forward_logits(w._model, self._x(i))
        w.stats["ablate"] += 1
        heads = sorted([[layer, h] for layer, hs in plan.items() for h in hs])
        return {"heads": heads, **self._probs_message(i, logits[0].softmax(-1), c)}, []

    def _patch(self, i: int, content: Mapping[str, Any]):
        w = self.w
        c = self._int(content, "target", 0, w._num_classes - 1)
        src = self._int(content, "source_index", 0, w.num_images - 1)
        layer = self._int(content, "layer", 0, w.num_layers - 1)
        pos = content.get("positions")
        if not isinstance(pos, list) or not pos:
            raise InputError(f"positions must be a non-empty list of patch indices, got {pos!r}")
        with w._lock:
            probs = patch_activations(w._model, w._x[src : src + 1], self._x(i), layer, [int(p) for p in pos])
        w.stats["patch"] += 1
        msg = {"source_index": src, "layer": layer, "positions": sorted({int(p) for p in pos})}
        return {**msg, **self._probs_message(i, probs[0], c)}, []
