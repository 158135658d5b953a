"""Explainers: one module per method, each a pure function over a captured ``Trace``.

Modules in this package register themselves on import; every public module is imported
the first time the registry is consulted, so a new method only adds a file.
"""

from __future__ import annotations

from ._registry import ExplainerResult, ExplainerSpec, get_explainer, list_methods, register_explainer

__all__ = ["ExplainerResult", "ExplainerSpec", "get_explainer", "list_methods", "register_explainer"]

