"""Fused CPU kernels for the LRP rules of ``_lrp_rules.py`` (issue 17: Chefer LRP's speed).

PyTorch's eager CPU ops take one pass over memory each, and the reference's ``safe_divide``
alone takes six (add, two compares, any, divide, masked fill); the rules' element-wise work
then costs more than their matmuls. Each kernel here reads its operands once and writes its
result once, doing the same float operations in the same order as the PyTorch code of the rule,
so the results are bit for bit those of the PyTorch path (tested), except two sums, accumulated
in float64 here (PyTorch sums in the tensor's dtype, in its own order): the residual Add rule's
per image and the mean over the heads.

The operands are flat, C-contiguous float32 or float64 arrays of one dtype and size; ``c`` holds
the constants in that dtype, ``c = [1e-9, 0.5, 0]``, so that a float32 kernel never widens to
float64 (``x + 1e-9`` in PyTorch adds the float32 ``1e-9``). ``error_model="numpy"``: a division
by zero gives inf / nan as in PyTorch (and lets LLVM vectorise the loops).
"""

from __future__ import annotations

import numpy as np

from ._numba import compiled

_kernel = compiled(error_model="numpy")


@compiled(error_model="numpy", inline="always")
def _safe_quotient(a, b, e, zero):  # pragma: no cover - compiled
    """``safe_divide``: ``a / (b + 1e-9)``, the denominator 1e-9 where that sum is 0, 0 where ``b == 0``."""
    d = b + e
    d = e if d == 0 else d
    q = a / d
    return q if b != 0 else zero


@_kernel
def sdiv_kernel(a, b, out, c):  # pragma: no cover - compiled
    """``out = safe_divide(a, b)``."""
    e, zero = c[0], c[2]
    for i in range(out.size):
        out[i] = _safe_quotient(a[i], b[i], e, zero)


@_kernel
def linear_denominator_kernel(r, xw_abs, xw, out, c):  # pragma: no cover - compiled
    """The Linear rule's ``S = safe_divide(R, (|x| |W|ᵀ + x Wᵀ) · 0.5)``."""
    e, half, zero = c[0], c[1], c[2]
    for i in range(out.size):
        out[i] = _safe_quotient(r[i], (xw_abs[i] + xw[i]) * half, e, zero)


@_kernel
def linear_relevance_kernel(x, sw, sw_abs, out, c):  # pragma: no cover - compiled
    """The Linear rule's ``R_x = (x (S W) + |x| (S |W|)) · 0.5``."""
    half = c[1]
    for i in range(out.size):
        xi = x[i]
        out[i] = (xi * sw[i] + abs(xi) * sw_abs[i]) * half


@_kernel
def clone_kernel(x, r1, r2, out, c):  # pragma: no cover - compiled
    """The Clone rule ``x (safe_divide(R1, x) + safe_divide(R2, x))``."""
    e, zero = c[0], c[2]
    for i in range(out.size):
        xi = x[i]
        out[i] = xi * (_safe_quotient(r1[i], xi, e, zero) + _safe_quotient(r2[i], xi, e, zero))


@_kernel
def add_sums_kernel(x0, x1, r, sums, c):  # pragma: no cover - compiled
    """The residual Add rule's per-image sums: ``sums[b] = (Σ x0 S, Σ x1 S, Σ R)`` with
    ``S = safe_divide(R, x0 + x1)``, over the ``x0.size // B`` elements of image b (float64)."""
    e, zero = c[0], c[2]
    B = sums.shape[0]
    m = x0.size // B
    for b in range(B):
        sa, sb, sr = 0.0, 0.0, 0.0
        for i in range(b * m, (b + 1) * m):
            s = _safe_quotient(r[i], x0[i] + x1[i], e, zero)
            sa += x0[i] * s
            sb += x1[i] * s
            sr += r[i]
        sums[b, 0], sums[b, 1], sums[b, 2] = sa, sb, sr


@_kernel
def add_shares_kernel(x0, x1, r, fa, fb, out_a, out_b, c):  # pragma: no cover - compiled
    """The residual Add rule's shares ``(x0 S) f_a[b]`` and ``(x1 S) f_b[b]`` per image b."""
    e, zero = c[0], c[2]
    B = fa.shape[0]
    m = x0.size // B
    for b in range(B):
        ka, kb = fa[b], fb[b]
        for i in range(b * m, (b + 1) * m):
            s = _safe_quotient(r[i], x0[i] + x1[i], e, zero)
            out_a[i] = (x0[i] * s) * ka
            out_b[i] = (x1[i] * s) * kb


@_kernel
def positive_head_mean_kernel(g, r, out, c):  # pragma: no cover - compiled
    """Chefer's ``E_h[(∇A ⊙ R_A)^+]``: g, r (B, H, M) -> out (B, M), the heads summed in float64
    (``clamp(min=0)``: a NaN stays NaN)."""
    B, H, M = g.shape
    zero = c[2]
    acc = np.empty(M)
    for b in range(B):
        acc[:] = 0.0
        for h in range(H):
            for j in range(M):
                p = g[b, h, j] * r[b, h, j]
                acc[j] += zero if p < zero else p  # noqa: FURB136 (max() would drop a NaN)
        for j in range(M):
            out[b, j] = acc[j] / H
