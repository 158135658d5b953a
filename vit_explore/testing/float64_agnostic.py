"""Float64 restatements of the model-agnostic methods on ANY image classifier (an ``nn.Module``
mapping (B, 3, H, W) to (B, classes): timm CNNs, hierarchical and windowed transformers, ViTs):
saliency, integrated gradients, occlusion, RISE, Grad-CAM at a named layer and ``intervene``'s
``noise`` mode; for tests and ``bench/family_table.py`` (docs/methods.md §9, §18-§20).

The grid. A map lies on ``grid = (gh, gw)`` cells of ``cell = (ch, cw)`` pixels, row-major; cell
``(r, c)`` holds the pixels ``[r ch, (r+1) ch) x [c cw, (c+1) cw)`` that exist (a last partial
row or column of cells holds only its real pixels; pixels beyond ``gh ch`` or ``gw cw`` count for
no cell). A ViT's grid is its patch grid (``floor(H / ph)``); any other classifier's is the
*analysis grid* ``ceil(H / cell)`` (``ceil_grid``), ``cell`` the total stride of its last feature
stage. The cell is an argument here, not derived: the callers take it from the Explanation and
check it separately (``tests/explainers/test_float64_agnostic.py`` derives it from the spatial
size of the model's ``forward_features``). Grad-CAM is restated at a named layer, whose output is
read as (B, C, h, w), (B, h, w, C) or tokens (B, N, C) ending in the ``h x w`` grid.

Independence: nothing here calls ``vit_explore.explainers``, ``capture`` or ``perturb``; every
model runs as a float64 deepcopy (``model64``) and every input gradient is checked against a
float64 central difference (``GradientCheckError``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .float64_model import model64
from .float64_rise import rise_pixels64

Grid = tuple[int, int]


class GradientCheckError(ValueError):
    """Autograd's input gradient of the model disagrees with a float64 central difference."""


def ceil_grid(size: tuple[int, int], cell: Grid) -> Grid:
    """The analysis grid ``(ceil(H / ch), ceil(W / cw))`` of an ``H x W`` input."""
    return math.ceil(size[0] / cell[0]), math.ceil(size[1] / cell[1])


def feature_cell64(model: nn.Module, x: torch.Tensor) -> Grid | None:
    """The cell of the analysis grid derived from the model's own forward, independently of its
    ``feature_info``: ``H / h`` for the ``h x w`` spatial size of ``forward_features(x)`` (a
    (B, C, h, w) or (B, h, w, C) map, or tokens (B, T + h w, C) with ``T`` the leading tokens),
    the one reading whose cells are square and whose grid has 2 or more cells; None when no
    reading fits (PiT's ``forward_features`` returns only its class token)."""
    H, W = x.shape[-2:]
    features = getattr(model64(model), "forward_features", None)
    if not callable(features):
        return None
    with torch.no_grad():
        f = features(x.double())
    if not isinstance(f, torch.Tensor):
        return None
    if f.ndim == 4:
        shapes = [(int(f.shape[2]), int(f.shape[3])), (int(f.shape[1]), int(f.shape[2]))]
    elif f.ndim == 3:
        shapes = []
        for T in range(min(9, f.shape[1])):
            h = round(math.sqrt((f.shape[1] - T) * H / W))
            if h and (f.shape[1] - T) % h == 0:
                shapes.append((h, (f.shape[1] - T) // h))
    else:
        return None
    for h, w in shapes:
        ch, cw = math.ceil(H / h), math.ceil(W / w)
        if h * w >= 2 and ch == cw and ceil_grid((H, W), (ch, cw)) == (h, w):
            return ch, cw
    return None


def cell_pool(pixel: torch.Tensor, grid: Grid, cell: Grid, reduce: str = "sum") -> torch.Tensor:
    """(B, H, W) pixel map -> (B, gh, gw): the sum (or mean) of each cell's real pixels."""
    (gh, gw), (ch, cw) = grid, cell
    out = torch.zeros(pixel.shape[0], gh, gw, dtype=torch.float64)
    for r in range(gh):
        for c in range(gw):
            part = pixel[:, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw].double()
            out[:, r, c] = part.sum(dim=(1, 2)) if reduce == "sum" else part.mean(dim=(1, 2))
    return out


def input_grad64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``∂y_t/∂x`` (B, 3, H, W) by autograd, checked per image against the float64 central
    difference ``(y(x + εv) - y(x - εv)) / 2ε`` along a seeded random direction v: agreement to
    1e-5 relative (plus the difference's rounding, ``4 u max|y| / ε``) at ε = 1e-6, else at 1e-7 or
    1e-8 (a ReLU net has so many kinks that ±1e-6 v often crosses one; a smaller step does not). An
    autograd that is wrong for this model (torch's CPU eval BatchNorm2d backward at batch size 1
    with a transposed incoming gradient: LeViT's stem, XCiT's patch embedding) disagrees at every
    step and raises ``GradientCheckError`` instead of giving a wrong reference. A point with no
    gradient at all (a kink or a max-pool tie of the point itself, as at a constant image: the
    one-sided differences along v are each stable in ε but differ, ``_kink``) has no true value to
    check against; there the reference keeps autograd's one-sided choice (ReLU'(0) = 0, the first
    of tied maxima), which is what every implementation of the method computes. One image runs as a batch of
    two copies, where that BatchNorm backward is right (a route of its own, not capture's hook)."""
    x = x.detach().double()
    with torch.enable_grad():  # one image runs twice: torch's BatchNorm backward is wrong at batch size 1
        xin = (x if x.shape[0] > 1 else x.expand(2, -1, -1, -1)).clone().requires_grad_(True)
        tin = target if x.shape[0] > 1 else target.expand(2)
        (g,) = torch.autograd.grad(m64(xin).gather(1, tin[:, None]).sum(), xin)
        g = g[: x.shape[0]]
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ad = (g * v).flatten(1).sum(1)
    for eps in (1e-6, 1e-7, 1e-8):
        with torch.no_grad():
            hi = m64(x + eps * v).gather(1, target[:, None])[:, 0]
            lo = m64(x - eps * v).gather(1, target[:, None])[:, 0]
        fd = (hi - lo) / (2 * eps)
        rounding = 4 * torch.finfo(torch.float64).eps * hi.abs().clamp_min(lo.abs()) / eps
        if bool(((fd - ad).abs() <= 1e-5 * ad.abs().clamp_min(fd.abs()) + rounding + 1e-9).all()):
            return g
    if _kink(m64, x, target, v):
        return g  # no gradient exists here: autograd's one-sided choice is the method's own (see docstring)
    raise GradientCheckError(
        f"autograd's input gradient fails a float64 finite-difference check (directional derivative "
        f"{ad.tolist()} by autograd, {fd.tolist()} by central difference at ε = 1e-8; also at 1e-6 and 1e-7)"
    )


def _kink(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``y_t`` has no directional derivative along ``v`` at ``x`` for some image: the forward
    and backward differences are each the same at ε = 1e-6 and 1e-7 (to 1e-4 relative) but differ
    from each other by more than 1e-3 of their size."""
    with torch.no_grad():
        y0 = m64(x).gather(1, target[:, None])[:, 0]
        sides = []
        for eps in (1e-6, 1e-7):
            hi = m64(x + eps * v).gather(1, target[:, None])[:, 0]
            lo = m64(x - eps * v).gather(1, target[:, None])[:, 0]
            sides.append(((hi - y0) / eps, (y0 - lo) / eps))
    (f1, b1), (f2, b2) = sides
    size = torch.stack([f1.abs(), b1.abs()]).amax(0).clamp_min(1e-12)
    stable = ((f1 - f2).abs() <= 1e-4 * size) & ((b1 - b2).abs() <= 1e-4 * size)
    return bool((stable & ((f1 - b1).abs() > 1e-3 * size)).any())


def saliency_cells64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, grid: Grid, cell: Grid) -> torch.Tensor:
    """Simonyan et al. 2014: ``max_c |∂y_t/∂x_c|`` per pixel, summed within each cell."""
    return cell_pool(input_grad64(m64, x, target).abs().amax(1), grid, cell)


def integrated_gradients_cells64(
    m64: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, grid: Grid, cell: Grid,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sundararajan et al. 2017 from ``baseline`` x' (default all zero), trapezoid rule on ``steps``
    points ``α_k = k/(steps-1)``: ``(x - x') ⊙ Σ_k w_k ∇y_t(x' + α_k (x - x'))``, summed over
    channels and within each cell. A point whose gradient fails the check (the all-zero baseline
    of a ReLU / max-pool net is a kink or a tie of every unit) raises ``GradientCheckError`` naming α."""
    x = x.double()
    x0 = torch.zeros_like(x) if baseline is None else baseline.double().expand_as(x)
    total = torch.zeros_like(x)
    for k in range(steps):
        w = (0.5 if k in (0, steps - 1) else 1.0) / (steps - 1)
        try:
            total += w * input_grad64(m64, x0 + k / (steps - 1) * (x - x0), target)
        except GradientCheckError as e:
            where = "the baseline itself" + (" (the all-zero input)" if baseline is None else "") if k == 0 else ""
            raise GradientCheckError(f"at α = {k}/{steps - 1}{', ' + where if where else ''}: {e}") from None
    return cell_pool(((x - x0) * total).sum(1), grid, cell)


def _cell_pixels(index: int, grid: Grid, cell: Grid) -> tuple[slice, slice]:
    """The pixel rows and columns of cell ``index`` (row-major)."""
    r, c = divmod(index, grid[1])
    return slice(r * cell[0], (r + 1) * cell[0]), slice(c * cell[1], (c + 1) * cell[1])


def occlusion_cells64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, grid: Grid, cell: Grid) -> torch.Tensor:
    """Zeiler & Fergus 2014 with one-cell windows: ``p_t(x) - p_t(x with the cell's pixels set to
    0)`` per cell (softmax probability)."""
    x = x.double()
    out = torch.zeros(x.shape[0], *grid, dtype=torch.float64)
    with torch.no_grad():
        base = m64(x).softmax(-1).gather(1, target[:, None])[:, 0]
        for i in range(grid[0] * grid[1]):
            y = x.clone()
            rows, cols = _cell_pixels(i, grid, cell)
            y[..., rows, cols] = 0
            out.view(x.shape[0], -1)[:, i] = base - m64(y).softmax(-1).gather(1, target[:, None])[:, 0]
    return out


def rise_cells64(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, grid: Grid, cell: Grid, *, n_masks: int, s: int = 8,
    p1: float = 0.1, seed: int = 0,
) -> torch.Tensor:
    """RISE (Petsiuk et al. 2018, ``float64_rise``): the pixel saliency averaged within each cell."""
    return cell_pool(rise_pixels64(model, x, target, n_masks, s, p1, seed), grid, cell, "mean")


def noised_cells64(
    model: nn.Module, x: torch.Tensor, cells: list[int], grid: Grid, cell: Grid, seed: int = 0, sigma: float = 0.1
) -> torch.Tensor:
    """Float64 logits of ``x`` (B, 3, H, W) with the pixels of ``cells`` (row-major) replaced by
    ``N(0, σ²)`` noise drawn from ``torch.Generator().manual_seed(seed)`` (float32 draws)."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    y = x.clone()
    for i in cells:
        rows, cols = _cell_pixels(i, grid, cell)
        y[..., rows, cols] = noise[..., rows, cols]
    with torch.no_grad():
        return model64(model)(y.double())


def as_grid64(t: torch.Tensor, grid: Grid) -> torch.Tensor:
    """A layer output (B, C, h, w), (B, h, w, C) or tokens (B, N, C) whose last ``h w`` tokens
    are the grid, as (B, h, w, C); an output that fits the grid both ways is refused."""
    if t.ndim == 4:
        nchw, nhwc = tuple(t.shape[2:]) == grid, tuple(t.shape[1:3]) == grid
        if nchw == nhwc:
            raise ValueError(f"a layer output {tuple(t.shape)} is {'ambiguous' if nchw else 'not'} on the grid {grid}")
        return t.permute(0, 2, 3, 1) if nchw else t
    if t.ndim == 3 and t.shape[1] >= grid[0] * grid[1]:
        return t[:, t.shape[1] - grid[0] * grid[1] :].reshape(t.shape[0], *grid, t.shape[-1])
    raise ValueError(f"a layer output {tuple(t.shape)} is not a map on the grid {grid}")


def grad_cam_layer64(m64: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str, grid: Grid) -> torch.Tensor:
    """Selvaraju et al. 2017 at the module named ``layer`` (its last output, on ``grid``):
    ``ReLU(Σ_c α_c A_c)``, ``α_c`` the target logit's gradient averaged over the grid."""
    got: list[torch.Tensor] = []
    h = m64.get_submodule(layer).register_forward_hook(lambda m, a, o: got.append(o))
    try:
        with torch.enable_grad():
            logits = m64(x.detach().double())
            (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), got[-1])
    finally:
        h.remove()
    a, g = as_grid64(got[-1].detach(), grid), as_grid64(g, grid)
    return torch.einsum("bhwc,bc->bhw", a, g.mean(dim=(1, 2))).clamp(min=0)


#: method -> the explain() keywords the restatements assume (the methods' defaults spelled out)
AGNOSTIC64: dict[str, dict] = {
    "saliency": {}, "integrated_gradients": {"steps": 8}, "occlusion": {}, "grad_cam": {},
    "rise": {"n_masks": 8, "s": 8, "p1": 0.1, "seed": 0},
}


def reference_any64(
    model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor, grid: Grid, cell: Grid,
    layer: str | None = None,
) -> torch.Tensor:
    """The float64 restatement (B, gh, gw) of ``method`` (a key of ``AGNOSTIC64``) for ``target``
    (B,) on ``grid`` cells of ``cell`` pixels; Grad-CAM at the module named ``layer`` on ``grid``."""
    if method == "rise":
        return rise_cells64(model, x, target, grid, cell, **AGNOSTIC64["rise"])
    m64 = model64(model)
    if method == "saliency":
        return saliency_cells64(m64, x, target, grid, cell)
    if method == "integrated_gradients":
        return integrated_gradients_cells64(m64, x, target, AGNOSTIC64[method]["steps"], grid, cell)
    if method == "occlusion":
        return occlusion_cells64(m64, x, target, grid, cell)
    if method == "grad_cam":
        if layer is None:
            raise ValueError("grad_cam's restatement needs the layer's module name")
        return grad_cam_layer64(m64, x, target, layer, grid)
    raise ValueError(f"no model-agnostic restatement of {method!r} (have {', '.join(AGNOSTIC64)})")
