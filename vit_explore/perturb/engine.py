"""The forward engine: runs a model on perturbed inputs, batched, with the caches of the
caller that holds it.

A ``ForwardEngine`` keeps, for the last (model, image batch) it saw: the checked input and
model inspection (``setup``), the unmodified logits (``base_logits``) and the substrates of
that batch (``substrate``). A brush on the same image therefore costs one forward of the
brushed input. The Explorer holds one engine; a call without one gets a fresh engine (no
cache outlives the call). An engine is thread-safe: one lock keeps each read-check-write whole.

Every hit is checked: the model must be the same object with an unchanged ``fingerprint``
(``scan``: version counters, hooks, and a content probe), and the image batch must be equal.
"""

from __future__ import annotations

import itertools
import numbers
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..capture.ablation import drop_tokens, forward_logits
from ..capture.classifier import ModelInfo, check_logits, inspect_model, layout_any
from ..capture.state import scan as _scan_model
from ..errors import InputError, suggest
from ..inputs import check_finite, check_tensor
from .regions import blend
from .substrates import PIXEL_MODES, SUBSTRATE_PARAMS, substrate

__all__ = ["MODES", "ForwardEngine", "Setup", "check_mode", "model_fingerprint", "nothing_left", "scan"]

MODES: tuple[str, ...] = (*PIXEL_MODES, "drop")
"""``vx.intervene``'s modes: the pixel substrates, and ``drop`` (remove the patch tokens)."""


def check_mode(mode: str) -> None:
    """Raise ``InputError`` unless ``mode`` is one of ``MODES``."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}{suggest(str(mode), MODES)} (modes: {', '.join(MODES)})")


@dataclass(frozen=True)
class Setup:
    """A checked input for a model.

    Attributes:
        info: a ViT's, or any classifier's (pixel modes only; its grid is the analysis grid).
        x: (B, 3, H, W) the checked input.
        grid: (gh, gw) patch grid.
        token: names the content of ``x`` for the engine that made it.
    """

    info: ModelInfo
    x: torch.Tensor
    grid: tuple[int, int]
    token: int


def scan(model: nn.Module) -> tuple[list[nn.Module], tuple]:
    """``capture.state.scan`` plus a content probe of every parameter and buffer.

    The version counters in ``scan``'s fingerprint miss a write through ``.data``
    (``head.weight.data.mul_(-1)``: ``.data`` is a view with its own counter), so the key also
    holds, per tensor, the sum of up to 256 evenly spaced elements: an edit through ``.data``
    that changes any of them (a scaling, a fill, a copy of other weights, added noise) drops
    the cached forward. An edit of single elements between the probed ones is not seen; edits
    through the parameter itself always are (its version counter)."""
    mods, fp = _scan_model(model)
    probes = []
    with torch.no_grad():
        for m in mods:
            for t in itertools.chain(m._parameters.values(), m._buffers.values()):
                if t is not None and t.numel() and not t.is_meta:
                    flat = t.detach().reshape(-1)
                    probes.append(flat[:: max(1, flat.numel() // 256)].sum(dtype=torch.float64))
    probe = tuple(torch.stack(probes).cpu().tolist()) if probes else ()
    return mods, (*fp, probe)


def model_fingerprint(model: nn.Module) -> tuple:
    """The fingerprint half of ``scan(model)`` (this module's, with the content probe)."""
    return scan(model)[1]


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return (
        a is not None and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    )


def nothing_left() -> InputError:
    """The error for ``drop`` of every patch of a model that pools the patch tokens (an average, or
    an attention pool (MAP) whose latent query attends over them)."""
    return InputError(
        "mode 'drop' would remove every patch token of a global-average-pool or attention-pool (MAP) model, "
        "leaving nothing to average; keep at least one patch or use another mode"
    )


class ForwardEngine:
    """Runs a model on perturbed inputs; owns the caches of its holder (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._last_x: dict[str, Any] = {"x": None, "token": 0}
        self._base: dict[str, Any] = {}
        self._setup: dict[str, Any] = {}
        self._substrates: dict[str, Any] = {"token": -1, "by_key": {}}

    # ------------------------------------------------------------------ inputs

    def image_token(self, x: torch.Tensor) -> int:
        """A number that names the content of ``x``: the same as last call's iff ``x`` equals the
        last image batch seen (one comparison per call, shared by the caches)."""
        with self._lock:
            if not _same_tensor(self._last_x["x"], x):
                self._last_x.update(x=x.detach().clone(), token=self._last_x["token"] + 1)
            return self._last_x["token"]

    def setup(self, model: nn.Module, x: torch.Tensor, fp: tuple | None = None,
              info: ModelInfo | None = None) -> Setup:
        """Check ``x`` (B, 3, H, W) or (3, H, W) against ``model``. With ``fp``
        (``model_fingerprint(model)``), the setup of the last call is reused when the model is
        the same object, unchanged (parameters and hooks), and ``x`` equals that call's input:
        a brush on the same image skips the model inspection and the input checks. ``info``: the
        caller's own inspection of the model (explain's, e.g. a headless model for a callable target)."""
        if isinstance(x, torch.Tensor) and x.ndim == 3:
            x = x[None]
        if fp is not None and isinstance(x, torch.Tensor):
            with self._lock:
                ref = self._setup.get("model")
                if ref is not None and ref() is model and self._setup["fp"] == fp and _same_tensor(self._setup["raw"], x):
                    return self._setup["setup"]
        info = inspect_model(model) if info is None else info
        xc = check_tensor(info, x, model, finite=False)
        token = self.image_token(xc)
        if self._last_x.get("finite") != token:  # a batch equal to one already checked is finite (NaN != NaN)
            check_finite(xc)
            with self._lock:
                self._last_x["finite"] = token
        H, W = xc.shape[-2:]
        setup = Setup(info, xc, layout_any(info, H, W).grid, token)
        if fp is not None:
            with self._lock:
                # the copy image_token just kept is x's own content unless check_tensor moved or cast x
                # (that copy is only ever replaced, never written to)
                same = xc is x and self._last_x["token"] == token
                raw = self._last_x["x"] if same else x.detach().clone()
                self._setup.update(model=weakref.ref(model), fp=fp, raw=raw, setup=setup)
        return setup

    # ------------------------------------------------------------------ the unmodified forward

    def base_logits(
        self, model: nn.Module, x: torch.Tensor, batch_size: int | None = None, fp: tuple | None = None
    ) -> torch.Tensor:
        """Logits (B, C) of the unmodified ``x``, cached for the last (model, image batch).

        The cache is hit only when the model is the same object with unchanged parameters
        (in-place version counters) and hooks, and ``x`` is equal to the cached batch.
        ``fp``: ``model_fingerprint(model)`` if the caller already has it.
        """
        return self.base_for(model, x, self.image_token(x), model_fingerprint(model) if fp is None else fp, batch_size)

    def base_for(
        self, model: nn.Module, x: torch.Tensor, token: int, fp: tuple, batch_size: int | None = None
    ) -> torch.Tensor:
        """``base_logits`` of ``x`` when its content token is known (a ``Setup`` has it)."""
        logits = self._cached_base(model, token, fp)
        if logits is None:
            logits = check_logits(model, forward_logits(model, x, batch_size))
            self._store_base(model, token, logits, fp)
        return logits

    def _store_base(self, model: nn.Module, token: int, logits: torch.Tensor, fp: tuple) -> None:
        with self._lock:
            self._base.clear()
            self._base.update(model=weakref.ref(model), fp=fp, token=token, logits=logits.detach())

    def _cached_base(self, model: nn.Module, token: int, fp: tuple | None) -> torch.Tensor | None:
        with self._lock:
            ref = self._base.get("model")
            if ref is not None and ref() is model and self._base["token"] == token and self._base["fp"] == fp:
                return self._base["logits"]
            return None

    # ------------------------------------------------------------------ substrates

    def substrate(self, x: torch.Tensor, token: int, mode: str, **params: Any) -> torch.Tensor:
        """``substrates.substrate`` of the image batch ``token`` names, kept per mode and the
        parameters that mode depends on: a brush on the same image does not blur (or draw noise
        for) it again, and the causal score reuses the noise of a ``noise`` brush."""
        key = (mode, *(params[k] for k in SUBSTRATE_PARAMS[mode]))
        with self._lock:
            if self._substrates["token"] != token:
                self._substrates.update(token=token, by_key={})
            by_key = self._substrates["by_key"]
            if key not in by_key:
                by_key[key] = substrate(x, mode, **params)
            return by_key[key]

    def blend(self, s: Setup, regions: torch.Tensor, img_idx: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """``regions.blend`` on the setup's input (K, C, H, W)."""
        return blend(s.x, regions, img_idx, S, s.grid, s.info.patch_size)

    # ------------------------------------------------------------------ perturbed forwards

    def run_regions(
        self,
        model: nn.Module,
        s: Setup,
        regions: torch.Tensor,
        img_idx: torch.Tensor,
        mode: str,
        *,
        seed: int = 0,
        sigma: float = 0.1,
        blur_size: int = 11,
        blur_sigma: float = 5.0,
        batch_size: int | None = None,
        with_base: bool = True,
        fp: tuple | None = None,
        mods: Sequence[nn.Module] | None = None,
        keep_fed: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """Act on ``regions`` (K, gh, gw) of images ``img_idx`` (K,); all sets batched.

        Returns (logits (K, C), base logits (B, C) or None, fed input (K, 3, H, W), kept indices or None).
        The unmodified forward is taken from the cache when possible, else fused into the batch.
        ``fp``, ``mods``: ``model_fingerprint(model)`` and ``submodules(model)`` if the caller
        already has them. ``keep_fed=False``: fed is returned as None, and in a pixel mode each pass's
        inputs are blended just before it, so one pass of inputs is in memory instead of all K
        (occlusion of 8 ViT-B/16 images: 1568 inputs, 0.9 GB, and as much again in each of blend's
        two gathers); the passes are the same, so are the logits.
        """
        check_mode(mode)
        if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or batch_size < 1):
            raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
        x = s.x
        if with_base and fp is None:
            mods, fp = scan(model)
        token = s.token
        base = self._cached_base(model, token, fp) if with_base else None
        need_base = with_base and base is None
        if mode != "drop":
            S = self.substrate(x, token, mode, seed=seed, sigma=sigma, blur_size=blur_size, blur_sigma=blur_sigma)
            head = x if need_base else None
            fed: torch.Tensor | None = None
            if keep_fed:
                fed = self.blend(s, regions, img_idx, S)
                out = forward_logits(model, fed if head is None else torch.cat([head, fed]), batch_size, mods)
            else:
                out = self._streamed_logits(model, s, regions, img_idx, S, head, batch_size, mods)
            out = check_logits(model, out)
            if need_base:
                assert fp is not None
                base, out = out[: x.shape[0]], out[x.shape[0] :]
                self._store_base(model, token, base, fp)
            return out, base, fed, None
        # drop: remove tokens; group the sets by number of kept patches
        if need_base:
            assert fp is not None
            base = self.base_for(model, s.x, s.token, fp, batch_size)
        P = s.grid[0] * s.grid[1]
        if len(regions) == 1 == x.shape[0]:  # one brush on one image: no grouping
            logits, kept1 = self.drop_one(model, s, regions.reshape(-1).tolist(), mods)
            return logits, base, x, (torch.tensor(kept1, dtype=torch.long),)
        kept_flat = ~regions.reshape(-1, P)
        if s.info.readout in ("avg", "cls_avg", "map") and not bool(kept_flat.any(dim=1).all()):
            raise nothing_left()
        counts = kept_flat.sum(1)
        kept = tuple(torch.nonzero(kept_flat[k]).reshape(-1) for k in range(len(kept_flat)))
        res: torch.Tensor | None = None
        for n in torch.unique(counts).tolist():
            rows = torch.nonzero(counts == n).reshape(-1)
            step = len(rows) if batch_size is None else batch_size
            for i in range(0, len(rows), step):
                r = rows[i : i + step]
                imgs, src = torch.unique(img_idx[r], return_inverse=True)
                keep = torch.stack([kept[int(k)] for k in r]) if n else torch.zeros(len(r), 0, dtype=torch.long)
                with drop_tokens(model, keep, src, checked=True):
                    lg = forward_logits(model, x[imgs.to(x.device)])
                if res is None:
                    res = lg.new_empty(len(regions), lg.shape[1])
                res[r.to(lg.device)] = lg
        assert res is not None
        return res, base, x[img_idx.to(x.device)] if keep_fed else None, kept

    def _streamed_logits(
        self, model: nn.Module, s: Setup, regions: torch.Tensor, img_idx: torch.Tensor, S: torch.Tensor,
        head: torch.Tensor | None, batch_size: int | None, mods: Sequence[nn.Module] | None,
    ) -> torch.Tensor:
        """Logits of ``cat([head, blend(regions)])`` in the passes of ``batch_size`` (None: one)
        that ``forward_logits`` makes of that stack, each pass's rows blended just before it."""
        n_head = 0 if head is None else len(head)
        total = n_head + len(regions)
        step = batch_size or total
        out: torch.Tensor | None = None
        for a in range(0, total, step):
            b = min(a + step, total)
            parts = [] if head is None or a >= n_head else [head[a : min(b, n_head)]]
            lo, hi = max(a - n_head, 0), b - n_head
            if hi > lo:
                parts.append(self.blend(s, regions[lo:hi], img_idx[lo:hi], S))
            lg = forward_logits(model, parts[0] if len(parts) == 1 else torch.cat(parts), None, mods)
            if out is None:  # written in place: no small result per pass left between the passes' large buffers
                out = lg.new_empty(total, *lg.shape[1:])
            out[a:b] = lg
        assert out is not None
        return out

    def drop_one(
        self, model: nn.Module, s: Setup, cells: list[bool], mods: Sequence[nn.Module] | None
    ) -> tuple[torch.Tensor, list[int]]:
        """Logits (1, C) of a one-image batch without the patches where ``cells`` (row-major) is
        True, and the kept patch indices."""
        kept = [i for i, c in enumerate(cells) if not c]
        if s.info.readout in ("avg", "cls_avg", "map") and not kept:
            raise nothing_left()
        with drop_tokens(model, kept, checked=True):
            return forward_logits(model, s.x, mods=mods), kept
