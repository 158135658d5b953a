"""``numba.njit`` with the machine code cached on disk, shared by the compiled kernels
(``_lrp_kernels.py``, ``_maxflow_kernel.py``, ``_vit_cx_kernels.py``)."""

from __future__ import annotations

from typing import Any

from numba import njit


def compiled(fastmath: set[str] | bool = False, error_model: str = "python", inline: str = "never"):
    """``numba.njit(cache=True, ...)``; where numba finds no writable place for the cache (a
    read-only install and home) the function is compiled anew in each process instead of
    failing (numba raises "cannot cache function" at decoration otherwise).

    ``error_model="numpy"``: a float division by zero gives inf / nan as in NumPy and PyTorch
    instead of raising, which also lets LLVM vectorise the division."""

    def deco(fn: Any) -> Any:
        opts: dict[str, Any] = {"fastmath": fastmath, "error_model": error_model, "inline": inline}
        try:
            return njit(cache=True, **opts)(fn)
        except RuntimeError:
            return njit(cache=False, **opts)(fn)

    return deco
