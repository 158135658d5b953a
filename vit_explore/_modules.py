"""The module tree walked as a plain list (``nn.Module.modules()`` costs about 10x more on a
small ViT, which matters on every call when the forward itself takes a few milliseconds).
Shared by the input checks (``_checks.py``) and the model state of ``capture/state.py``."""

from __future__ import annotations

from torch import nn


def submodules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` (itself included) once, breadth first (``model.modules()``
    gives the same set depth first)."""
    out = [model]
    seen = {model}  # modules hash by identity
    for m in out:  # the list grows while it is read: breadth first
        for c in m._modules.values():
            if c is not None and c not in seen:
                seen.add(c)
                out.append(c)
    return out
