"""What the Explorer sends to the front end: the per-image data (one forward with attention
capture), the image, top-k, map, mask, intervention, counterfactual and curve payloads, and the
keys the front end files them under (js/src/view.ts ``viewKey``). Wire formats: ``_serialize``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..capture.classifier import ClassifierInfo, capture_classifier
from ..capture.session import Needs, capture
from ..explainers import get_explainer
from ..explanation import Explanation
from . import _serialize as ser
from ._contract import attention_view_key, map_key
from ._traits import ATTN, LABELS, ExplorerTraits


class ExplorerPayloads(ExplorerTraits):
    """Payload builders of the Explorer (pure reads of its state and caches)."""

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

    def _attention_messages(self, i: int, first: int = 0, layers: Sequence[int] | None = None,
                            ) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
        """Image ``i``'s attention as ``(message, uint8 rows, float32 scales)`` per block, ``first`` first."""
        d = self._ensure_image(i)
        L = d["num_layers"]
        todo = [int(v) for v in layers] if layers else list(range(L))
        for layer in sorted({v for v in todo if 0 <= v < L}, key=lambda v: (v != first, v)):
            q, scales = d["attn"][layer]
            H1, R, P = q.shape
            yield ({"kind": "attn", "image_index": i, "layer": layer, "num_layers": L, "heads": H1, "rows": R,
                    "cols": P}, q, scales)

    def _image_payload(self, i: int) -> dict[str, Any]:
        return self._image_payload_of(self._x[i])

    def _image_payload_of(self, x: torch.Tensor) -> dict[str, Any]:
        img = ser.display_image(x, self._mean, self._std)
        return {"data": img.tobytes(), "height": int(img.shape[0]), "width": int(img.shape[1])}

    def _topk_payload(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        p, idx = probs.topk(self._k)
        return [{"index": int(j), "name": self._labels[int(j)], "prob": float(v)} for v, j in zip(p, idx)]

    # ------------------------------------------------------------------ keys

    def _map_key(self, i: int, method: str, target: int) -> tuple:
        cs = get_explainer(method).class_specific
        return (i, method, target if cs else None, self.params_version)

    @staticmethod
    def _js_key(key: tuple) -> str:
        i, method, target, pv = key
        return map_key(i, method, target, pv)

    def _view_state(self) -> tuple:
        """What the current map depends on: (image, method, target, layer, head, query, params)."""
        return (self.image_index, self.method, self.target, self.layer, self.head, self.query, self.params_version)

    def _view_js(self, st: tuple) -> str:
        """The front end's key of a view (js/src/view_context.ts ``viewKey``): the map key; raw attention adds layer,
        head, query."""
        i, method, target, layer, head, query, pv = st
        if method == ATTN:
            return attention_view_key(i, layer, head, query, pv)
        return self._js_key(self._map_key(i, method, target)[:3] + (pv,))

    def _intervention_ident(self) -> tuple:
        return (self.image_index, tuple(self.brushed), self.mode, self.keep, self.target)

    # ------------------------------------------------------------------ maps

    def _map_message(self, key: tuple, ex: Explanation) -> dict[str, Any]:
        pm = ex.patch_map[0]
        return {"key": self._js_key(key), "signed": bool((pm < 0).any()), **ser.float_map(pm)}

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

    def _publish_map(self, key: tuple, ex: Explanation) -> None:
        """Show ``ex`` as the current map; a method with masks (ViT-CX) also sends them."""
        with self.hold_sync():  # type: ignore[attr-defined]  # ipywidgets.Widget
            self.map_payload = self._map_message(key, ex)
            js = self._js_key(key)
            if self.cx_masks.get("key") != js:
                self.cx_mask = -1
                self.cx_masks = self._masks_payload(key, ex) or {}

    # ------------------------------------------------------------------ results of jobs

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

    def _counterfactual_payload(self, i: int, mode: str, order_by: str, cf: Any) -> tuple[dict[str, Any], list[int]]:
        """The ``counterfactual`` trait of a search result, and the patches it found (row-major)."""
        idx = [int(j) for j in torch.nonzero(cf.patches.reshape(-1)).reshape(-1)]
        new = cf.new_class
        tgt = int(cf.target)
        return {
            "image_index": i, "found": bool(cf.found), "patches": idx if cf.found else [],
            "tried": int(cf.greedy_size), "mode": mode, "order_by": order_by,
            "target": tgt, "target_name": self._labels[tgt],
            "target_before": float(cf.base_probs[tgt]), "target_after": float(cf.probs[tgt]),
            "new_class": None if new is None else int(new),
            "new_name": None if new is None else self._labels[int(new)],
            "new_prob": None if new is None else float(cf.probs[int(new)]),
        }, idx

    def _curves_payload(self, js: str, st: tuple, step: int, P: int, d: Any, ins: Any) -> dict[str, Any]:
        """The ``curves`` trait: deletion ``d`` and insertion ``ins`` curves of view ``st``."""
        i, method, target = st[0], st[1], st[2]
        return {
            "key": js, "method": method, "label": LABELS.get(method, method), "image_index": i,
            "target": target, "target_name": self._labels[target], "preset": "patch", "step": step,
            "patches": P, "x": [float(v) for v in d.x],
            "deletion": [float(v) for v in d.curves[0]], "insertion": [float(v) for v in ins.curves[0]],
            "auc_deletion": float(d.auc[0]), "auc_insertion": float(ins.auc[0]),
        }
