"""The model-agnostic methods on classifiers that are not plain ViTs (CNNs, hierarchical and windowed
transformers, CaiT), against their float64 restatements (vit_explore.testing.float64_agnostic); the
analysis grid against the model's own feature size; and the restatements themselves against a tiny
linear conv net whose maps are written out by hand."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vit_explore as vx
from vit_explore.testing.float64 import FLOOR, close_to
from vit_explore.testing.float64_agnostic import (
    AGNOSTIC64,
    GradientCheckError,
    _kink,
    as_grid64,
    ceil_grid,
    cell_pool,
    feature_cell64,
    grad_cam_layer64,
    integrated_gradients_cells64,
    noised_cells64,
    occlusion_cells64,
    reference_any64,
    saliency_cells64,
)
from vit_explore.testing.float64_model import model64

#: family -> (timm name, constructor keywords, input size, the cell its architecture implies)
FAMILIES = {
    "resnet": ("resnet18", {}, 64, 32),  # stem 2, max-pool 2, three stride-2 stages
    "convnext": ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}, 64, 32),  # stem 4, 3 downsamples
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1),
                                              "embed_dim": 24, "num_heads": (1, 2, 2, 4)}, 64, 32),  # 4, 3 merges
    "pit": ("pit_ti_224", {"img_size": 64}, 64, 32),  # patch 8 (16 / stride 8), two pooling stages
    "samvit": ("samvit_base_patch16", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2,
                                       "global_attn_indexes": (1,), "window_size": 2, "neck_chans": 16}, 32, 8),
    "cait": ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "depth": 2, "depth_token_only": 1,
                                "embed_dim": 32, "num_heads": 2}, 32, 8),
}
METHODS = ["saliency", "integrated_gradients", "occlusion", "rise", "grad_cam"]


def build(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded family model (5 classes, every parameter moved by seeded noise), a batch of 2
    inputs and its top-1 targets."""
    timm_name, kw, size, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=5, **kw).eval()
    with torch.no_grad():  # timm zero-inits biases: the all-zero IG baseline would sit on every ReLU's kink
        g = torch.Generator().manual_seed(2)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


_CACHE: dict[str, tuple] = {}


def family(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    if name not in _CACHE:
        _CACHE[name] = build(name)
    return _CACHE[name]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_analysis_grid_is_the_models_own_feature_grid(name):
    """The cell the Explanation reports equals the one the architecture implies and, where the
    model's ``forward_features`` has a grid (not PiT's class token), the one derived from it."""
    model, x, t = family(name)
    ex = vx.explain(model, x, "saliency", target=t)
    cell = FAMILIES[name][3]
    assert ex.layout.patch_size == (cell, cell)
    assert ex.layout.grid == ceil_grid(tuple(x.shape[-2:]), (cell, cell))
    assert feature_cell64(model, x) == (None if name == "pit" else (cell, cell))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_float32_map_equals_the_float64_restatement(name, method):
    model, x, t = family(name)
    ex = vx.explain(model, x, method, target=t, **AGNOSTIC64[method])
    grid, cell = tuple(ex.layout.grid), tuple(ex.layout.patch_size)
    if method == "integrated_gradients" and name == "resnet":
        # the all-zero input is a point of max-pool ties (a constant map) where ResNet has no gradient
        # (see the kink test below); here a seeded baseline, an ordinary point
        base = torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(7))
        ex = vx.explain(model, x, method, target=t, baseline=base, **AGNOSTIC64[method])
        ref = integrated_gradients_cells64(model64(model), x, t, AGNOSTIC64[method]["steps"], grid, cell, base)
    else:
        layer = ex.extras.get("layer") if method == "grad_cam" else None
        ref = reference_any64(model, x, method, t, grid, cell, layer)
    assert float(ref.abs().max()) > 0
    ok, err = close_to(ex.patch_map, ref, FLOOR.get(method, 0.0))
    assert ok, f"{name} {method}: {err:.2e}"


@pytest.mark.parametrize("name", ["resnet", "convnext", "swin", "samvit"])
def test_the_default_grad_cam_layer_is_the_last_feature_map(name):
    """Grad-CAM's default layer outputs what ``forward_features`` returns (the head's input):
    the restatement at the code's layer is the restatement at the model's last feature map."""
    model, x, t = family(name)
    ex = vx.explain(model, x, "grad_cam", target=t)
    got: list[torch.Tensor] = []
    h = model.get_submodule(ex.extras["layer"]).register_forward_hook(lambda m, a, o: got.append(o))
    try:
        with torch.no_grad():
            feats = model.forward_features(x)
    finally:
        h.remove()
    torch.testing.assert_close(got[-1], feats, rtol=0, atol=0)
    assert ex.layout.grid == as_grid64(feats, ex.layout.grid).shape[1:3]


@pytest.mark.parametrize("name", ["resnet", "swin", "cait"])
def test_intervene_noise_equals_the_restatement(name):
    model, x, _ = family(name)
    iv = vx.intervene(model, x, [0, 3], mode="noise", seed=4, sigma=0.3)
    ex = vx.explain(model, x, "saliency")
    ref = noised_cells64(model, x, [0, 3], tuple(ex.layout.grid), tuple(ex.layout.patch_size), seed=4, sigma=0.3)
    ok, err = close_to(iv.logits, ref)
    assert ok, err
    assert not close_to(iv.logits, noised_cells64(model, x, [1, 3], tuple(ex.layout.grid),
                                                   tuple(ex.layout.patch_size), seed=4, sigma=0.3))[0]


@pytest.mark.parametrize("method", ["saliency", "occlusion", "grad_cam"])
@pytest.mark.parametrize("name", ["convnext", "pit"])
def test_a_batch_of_two_equals_each_image(name, method):
    model, x, t = family(name)
    both = vx.explain(model, x, method, target=t)
    for b in range(2):
        one = vx.explain(model, x[b : b + 1], method, target=t[b : b + 1])
        assert one.extras.get("layer") == both.extras.get("layer")
        ok, err = close_to(one.patch_map, both.patch_map[b : b + 1].double(), FLOOR.get(method, 0.0))
        assert ok, err


# --------------------------------------------------------------------------- a hand-computed case


class LinearConv(nn.Module):
    """``y_k = Σ_{c,i,j} w_k[c, i mod 4, j mod 4] x[c, i, j]``: a 4x4 stride-4 convolution (3 -> 3
    channels, 3 classes) summed over its output grid; ``feature_info`` says its stride is 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 4, stride=4, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1.0, 1.3, 144).reshape(3, 3, 4, 4).flip(-1))
        self.feature_info = [{"num_chs": 3, "reduction": 4, "module": "conv"}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sum(dim=(2, 3))


def _by_hand():
    """The model, an input (1, 3, 8, 8), and per cell (2x2 cells of 4x4 pixels) each class's
    contribution ``z[k, r, c] = Σ_{c', i, j in the cell} w_k x``."""
    m = LinearConv()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)).double()
    w = m.conv.weight.detach().double()  # (3, 3, 4, 4)
    cells = x[0].reshape(3, 2, 4, 2, 4).permute(1, 3, 0, 2, 4)  # (r, c, channel, i, j)
    z = torch.einsum("kcij,rscij->krs", w, cells)  # (class, r, c)
    return m, x, w, z


def test_the_restatements_equal_the_maps_written_out_by_hand():
    m, x, w, z = _by_hand()
    logits = z.sum(dim=(1, 2))
    t = int(logits.argmax())
    tt, m64, grid, cell = torch.tensor([t]), model64(m), (2, 2), (4, 4)
    # saliency: the gradient is the kernel tiled, so every cell sums max_c |w_t| over the kernel
    sal = w[t].abs().amax(0).sum()
    torch.testing.assert_close(saliency_cells64(m64, x, tt, grid, cell)[0], sal.expand(2, 2))
    # integrated gradients of a linear map from the zero baseline: x ⊙ w_t, exactly, for any steps
    torch.testing.assert_close(integrated_gradients_cells64(m64, x, tt, 5, grid, cell)[0], z[t])
    # occlusion: zeroing a cell removes its contribution from every logit
    occ = logits.softmax(0)[t] - (logits[:, None, None] - z).softmax(0)[t]
    torch.testing.assert_close(occlusion_cells64(m64, x, tt, grid, cell)[0], occ)
    # Grad-CAM at the convolution: dy_t/dA_k = [k = t], so the map is the ReLU of channel t
    torch.testing.assert_close(grad_cam_layer64(m64, x, tt, "conv", grid)[0], z[t].clamp(min=0))
    # noise in cell 1 (row 0, column 1): that cell's contribution taken from the noise instead
    noise = (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.5).double()
    zn = torch.einsum("kcij,cij->k", w, noise[0, :, :4, 4:])
    want = logits - z[:, 0, 1] + zn
    torch.testing.assert_close(noised_cells64(m, x.float(), [1], grid, cell, seed=2, sigma=0.5)[0], want,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "grad_cam"])
def test_the_code_equals_the_hand_computed_maps_too(method):
    m, x, _, _ = _by_hand()
    with torch.no_grad():
        t = m(x.float()).argmax(1)
    ex = vx.explain(m, x.float(), method, target=t, **AGNOSTIC64[method])
    assert ex.layout.grid == (2, 2) and ex.layout.patch_size == (4, 4)
    ref = reference_any64(m, x.float(), method, t, (2, 2), (4, 4), "conv" if method == "grad_cam" else None)
    ok, err = close_to(ex.patch_map, ref, FLOOR.get(method, 0.0))
    assert ok, err


def test_partial_cells_hold_only_their_real_pixels():
    """A 10x6 map on 4x4 cells: a 3x2 grid whose last row (2 pixels high) and column (2 wide) are partial."""
    ones = torch.ones(1, 10, 6)
    grid = ceil_grid((10, 6), (4, 4))
    assert grid == (3, 2)
    want = torch.tensor([[[16.0, 8.0], [16.0, 8.0], [8.0, 4.0]]], dtype=torch.float64)
    torch.testing.assert_close(cell_pool(ones, grid, (4, 4)), want)
    torch.testing.assert_close(cell_pool(ones, grid, (4, 4), "mean"), torch.ones(1, 3, 2, dtype=torch.float64))


def test_the_zero_baseline_of_a_resnet_is_a_kink_where_autograds_choice_is_kept():
    """At the all-zero input every ResNet max-pool window ties, so the input gradient is not
    defined there: ``_kink`` sees one-sided differences that are each stable but differ, and the
    reference keeps autograd's one-sided choice (the method's own); an ordinary point is no kink."""
    model, x, t = family("resnet")
    m64 = model64(model)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert _kink(m64, torch.zeros_like(x, dtype=torch.float64), t, v)
    assert not _kink(m64, x.double(), t, v)
    ex = vx.explain(model, x, "integrated_gradients", target=t, **AGNOSTIC64["integrated_gradients"])
    grid, cell = tuple(ex.layout.grid), tuple(ex.layout.patch_size)
    ref = integrated_gradients_cells64(m64, x, t, AGNOSTIC64["integrated_gradients"]["steps"], grid, cell)
    ok, err = close_to(ex.patch_map, ref)
    assert ok, err


class BnTokens(nn.Module):
    """A convolution, an eval-mode BatchNorm2d, then the feature map as tokens (B, N, C) read by
    a linear head: LeViT's stem. torch's CPU BatchNorm backward at batch size 1 misreads a
    transposed incoming gradient, so autograd's input gradient is wrong there (33% here)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.Linear(8 * 4, 3)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.normal_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.bn(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 4, 8)
        return self.head(t[:, :4].reshape(x.shape[0], -1))


class _HalfGrad(torch.autograd.Function):
    """The identity whose backward halves the gradient: a wrong autograd."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g / 2


def test_a_wrong_autograd_is_caught_not_used():
    """The restatement runs one image as two copies, so torch's batch-1 BatchNorm backward gives
    it the right gradient; a backward that is wrong at any batch size is refused by the check."""
    m = model64(BnTokens())
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0])
    assert saliency_cells64(m, x, t, (2, 2), (4, 4)).abs().max() > 0  # the right gradient passes
    h = m.conv.register_forward_hook(lambda mod, a, out: _HalfGrad.apply(out))
    try:
        with pytest.raises(GradientCheckError, match="finite-difference"):
            saliency_cells64(m, x, t, (2, 2), (4, 4))
    finally:
        h.remove()


@pytest.mark.parametrize("name", ["bn_tokens", "levit", "xcit"])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_batch_size_one_behind_a_batchnorm_equals_the_restatement(name, method):
    """Capture works around that torch bug (capture/state.py, _contiguous_grad): at batch size 1 the code's map
    equals the restatement run on the image twice (batch 2, where autograd is right)."""
    torch.manual_seed(0)
    if name == "bn_tokens":
        model, size = BnTokens(), 8
    elif name == "levit":
        model, size = timm.create_model("levit_128s", num_classes=5, img_size=128).eval(), 128
    else:
        model, size = timm.create_model("xcit_nano_12_p16_224", num_classes=5, img_size=64, depth=2).eval(), 64
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model(x).argmax(1)
    ex = vx.explain(model, x, method, target=t, **AGNOSTIC64[method])
    grid, cell = tuple(ex.layout.grid), tuple(ex.layout.patch_size)
    ref = reference_any64(model, x.expand(2, -1, -1, -1), method, t.expand(2), grid, cell)[:1]
    ok, err = close_to(ex.patch_map, ref)
    assert ok, err
