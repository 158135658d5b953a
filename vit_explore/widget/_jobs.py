"""The Explorer's jobs: what runs on its worker thread (``_worker``), each in its slot and
dropped when superseded: maps, the compare grid, deletion/insertion curves, interventions (with
request ids) and their causal score, maps recomputed on the intervened image, counterfactual
searches and attention messages; plus the busy/error status they report."""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..api import explain
from ..explanation import Explanation
from . import _serialize as ser
from ._payloads import ExplorerPayloads
from ._traits import ATTN, LABELS


class ExplorerJobs(ExplorerPayloads):
    """Scheduling and running the Explorer's background work."""

    # ------------------------------------------------------------------ status

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

    @property
    def _req(self) -> int:
        """The id of the newest intervention request (``intervention["id"]`` once it is shown)."""
        return self._ids.last("intervene")

    # ------------------------------------------------------------------ maps

    def _params_for(self, method: str) -> dict[str, Any]:
        return dict(self._params.get(method, {}))

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

    def _current_key(self) -> tuple | None:
        if self.method == ATTN:
            return None
        return self._map_key(self.image_index, self.method, self.target)

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

    def _send_attention(self, i: int, first: int, layers: Sequence[int] | None = None) -> int:
        """Send image ``i``'s attention, block ``first`` first; returns the bytes sent."""
        try:
            self._ensure_image(i)
        except Exception as e:  # noqa: BLE001
            self._fail(f"reading image {i + 1}", e)
            return 0
        sent = 0
        for msg, q, scales in self._attention_messages(i, first, layers):
            self.send(msg, buffers=[np.ascontiguousarray(q).data,  # type: ignore[attr-defined]
                                    np.ascontiguousarray(scales).data])
            sent += q.nbytes + scales.nbytes
        return sent

    # ------------------------------------------------------------------ compare, curves

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

    def _schedule_curves(self, steps: int) -> None:
        """Deletion and insertion curves of the current view into ``curves`` (see ``compute_curves``)."""
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
            out = self._curves_payload(js, st, step, P, d, ins)
            self._curves[ck] = out
            if self.curves.get("key") == js:
                self.curves = out
                self._clear_error()

        self._worker.submit("curves", "computing deletion/insertion curves…", job)

    # ------------------------------------------------------------------ interventions

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

    def _schedule_intervention(self) -> None:
        req = self._ids.new("intervene")
        patches = list(self.brushed)
        if not patches:
            self.intervention = {}
            self.intervened_map = {}
            return
        i, mode, keep, target = self.image_index, self.mode, self.keep, self.target

        def current() -> bool:
            return self._ids.current("intervene", req)

        def job() -> None:
            if not current():
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
                if current():
                    self.intervention = {"id": req, "image_index": i, "patches": patches, "mode": mode, "keep": keep,
                                         "target": target, "error": msg}
                return
            if not current():
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
            if current():
                self.intervention = {**out, "causal_score": cs}
            ident = (i, tuple(patches), mode, keep, target)
            self._last_input = (ident, res.input[:1].detach())
            if self.recompute and current():
                st = self._view_state()
                if st[0] == i:
                    self._recompute_job(st, ident, res.input[:1].detach())

        self._worker.submit("intervene", "", job)

    def _schedule_counterfactual(self, order_by: str) -> None:
        """The counterfactual search of the current image (see ``find_counterfactual``)."""
        i, target, mode = self.image_index, self.target, self.mode

        def job() -> None:
            try:
                from ..counterfactual_search import counterfactual

                with self._lock:
                    cf = counterfactual(self._model, self._x[i : i + 1], target, mode=mode, order_by=order_by,
                                        engine=self._engine)
                assert not isinstance(cf, list)  # one image: one result
                self.stats["counterfactual"] += 1
            except Exception as e:  # noqa: BLE001
                self._fail("the counterfactual search", e)
                return
            self.last_counterfactual = cf
            if self.image_index != i:
                return
            payload, idx = self._counterfactual_payload(i, mode, order_by, cf)
            self.counterfactual = payload
            if cf.found:
                self.brushed = idx

        self._worker.submit("counterfactual", "searching a counterfactual…", job)
