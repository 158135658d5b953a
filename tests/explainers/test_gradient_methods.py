"""Gradient explainers against plain float64 replicas written here (docs/methods.md §4.5, §5, §7, §8, §9).

Every replica runs one image at a time from the float32 input, in float64, with loops over
layers and heads, gradients from torch autograd on tests/replica.py's forward (or, where a
method needs a detached attention input or intermediate features, a plain restatement of it).
"""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.testing import tiny_vit

from ..conftest import input_for, model_state, raising_in_backward
from ..replica import readout_rows, replica_forward, tokens_into_blocks

METHODS = ["chefer_generic", "attn_grad_cam", "grad_cam", "ag_cam", "tam", "saliency", "integrated_gradients"]


# ---------------------------------------------------------------- float64 building blocks
def embed64(model, x):
    """Tokens entering block 0, in float64, differentiable w.r.t. the (B, 3, H, W) image."""
    pe = model.patch_embed
    t = F.conv2d(x.double(), pe.proj.weight.double(), pe.proj.bias.double(), stride=pe.proj.stride)
    t = t.flatten(2).transpose(1, 2)
    B = t.shape[0]
    prefix = [model.cls_token] if model.cls_token is not None else []
    if getattr(model, "dist_token", None) is not None:
        prefix.append(model.dist_token)
    if model.reg_token is not None:
        prefix.append(model.reg_token)
    prefix = [p.double().expand(B, -1, -1) for p in prefix]
    pos = model.pos_embed.double()
    if model.no_embed_class:
        return torch.cat(prefix + [t + pos], dim=1)
    return torch.cat(prefix + [t], dim=1) + pos


def forward64(model, tokens, detach_attn=False):
    """A plain float64 forward; returns logits, attention, scores and each block's norm1 output.

    ``detach_attn`` cuts the gradient at every attention input (AG-CAM's ``x.detach()``).
    """
    record = {}
    logits, attns, scores = replica_forward(model, tokens, detach_attn_input=detach_attn, record=record)
    return logits, attns, scores, record["norm1"]


def top1(model, x):
    with torch.no_grad():
        return model(x).argmax(-1)


def pass64(model, xb, t, score="logit"):
    """One image (1, 3, H, W): float64 attention, their gradients, and the target score."""
    logits, attns, _scores = replica_forward(model, embed64(model, xb))
    y = logits[0, t] if score == "logit" else logits.softmax(-1)[0, t]
    grads = torch.autograd.grad(y, attns)
    return [a.detach()[0] for a in attns], [g[0] for g in grads]


def grid(v, model, x):
    gh, gw = x.shape[-2] // model.patch_embed.patch_size[0], x.shape[-1] // model.patch_embed.patch_size[1]
    return v.reshape(gh, gw)


def assert_matches(ours, ref, rtol=1e-4):
    """Raw values to float32 tolerance, and after per-image min-max within 1e-3."""
    ref = ref.to(torch.float64)
    ours = ours.to(torch.float64)
    scale = ref.abs().amax().clamp(min=1e-12)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=float(scale) * 1e-5)
    for o, r in zip(ours, ref):
        if float(r.max() - r.min()) > 1e-8 * float(scale):
            on = (o - o.min()) / (o.max() - o.min())
            rn = (r - r.min()) / (r.max() - r.min())
            assert float((on - rn).abs().max()) < 1e-3


# ---------------------------------------------------------------- replicas of each method
def chefer_generic_ref(model, x, t, start=0):
    out = []
    for b in range(x.shape[0]):
        A, G = pass64(model, x[b : b + 1], int(t[b]))
        N = A[0].shape[-1]
        R = torch.eye(N, dtype=torch.float64)
        for l in range(start, len(A)):
            cam = torch.zeros(N, N, dtype=torch.float64)
            for h in range(A[l].shape[0]):
                cam += (G[l][h] * A[l][h]).clamp(min=0)
            R = R + (cam / A[l].shape[0]) @ R
        # the read-out row of R - I (docs/methods.md §5): for a class token the reference's row of R
        out.append(grid(readout_rows(R - torch.eye(N, dtype=torch.float64), model), model, x))
    return torch.stack(out)


def attn_grad_cam_ref(model, x, t, layer=-1):
    out = []
    for b in range(x.shape[0]):
        A, G = pass64(model, x[b : b + 1], int(t[b]))
        a, g = readout_rows(A[layer], model), readout_rows(G[layer], model)  # (H, P)
        cam = sum(g[h].mean() * a[h] for h in range(a.shape[0])) / a.shape[0]
        out.append(grid(cam.clamp(min=0), model, x))
    return torch.stack(out)


def grad_cam_ref(model, x, t, layer=-1):
    T = model.num_prefix_tokens
    out = []
    for b in range(x.shape[0]):
        logits, _, _, norm1 = forward64(model, embed64(model, x[b : b + 1]))
        act = norm1[layer]
        g = torch.autograd.grad(logits[0, int(t[b])], act)[0][0, T:]  # (P, C)
        act = act.detach()[0, T:]
        cam = torch.zeros(act.shape[0], dtype=torch.float64)
        for c in range(act.shape[1]):
            cam += g[:, c].mean() * act[:, c]
        out.append(grid(cam.clamp(min=0), model, x))
    return torch.stack(out)


def ag_cam_ref(model, x, t):
    out = []
    for b in range(x.shape[0]):
        logits, attns, scores, _ = forward64(model, embed64(model, x[b : b + 1]), detach_attn=True)
        grads = torch.autograd.grad(logits[0, int(t[b])], attns)
        total = 0
        for l in range(len(attns)):
            for h in range(attns[l].shape[1]):
                m = grads[l][0, h].clamp(min=0) * torch.sigmoid(scores[l][0, h].detach())
                total = total + readout_rows(m, model)
        out.append(grid(total, model, x))
    return torch.stack(out)


def tam_ref(model, x, t, start=0, steps=20, score="logit", with_integral=True, first_state=False):
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].double()
        A, _ = pass64(model, xb, int(t[b]), score)
        L = len(A)
        full = lambda m: _readout_all(m, model)
        s = full(A[-1].mean(0))
        if not first_state:
            for i in range(L - 2, start - 1, -1):
                s = s @ A[i].mean(0) + s
        total = 0
        alphas = np.linspace(0, 1, steps) if with_integral else [1.0]
        for alpha in alphas:
            _, G = pass64(model, xb * float(alpha), int(t[b]), score)
            total = total + G[-1]
        W = full((total / len(alphas)).clamp(min=0).mean(0))
        out.append(grid((s * W)[model.num_prefix_tokens :], model, x))
    return torch.stack(out)


def _readout_all(m, model):
    """Read-out row of an (N, N) matrix, all N columns."""
    T = model.num_prefix_tokens
    if model.global_pool == "avg":
        return m[T:].mean(0)
    if hasattr(model, "head_dist"):
        return (m[0] + m[1]) / 2
    return m[0]


def patch_sum_ref(pixel, model):
    ph, pw = model.patch_embed.patch_size
    H, W = pixel.shape
    out = torch.zeros(H // ph, W // pw, dtype=pixel.dtype)
    for i in range(H // ph):
        for j in range(W // pw):
            out[i, j] = pixel[i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].sum()
    return out


def input_grad64(model, xb, t):
    xb = xb.double().requires_grad_(True)
    logits, _, _ = replica_forward(model, embed64(model, xb))
    return torch.autograd.grad(logits[0, t], xb)[0][0], logits[0, t].item()


def saliency_ref(model, x, t):
    maps, pixels = [], []
    for b in range(x.shape[0]):
        g, _ = input_grad64(model, x[b : b + 1], int(t[b]))
        pixel = g.abs().max(dim=0).values
        pixels.append(pixel)
        maps.append(patch_sum_ref(pixel, model))
    return torch.stack(maps), torch.stack(pixels)


def ig_ref(model, x, t, baseline, steps):
    """Trapezoid rule over np.linspace(0, 1, steps); signed, summed over channels."""
    maps, attrs = [], []
    for b in range(x.shape[0]):
        xb, x0 = x[b].double(), baseline[b].double()
        total = torch.zeros_like(xb)
        for k, alpha in enumerate(np.linspace(0, 1, steps)):
            w = 1.0 / (steps - 1) * (0.5 if k in (0, steps - 1) else 1.0)
            g, _ = input_grad64(model, (x0 + alpha * (xb - x0))[None], int(t[b]))
            total += w * g
        attr = (xb - x0) * total
        attrs.append(attr)
        maps.append(patch_sum_ref(attr.sum(0), model))
    return torch.stack(maps), torch.stack(attrs)


# ---------------------------------------------------------------- against the replicas
def test_forward64_agrees_with_the_shared_replica(model, x):
    tokens = embed64(model, x)
    torch.testing.assert_close(tokens, tokens_into_blocks(model, x), rtol=0, atol=1e-5)
    a = replica_forward(model, tokens)[0]
    torch.testing.assert_close(forward64(model, tokens)[0], a)
    torch.testing.assert_close(forward64(model, tokens, detach_attn=True)[0], a)


@pytest.mark.parametrize("start", [0, 1])
def test_chefer_generic_matches_replica(model, x, start):
    t = top1(model, x)
    ex = vx.explain(model, x, "chefer_generic", start_layer=start)
    assert torch.equal(ex.target, t)
    assert_matches(ex.patch_map, chefer_generic_ref(model, x, t, start))


def test_attn_grad_cam_matches_replica(model, x):
    t = torch.tensor([1, 4, 6])
    for layer in (-1, 0):
        ex = vx.explain(model, x, "attn_grad_cam", target=t, layer=layer)
        assert_matches(ex.patch_map, attn_grad_cam_ref(model, x, t, layer))


def test_grad_cam_matches_replica(model, x):
    t = top1(model, x)
    for layer in (-1, 1, "blocks.-1.norm1"):
        ex = vx.explain(model, x, "grad_cam", layer=layer)
        ref_layer = layer if isinstance(layer, int) else -1
        assert_matches(ex.patch_map, grad_cam_ref(model, x, t, ref_layer))


def test_grad_cam_equals_pytorch_grad_cam_restated(model, x):
    """pytorch-grad-cam's GradCAM, restated literally: forward hook + tensor hook on the
    target layer, vit reshape_transform, weights = mean over (2, 3), ReLU of the weighted sum."""
    target_layer = model.blocks[-1].norm1
    T = model.num_prefix_tokens
    gh, gw = x.shape[-2] // 8, x.shape[-1] // 8
    store = {}

    def fwd(module, inp, out):
        store["act"] = out.detach()
        out.register_hook(lambda g: store.__setitem__("grad", g.detach()))

    def reshape_transform(tensor):
        result = tensor[:, T:, :].reshape(tensor.size(0), gh, gw, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    h = target_layer.register_forward_hook(fwd)
    try:
        out = model(x)
        t = out.argmax(-1)
        model.zero_grad()
        sum(out[i, t[i]] for i in range(x.shape[0])).backward()
    finally:
        h.remove()
        model.zero_grad(set_to_none=True)
    activations = reshape_transform(store["act"]).numpy()
    grads = reshape_transform(store["grad"]).numpy()
    weights = np.mean(grads, axis=(2, 3))
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    cam = np.maximum(cam, 0)
    ex = vx.explain(model, x, "grad_cam")
    torch.testing.assert_close(ex.patch_map, torch.from_numpy(cam), rtol=1e-5, atol=1e-6)


def test_grad_cam_on_the_last_block_output_of_a_gap_model():
    model = tiny_vit("gap")
    x = input_for(model)
    t = top1(model, x)
    ex = vx.explain(model, x, "grad_cam", layer="blocks.-1")
    assert ex.extras["layer"] == "blocks.2"
    ref = []
    for b in range(x.shape[0]):
        store = []
        h = model.blocks[-1].register_forward_hook(lambda m, a, o, store=store: store.append(o))
        try:
            out = model(x[b : b + 1])
        finally:
            h.remove()
        g = torch.autograd.grad(out[0, t[b]], store[0])[0][0].double()
        act = store[0].detach()[0].double()
        ref.append((act @ g.mean(0)).clamp(min=0).reshape(4, 4))
    model.zero_grad(set_to_none=True)
    assert float(ex.patch_map.abs().max()) > 0
    assert_matches(ex.patch_map, torch.stack(ref))


def test_ag_cam_matches_replica(model, x):
    t = top1(model, x)
    ex = vx.explain(model, x, "ag_cam")
    assert_matches(ex.patch_map, ag_cam_ref(model, x, t))


def test_ag_cam_detaching_changes_the_gradients():
    """The detached attention input matters: without it the layer maps differ."""
    model = tiny_vit()
    x = input_for(model)
    trace = vx.capture(model, x, vx.Needs(attn_grad=True, scores=True))
    plain = sum(
        trace.layout.read(trace.attn_grad_at(i).clamp(min=0) * torch.sigmoid(trace.scores_at(i))).sum(1)
        for i in range(3)
    )
    assert not torch.allclose(plain, vx.explain(model, x, "ag_cam").patch_map, atol=1e-6)


def test_tam_matches_replica(model, x):
    x = x[:2]
    t = top1(model, x)
    ex = vx.explain(model, x, "tam", steps=5)
    assert_matches(ex.patch_map, tam_ref(model, x, t, steps=5))


def test_tam_defaults_are_the_references():
    d = vx.get_explainer("tam").defaults
    assert d["steps"] == 20 and d["start_layer"] == 0 and d["with_integral"] and not d["first_state"]
    assert d["target_score"] == "logit"


@pytest.mark.parametrize("variant", ["vanilla", "distilled"])
@pytest.mark.parametrize(
    "kw",
    [{"start_layer": 1, "steps": 4}, {"target_score": "prob", "steps": 4}, {"with_integral": False},
     {"first_state": True, "steps": 3}, {"internal_batch_size": 3, "steps": 4}, {"start_layer": -1, "steps": 2}],
)
def test_tam_options_match_replica(variant, kw):
    model = tiny_vit(variant)
    x = input_for(model, batch=2, seed=2)
    t = torch.tensor([3, 5])
    ex = vx.explain(model, x, "tam", target=t, **kw)
    ref = tam_ref(
        model, x, t, start=kw.get("start_layer", 0) % 3, steps=kw.get("steps", 20),
        score=kw.get("target_score", "logit"), with_integral=kw.get("with_integral", True),
        first_state=kw.get("first_state", False),
    )
    assert_matches(ex.patch_map, ref)


def test_saliency_matches_replica(model, x):
    t = top1(model, x)
    ex = vx.explain(model, x, "saliency")
    ref, pixel = saliency_ref(model, x, t)
    torch.testing.assert_close(ex.extras["pixel_map"].double(), pixel, rtol=1e-4, atol=1e-6 * float(pixel.max()))
    assert_matches(ex.patch_map, ref)


def test_saliency_gradient_times_input(model, x):
    t = top1(model, x)
    ex = vx.explain(model, x, "saliency", abs=False, reduce="sum", times_input=True)
    for b in range(x.shape[0]):
        g, _ = input_grad64(model, x[b : b + 1], int(t[b]))
        pixel = (g * x[b].double()).sum(0)
        torch.testing.assert_close(ex.extras["pixel_map"][b].double(), pixel, rtol=1e-4, atol=1e-5 * float(pixel.abs().max()))
        torch.testing.assert_close(ex.patch_map[b].double(), patch_sum_ref(pixel, model), rtol=1e-4, atol=1e-5 * float(pixel.abs().sum()))


def test_integrated_gradients_matches_replica(model, x):
    x = x[:2]
    t = top1(model, x)
    ex = vx.explain(model, x, "integrated_gradients", steps=5, internal_batch_size=3)
    ref, attr = ig_ref(model, x, t, torch.zeros_like(x), 5)
    torch.testing.assert_close(ex.extras["attributions"].double(), attr, rtol=1e-4, atol=1e-5 * float(attr.abs().max()))
    assert_matches(ex.patch_map, ref)


def test_integrated_gradients_completeness_and_baselines():
    model = tiny_vit()
    x = input_for(model, batch=2)
    with torch.no_grad():
        t = model(x).argmax(-1)
        fx = model(x)[torch.arange(2), t].double()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for baseline, x0 in [("zero", torch.zeros_like(x)), ("black", (-mean / std)[None, :, None, None].expand_as(x)),
                         (torch.full((3, 1, 1), 0.3), torch.full_like(x, 0.3))]:
        with torch.no_grad():
            f0 = model(x0)[torch.arange(2), t].double()
        for rule in ("trapezoid", "right") if isinstance(baseline, str) and baseline == "zero" else ("trapezoid",):
            ex = vx.explain(model, x, "integrated_gradients", baseline=baseline, steps=128, rule=rule,
                            internal_batch_size=128)
            total = ex.patch_map.double().sum(dim=(1, 2))
            tol = 5e-3 if rule == "trapezoid" else 5e-2  # the right sum converges as 1/steps, not 1/steps**2
            torch.testing.assert_close(total, fx - f0, rtol=0, atol=tol * float((fx - f0).abs().max()) + 1e-4)
            torch.testing.assert_close(ex.extras["delta"].double(), total - (fx - f0), rtol=0, atol=1e-4)
    # the quadrature converges: 4x the steps, a much smaller gap
    coarse = vx.explain(model, x, "integrated_gradients", steps=8).extras["delta"].abs()
    fine = vx.explain(model, x, "integrated_gradients", steps=64).extras["delta"].abs()
    assert bool((fine < coarse / 4).all())


# ---------------------------------------------------------------- batching, class specificity
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_image(method):
    model = tiny_vit("registers")
    x = input_for(model, batch=3, seed=3)
    kw = {"steps": 6} if method in ("tam", "integrated_gradients") else {}
    t = torch.tensor([2, 0, 5])
    full = vx.explain(model, x, method, target=t, **kw).patch_map
    for b in range(3):
        one = vx.explain(model, x[b : b + 1], method, target=int(t[b]), **kw).patch_map
        torch.testing.assert_close(full[b : b + 1], one, rtol=1e-4, atol=1e-6 * float(full.abs().max()))


@pytest.mark.parametrize("method", METHODS)
def test_class_specific(method):
    model = tiny_vit()
    x = input_for(model, batch=3, seed=1)
    kw = {"steps": 6} if method in ("tam", "integrated_gradients") else {}
    a = vx.explain(model, x, method, target=1, **kw)
    b = vx.explain(model, x, method, target=4, **kw)
    assert torch.equal(a.target, torch.tensor([1, 1, 1])) and torch.equal(b.target, torch.tensor([4, 4, 4]))
    assert vx.get_explainer(method).class_specific
    assert not torch.allclose(a.patch_map, b.patch_map, atol=1e-7)


def test_explain_follows_the_registry_contract():
    for m in METHODS:
        assert m in vx.list_methods()
    model = tiny_vit()
    x = input_for(model, batch=2)
    ex = vx.explain(model, x, "saliency")
    assert ex.patch_map.dtype == torch.float32 and ex.extras["pixel_map"].shape == (2, 32, 32)
    ex = vx.explain(model, x, "integrated_gradients", steps=4)
    assert ex.extras["pixel_map"].shape == (2, 32, 32) and ex.extras["attributions"].shape == x.shape


# ---------------------------------------------------------------- hygiene and bad input


@pytest.mark.parametrize("method", METHODS)
def test_model_state_restored_after_an_error_mid_backward(method):
    model = tiny_vit()
    x = input_for(model, batch=2)
    model.train()
    model.blocks[0].attn.fused_attn = True
    model.head.bias.requires_grad_(False)
    kw = {"steps": 3} if method in ("tam", "integrated_gradients") else {}
    with raising_in_backward(model.blocks[-1]):
        before = model_state(model)
        with pytest.raises(RuntimeError, match="boom"):
            vx.explain(model, x, method, **kw)
        assert model_state(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.blocks[0].attn.fused_attn is True


@pytest.mark.parametrize("method", METHODS)
def test_target_out_of_range(method):
    model = tiny_vit()
    x = input_for(model, batch=2)
    before = model_state(model)
    with pytest.raises(InputError, match="target 7 is out of range"):
        vx.explain(model, x, method, target=7)
    with pytest.raises(InputError, match="out of range"):
        vx.explain(model, x, method, target=[0, -1])
    assert model_state(model) == before


@pytest.mark.parametrize("method", METHODS)
def test_unknown_parameter(method):
    model = tiny_vit()
    with pytest.raises(InputError, match="has no parameter 'stepz'"):
        vx.explain(model, input_for(model, batch=1), method, stepz=3)


def test_bad_parameters():
    model = tiny_vit()
    x = input_for(model, batch=1)
    for steps in (1, 0, 2.5):
        with pytest.raises(InputError, match=r"steps must be in 2\.\.|parameter .steps. must be int"):
            vx.explain(model, x, "tam", steps=steps)
        with pytest.raises(InputError, match=r"steps must be in 2\.\.|parameter .steps. must be int"):
            vx.explain(model, x, "integrated_gradients", steps=steps)
    with pytest.raises(InputError, match="target_score"):
        vx.explain(model, x, "tam", target_score="softmax")
    with pytest.raises(InputError, match="start_layer 5 is out of range"):
        vx.explain(model, x, "tam", start_layer=5)
    with pytest.raises(InputError, match="layer 3 is out of range"):
        vx.explain(model, x, "grad_cam", layer=3)
    with pytest.raises(InputError, match="token sequence"):
        vx.explain(model, x, "grad_cam", layer="head")
    with pytest.raises(InputError, match="no module named 'blocks.2.nrm1'"):
        vx.explain(model, x, "grad_cam", layer="blocks.-1.nrm1")
    with pytest.raises(InputError, match="layer 4 is out of range"):
        vx.explain(model, x, "attn_grad_cam", layer=4)
    with pytest.raises(InputError, match="head_fusion"):
        vx.explain(model, x, "ag_cam", head_fusion="max")
    with pytest.raises(InputError, match="baseline"):
        vx.explain(model, x, "integrated_gradients", baseline="white")
    with pytest.raises(InputError, match="does not broadcast"):
        vx.explain(model, x, "integrated_gradients", baseline=torch.zeros(2, 3, 5, 5))
    with pytest.raises(InputError, match="reduce"):
        vx.explain(model, x, "saliency", reduce="median")


class _SeparateQKV(torch.nn.Module):
    """An attention with separate q, k, v projections (no fused ``qkv`` Linear)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.proj, self.num_heads = torch.nn.Linear(dim, dim), heads

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = (m(x).reshape(B, N, self.num_heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


def test_ag_cam_needs_a_qkv_linear():
    model = tiny_vit()
    model.blocks[1].attn = _SeparateQKV(32, 4)
    with pytest.raises(UnsupportedModelError, match="qkv"):
        vx.explain(model, input_for(model, batch=1), "ag_cam")
