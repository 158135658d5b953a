"""The Explorer's synced traits and their validators (every value from Python or the front end
passes one of them; ``_state`` says which traits the front end may set), the constants that
name their allowed values, and the instance state the other parts of the Explorer share."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets as t

from ..capture.classifier import ClassifierInfo, not_token_mode
from ..errors import InputError, UnknownMethodError, suggest
from ..explainers import get_explainer
from . import _state
from ._contract import ATTN, LABELS, MODES  # noqa: F401 - LABELS re-exported to _payloads and _explorer
from ._teaching import TeachingTraits

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..capture.adapters import ViTInfo
    from ..explanation import Explanation
    from ..perturb import ForwardEngine
    from ._teaching import Teaching
    from ._worker import RequestIds, _Worker

COLORMAPS = ("auto", "viridis", "magma", "inferno", "cividis", "gray", "rdbu", "puor")


class ExplorerTraits(TeachingTraits):
    """The Explorer's synced state (see ``Explorer``'s docstring) and its validators."""

    # instance state, set in Explorer.__init__ and shared by the payloads, jobs and export
    _model: nn.Module
    _info: ViTInfo | ClassifierInfo
    _x: torch.Tensor
    _labels: list[str]
    _mean: tuple[float, ...]
    _std: tuple[float, ...]
    _k: int
    _num_classes: int
    _lock: threading.RLock
    _engine: ForwardEngine
    _images: dict[int, dict[str, Any]]
    _maps: dict[tuple, Explanation]
    _params: dict[str, dict[str, Any]]
    _curves: dict[tuple, dict[str, Any]]
    _last_input: tuple[tuple, torch.Tensor] | None
    _internal: int
    _ids: RequestIds
    _worker: _Worker
    _teaching: Teaching
    stats: Counter[str]
    errors: list[str]
    last_counterfactual: Any

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
        if v not in COLORMAPS:
            raise InputError(f"colormap must be one of {', '.join(COLORMAPS)}, got {v!r}{suggest(v, COLORMAPS)}")
        return v
