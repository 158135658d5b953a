"""The method registry: name -> ``ExplainerSpec`` (timm's ``register_model`` pattern)."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .._checks import check_annotated, param_hints
from ..capture.layout import TokenLayout
from ..capture.session import Needs
from ..errors import InputError, UnknownMethodError, suggest
from ..targets import ScoreTarget

Kind = Literal["trace", "model"]

@dataclass(frozen=True)
class ExplainerResult:
    """What an explainer returns when a bare (B, gh, gw) tensor is not enough.

    ``logits``, ``target`` and ``layout`` are filled by model-level explainers (which run
    their own passes); ``extras`` holds method-specific outputs (pixel maps, masks, scores).
    """

    patch_map: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    target: torch.Tensor | ScoreTarget | None = None
    layout: TokenLayout | None = None


@dataclass(frozen=True)
class ExplainerSpec:
    """A registered method.

    Attributes:
        name: method key.
        fn: ``fn(trace, **params)`` for kind ``"trace"``; ``fn(model, x, *, target, **params)``
            for kind ``"model"`` (methods that need several passes).
        needs: what the capture must record, or a function of the bound params returning it.
        kind: ``"trace"`` or ``"model"``.
        class_specific: whether the map depends on the target class.
        paper: citation; reference: reference implementation.
        defaults: keyword parameters and their defaults, read from ``fn``'s signature.
        checks_finite: a model-level explainer that raises the NaN-input error itself (once
            its first forward pass gives a non-finite output, which a NaN or infinite pixel
            always does in a ViT), so ``explain`` skips its up-front scan of the input.
    """

    name: str
    fn: Callable[..., Any]
    needs: Needs | Callable[[Mapping[str, Any]], Needs]
    kind: Kind
    class_specific: bool
    paper: str
    reference: str
    defaults: Mapping[str, Any]
    checks_finite: bool = False

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and reject unknown parameters."""
        unknown = [k for k in params if k not in self.defaults]
        if unknown:
            k = unknown[0]
            valid = ", ".join(self.defaults) or "none"
            raise InputError(
                f"method {self.name!r} has no parameter {k!r}{suggest(k, self.defaults)} (parameters: {valid})"
            )
        hints = _hints(self.fn)
        for k, v in params.items():  # types (and seeds' range) from fn's annotations
            if k in hints:
                check_annotated(k, v, hints[k])
        return {**self.defaults, **params}

    def needs_for(self, params: Mapping[str, Any]) -> Needs:
        return self.needs(params) if callable(self.needs) else self.needs


@functools.cache
def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    return param_hints(fn)


_REGISTRY: dict[str, ExplainerSpec] = {}
_LOADED = False  # every explainer module imported


def _load_all() -> None:
    """Import every public module of the explainers package (each registers itself), once."""
    global _LOADED
    if _LOADED:
        return
    for mod in pkgutil.iter_modules(sys.modules[__package__].__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")
    _LOADED = True


_NO_NEEDS = Needs()  # frozen: safe to share as a default


def register_explainer(
    name: str,
    *,
    needs: Needs | Callable[[Mapping[str, Any]], Needs] = _NO_NEEDS,
    kind: Kind = "trace",
    class_specific: bool,
    paper: str,
    reference: str,
    checks_finite: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an explainer under ``name``; a duplicate name raises.

    ``checks_finite``: see ``ExplainerSpec`` (model-level explainers only)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"explainer {name!r} is already registered")
        sig = inspect.signature(fn)
        skip = {"trace"} if kind == "trace" else {"model", "x", "target", "info"}
        defaults = {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name not in skip and p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        if checks_finite and kind != "model":
            raise ValueError(f"explainer {name!r}: checks_finite is for model-level explainers")
        _REGISTRY[name] = ExplainerSpec(name, fn, needs, kind, class_specific, paper, reference, defaults, checks_finite)
        return fn

    return deco


def get_explainer(name: str) -> ExplainerSpec:
    """Look up a method by key, with a suggestion for near misses."""
    _load_all()
    if not isinstance(name, str):
        raise UnknownMethodError(f"method must be a string key, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise UnknownMethodError(
        f"unknown method {name!r}{suggest(name, list(_REGISTRY))} See vit_explore.list_methods()."
    )


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method keys, optionally filtered with a shell-style pattern (``"*rollout*"``)."""
    _load_all()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]
