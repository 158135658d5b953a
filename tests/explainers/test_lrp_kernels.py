"""The fused CPU kernels of the LRP rules (explainers/_lrp_kernels.py) against the PyTorch ops they
replace (bit for bit where the kernel does the same float operations in the same order; the two
float64-accumulated sums against a float64 restatement), their edge cases, the fall-backs, and
the per-call |W| buffers."""

import threading

import pytest
import torch

import vit_explore as vx
from vit_explore.explainers import _lrp_rules as R
from vit_explore.testing import tiny_vit

from ..conftest import input_for, model_state

DTYPES = [torch.float32, torch.float64]


def _both(monkeypatch, fn, *args):
    """fn(*args) with the kernels, then with the PyTorch ops (fresh copies of the operands each time)."""
    monkeypatch.setattr(R, "FUSED", True)
    fused = fn(*[a.clone() for a in args])
    monkeypatch.setattr(R, "FUSED", False)
    plain = fn(*[a.clone() for a in args])
    monkeypatch.setattr(R, "FUSED", True)
    return fused, plain


def _operands(dtype, shape=(2, 3, 17, 19), seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=dtype)
    b = torch.randn(shape, generator=g, dtype=dtype)
    b[b.abs() < 0.3] = 0  # the zero rule
    b.view(-1)[:3] = -1e-9  # b + 1e-9 == 0: the reference's denominator becomes 1e-9
    return a, b


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdiv_bit_for_bit_and_edge_cases(monkeypatch, dtype):
    a, b = _operands(dtype)
    fused, plain = _both(monkeypatch, R.sdiv, a, b)
    assert torch.equal(fused, plain)
    eps = torch.tensor(1e-9, dtype=dtype)
    assert torch.equal(fused[b == 0], torch.zeros_like(fused[b == 0]))
    hole = b == -eps  # b + 1e-9 rounds to 0 in this dtype
    if hole.any():
        assert torch.equal(fused[hole], a[hole] / eps)
    rest = (b != 0) & ~hole
    assert torch.equal(fused[rest], a[rest] / (b[rest] + eps))
    nan_b = b.clone()
    nan_b.view(-1)[5] = float("nan")
    assert torch.isnan(R.sdiv(a, nan_b).view(-1)[5])  # NaN is not zero: it propagates, as in PyTorch


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_and_clone_rules_bit_for_bit(monkeypatch, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 13, 24, generator=g, dtype=dtype)
    x[0, 0, :5] = 0
    w = torch.randn(40, 24, generator=g, dtype=dtype)
    r = torch.randn(2, 13, 40, generator=g, dtype=dtype)
    fused, plain = _both(monkeypatch, R.linear_rule, x, r, w)
    assert torch.equal(fused, plain)
    xw = torch.nn.functional.linear(x, w)
    fused, plain = _both(monkeypatch, lambda *t: R.linear_rule(*t), x, r, w, xw)
    assert torch.equal(fused, plain)
    r1, r2 = torch.randn(2, 13, 24, generator=g, dtype=dtype), torch.randn(2, 13, 24, generator=g, dtype=dtype)
    fused, plain = _both(monkeypatch, R.clone_rule, x, r1, r2)
    assert torch.equal(fused, plain)
    assert torch.equal(fused[0, 0, :5], torch.zeros(5, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rule_and_head_mean_against_float64(monkeypatch, dtype):
    """The two kernels that sum (in float64) against a float64 restatement; the PyTorch path sums in
    the dtype, so it is held to the same tolerance, not to equality."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 11, 16, generator=g, dtype=dtype)
    x1 = torch.randn(3, 11, 16, generator=g, dtype=dtype)
    r = torch.randn(3, 11, 16, generator=g, dtype=dtype)
    d0, d1, dr = x0.double(), x1.double(), r.double()
    s = torch.where(d0 + d1 == 0, 0.0, dr / (d0 + d1 + 1e-9))
    a, b = d0 * s, d1 * s
    sa, sb, sr = a.sum((1, 2), keepdim=True), b.sum((1, 2), keepdim=True), dr.sum((1, 2), keepdim=True)
    want_a = a * (sa.abs() / (sa.abs() + sb.abs() + 1e-9) * sr / (sa + 1e-9))
    want_b = b * (sb.abs() / (sa.abs() + sb.abs() + 1e-9) * sr / (sb + 1e-9))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for out in _both(monkeypatch, R.add_rule, x0, x1, r):
        torch.testing.assert_close(out[0].double(), want_a, rtol=tol, atol=tol * want_a.abs().max().item())
        torch.testing.assert_close(out[1].double(), want_b, rtol=tol, atol=tol * want_b.abs().max().item())
    gr = torch.randn(2, 5, 7, 7, generator=g, dtype=dtype)
    ra = torch.randn(2, 5, 7, 7, generator=g, dtype=dtype)
    want = (gr.double() * ra.double()).clamp(min=0).mean(1)
    for out in _both(monkeypatch, R.positive_head_mean, gr, ra):
        assert out.shape == (2, 7, 7) and out.dtype == dtype
        torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


def test_fallbacks_broadcasting_autograd_noncontiguous():
    a = torch.randn(4, 5)
    col = torch.randn(4, 1)
    col[1] = 0
    out = R.sdiv(a, col)  # broadcasting: the PyTorch ops
    assert torch.equal(out[1], torch.zeros(5)) and torch.allclose(out[0], a[0] / (col[0] + 1e-9))
    b = torch.randn(4, 5, requires_grad=True)
    y = R.sdiv(a, b)  # a tensor in autograd: the PyTorch ops, so the gradient flows
    y.sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()
    x = torch.randn(5, 4).t()  # not contiguous
    assert torch.equal(R.sdiv(x, x + 1), R.sdiv(x.contiguous(), x.contiguous() + 1))
    h = torch.randn(4, 5, dtype=torch.float16)
    assert R.sdiv(h, h).dtype == torch.float16  # half precision: the PyTorch ops


@pytest.mark.parametrize("variant", ["vanilla", "distilled", "gap", "layerscale"])
def test_chefer_lrp_fused_equals_pytorch_ops(monkeypatch, variant):
    model = tiny_vit(variant)
    x = input_for(model, batch=3, seed=5)
    fused, plain = _both(monkeypatch, lambda x: vx.explain(model, x, "chefer_lrp", target=1).patch_map, x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
    model64 = tiny_vit(variant).double()
    fused, plain = _both(monkeypatch, lambda x: vx.explain(model64, x, "chefer_lrp", target=1).patch_map, x.double())
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12 * plain.abs().max().item())


def test_weight_buffers_reused_per_shape_and_scoped_per_thread():
    w1, w2 = torch.randn(6, 4), torch.randn(6, 4)
    with R.weight_buffers():
        a1 = R._abs_weight(w1)
        assert torch.equal(a1, w1.abs())
        a2 = R._abs_weight(w2)
        assert a2.data_ptr() == a1.data_ptr() and torch.equal(a2, w2.abs())  # the same buffer, rewritten
        seen = []
        t = threading.Thread(target=lambda: seen.append(R._WEIGHT_BUFFERS.get()))
        t.start()
        t.join()
        assert seen == [None]  # another thread has no buffers of this call
    assert R._WEIGHT_BUFFERS.get() is None
    assert R._abs_weight(w1).data_ptr() != R._abs_weight(w2).data_ptr()  # outside: fresh tensors


def test_chefer_lrp_leaves_weights_and_state():
    model = tiny_vit("vanilla")
    before, weights = model_state(model), [p.detach().clone() for p in model.parameters()]
    vx.explain(model, input_for(model, batch=2, seed=3), "chefer_lrp", target=0)
    assert model_state(model) == before
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), weights))  # |W| went into buffers, not into W
