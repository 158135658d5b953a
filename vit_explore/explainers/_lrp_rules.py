"""The reference's LRP rules for Chefer et al. (CVPR 2021; ``modules/layers_ours.py`` of
hila-chefer/Transformer-Explainability) as batched closed forms (docs/methods.md §4.3), shared by
``chefer_lrp.py`` and its class-attention read-out (``_chefer_class_attn.py``).

On the CPU, in float32 and float64, the element-wise parts run as the fused kernels of
``_lrp_kernels.py`` (one pass over memory instead of four to six per rule; the same numbers);
elsewhere (CUDA, half precision, tensors in autograd, broadcasting operands) as PyTorch ops."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np
import torch
import torch.nn.functional as F

from . import _lrp_kernels as K

FUSED = True  # the compiled CPU kernels; False: PyTorch ops everywhere (the tests compare both)
_CONSTANTS = {dt: np.array([1e-9, 0.5, 0.0], dtype=dt) for dt in (np.float32, np.float64)}
_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _flat(*ts: torch.Tensor) -> list[np.ndarray] | None:
    """The tensors as flat C-contiguous NumPy arrays for a kernel of ``_lrp_kernels``, or None where
    the PyTorch ops run instead: not on the CPU, not float32 / float64, a tensor that takes part in
    autograd, or operands of different shapes or dtypes (broadcasting)."""
    t0 = ts[0]
    if not FUSED or t0.device.type != "cpu" or t0.dtype not in _NP_DTYPE:
        return None
    for t in ts:
        if t.shape != t0.shape or t.dtype != t0.dtype or t.device.type != "cpu" or t.requires_grad:
            return None
    return [t.contiguous().numpy().reshape(-1) for t in ts]


def _out(like: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    out = torch.empty(like.shape, dtype=like.dtype)
    return out, out.numpy().reshape(-1)


def _consts(t: torch.Tensor) -> np.ndarray:
    return _CONSTANTS[_NP_DTYPE[t.dtype]]


_WEIGHT_BUFFERS: ContextVar[dict | None] = ContextVar("lrp_weight_buffers", default=None)


@contextlib.contextmanager
def weight_buffers() -> Iterator[None]:
    """Within it, the Linear rules write ``|W|`` into one buffer per weight shape, reused from
    layer to layer, instead of a fresh weight-sized tensor per layer (whose page faults cost
    about as much as its abs; ViT-B/16 at batch 1: ~60 ms of a ~0.8 s Chefer LRP). Per thread
    and per call (a context variable), freed on exit."""
    token = _WEIGHT_BUFFERS.set({})
    try:
        yield
    finally:
        _WEIGHT_BUFFERS.reset(token)


def _abs_weight(w: torch.Tensor) -> torch.Tensor:
    """``|w|``, in the buffer of ``weight_buffers`` when one is open (valid until the next call)."""
    pool = _WEIGHT_BUFFERS.get()
    if pool is None or w.requires_grad:
        return w.abs()
    key = (tuple(w.shape), w.dtype, w.device)
    buf = pool.get(key)
    if buf is None:
        buf = pool[key] = torch.empty(w.shape, dtype=w.dtype, device=w.device)
    return torch.abs(w, out=buf)


def sdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's ``safe_divide``: ``a / (b + 1e-9)``, 0 where ``b == 0``.

    The reference computes ``den = clamp(b, min=1e-9) + clamp(b, max=1e-9)``, which is
    ``b + 1e-9`` exactly (one clamp returns ``b``, the other ``1e-9``), replaces ``den == 0``
    by 1e-9 and multiplies by ``b != 0``; the same values here with fewer passes over memory
    (``den == 0`` only where ``b == -1e-9``, checked once, fixed only if it occurs).
    """
    f = _flat(a, b)
    if f is not None:
        out, o = _out(a)
        K.sdiv_kernel(f[0], f[1], o, _consts(a))
        return out
    den = b + 1e-9
    hole = den == 0
    if hole.any():
        den.masked_fill_(hole, 1e-9)
    return (a / den).masked_fill_(b == 0, 0.0)


def linear_rule(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, xw: torch.Tensor | None = None) -> torch.Tensor:
    """Alpha=1/beta=0 rule of a Linear (bias ignored): x (..., K), r (..., O), w (O, K) -> (..., K).

    With ``x± W±`` written through ``|x|`` and ``|W|`` (``x+ W+ + x- W- = (x W + |x| |W|) / 2``,
    ``x+ (S W+) + x- (S W-) = (x (S W) + |x| (S |W|)) / 2``) the rule reads one weight-sized
    temporary (``|W|``) instead of three (``W+``, ``W-``, ``|W|``): at batch 1 the weights are
    as large as the activations. ``xw``: ``x W^T`` if already known (the recorded output minus
    the bias), saving one matmul.
    """
    aw = _abs_weight(w)
    ax = x.abs()
    if xw is None:
        xw = F.linear(x, w)
    z = F.linear(ax, aw)
    f = _flat(r, z, xw)
    if f is not None:
        s, o = _out(r)
        K.linear_denominator_kernel(f[0], f[1], f[2], o, _consts(r))
    else:
        s = sdiv(r, z.add_(xw).mul_(0.5))  # x+ W+^T + x- W-^T >= 0
    sw, sw_abs = s @ w, s @ aw
    f = _flat(x, sw, sw_abs)
    if f is not None:
        out, o = _out(x)
        K.linear_relevance_kernel(f[0], f[1], f[2], o, _consts(x))
        return out
    return (x * sw).add_(ax.mul_(sw_abs)).mul_(0.5)


def _xw(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out - bias


def scale_rule(x: torch.Tensor, r: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """Alpha=1/beta=0 rule of an element-wise scaling ``x * g`` (LayerScale); identity if g is None."""
    if g is None:
        return r
    gp, gn = g.clamp(min=0), g.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = sdiv(r, xp * gp + xn * gn)
    return xp * (s * gp) + xn * (s * gn)


def add_rule(x0: torch.Tensor, x1: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual Add ``x0 + x1`` of (B, ...) tensors, with the rescaling per image."""
    f = _flat(x0, x1, r) if r.ndim >= 2 and r.shape[0] > 0 else None
    if f is not None:
        c = _consts(r)
        sums = np.empty((r.shape[0], 3), dtype=np.float64)
        K.add_sums_kernel(f[0], f[1], f[2], sums, c)
        a_sum, b_sum, r_sum = torch.from_numpy(sums).to(r.dtype).unbind(1)
        tot = a_sum.abs() + b_sum.abs()
        fa = sdiv(sdiv(a_sum.abs(), tot) * r_sum, a_sum)
        fb = sdiv(sdiv(b_sum.abs(), tot) * r_sum, b_sum)
        (out_a, oa), (out_b, ob) = _out(r), _out(r)
        K.add_shares_kernel(f[0], f[1], f[2], fa.numpy(), fb.numpy(), oa, ob, c)
        return out_a, out_b
    s = sdiv(r, x0 + x1)
    a, b = x0 * s, x1 * s
    dims = tuple(range(1, r.ndim))
    a_sum, b_sum = a.sum(dims, keepdim=True), b.sum(dims, keepdim=True)
    r_sum = r.sum(dims, keepdim=True)
    tot = a_sum.abs() + b_sum.abs()
    a_fact = sdiv(a_sum.abs(), tot) * r_sum
    b_fact = sdiv(b_sum.abs(), tot) * r_sum
    return a * sdiv(a_fact, a_sum), b * sdiv(b_fact, b_sum)


def clone_rule(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Merge of the two branches of a residual fork."""
    f = _flat(x, r1, r2)
    if f is not None:
        out, o = _out(x)
        K.clone_kernel(f[0], f[1], f[2], o, _consts(x))
        return out
    return x * (sdiv(r1, x) + sdiv(r2, x))


def positive_head_mean(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Chefer's ``E_h[(∇A ⊙ R_A)^+]``: g, r (B, H, ...) -> (B, ...)."""
    f = _flat(g, r) if g.ndim >= 3 else None
    if f is not None:
        B, H = g.shape[:2]
        out = torch.empty((B, *g.shape[2:]), dtype=g.dtype)
        K.positive_head_mean_kernel(f[0].reshape(B, H, -1), f[1].reshape(B, H, -1), out.numpy().reshape(B, -1),
                                    _consts(g))
        return out
    return (g * r).clamp_(min=0).mean(dim=1)
