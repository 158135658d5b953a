"""Any image classifier: what capture knows about a model that is not a supported ViT.

Part of ``vit_explore.capture``. A model that ``inspect_vit`` refuses but that maps
(B, 3, H, W) to (B, classes) still gets the methods that need no token-to-token
attention (``MODEL_AGNOSTIC``): saliency, integrated gradients, occlusion, RISE, Grad-CAM
and the pixel modes of ``vx.intervene``.

Analysis grid. A model without patches has no patch grid of its own; its explanations
are laid out on an *analysis grid* of ``cell x cell`` pixels, where ``cell`` is the
reduction (total stride) of the model's last feature stage (timm's
``feature_info[-1]["reduction"]``: 32 for a ResNet or a Swin, 16 for SAM, CaiT, XCiT),
else the patch embedding's patch size, else 32. The grid has ``ceil(H/cell) x
ceil(W/cell)`` cells (a last partial row or column of cells holds only the real pixels).
Its ``TokenLayout`` has no prefix tokens and no read-out row (``readout`` is set to
``"avg"`` but no method reads it). Pixel methods (saliency, integrated gradients, RISE)
keep their (B, H, W) map in ``extras["pixel_map"]`` and sum (RISE: average) it per cell;
occlusion's window is in cells; Grad-CAM's map lies on its layer's own grid (see
``spatial_layout``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .._checks import checked_output
from ..errors import CaptureError, InputError, UnsupportedModelError, suggest
from ..inputs import check_tensor
from ..targets import ScoreTarget, TargetLike, resolve_target, target_score
from .adapters import ViTInfo, inspect_vit, layout_for
from .attn_windowed import windowed_reason
from .bn_grad import contiguous_bn_grads
from .layout import TokenLayout
from .state import SavedState

#: Methods defined on any image classifier (no attention needed).
MODEL_AGNOSTIC = ("grad_cam", "integrated_gradients", "occlusion", "rise", "saliency")
#: ``vx.intervene`` modes that act on pixels (``drop`` removes patch tokens).
PIXEL_MODES = ("blur", "mean", "noise", "zero")

Kind = Literal["cnn", "hierarchical", "channel_attention", "vit"]


@dataclass(frozen=True)
class ClassifierInfo:
    """What capture knows about an image classifier that is not a supported ViT.

    Attributes:
        name: the model's class name.
        kind: ``"cnn"`` (no attention module), ``"hierarchical"`` (attention inside stages of
            a changing grid: windows, pooling), ``"channel_attention"`` (XCiT's cross-covariance
            attention) or ``"vit"`` (a single-grid transformer capture does not read yet).
        reason: why token-to-token attention methods are not defined for it.
        patch_size: ``(cell, cell)``, the analysis grid's cell in pixels.
        img_size: the fixed input size, or None.
        in_chans: input channels.
        num_classes: classifier outputs (0 when the model does not say).
        output_fmt: ``"NHWC"`` when the model declares channels-last feature maps.
    """

    name: str
    kind: Kind
    reason: str
    patch_size: tuple[int, int]
    img_size: tuple[int, int] | None
    in_chans: int
    num_classes: int
    output_fmt: str = "NCHW"
    dynamic_pad: bool = True  # cells cover the whole image; no size-multiple check
    num_prefix: int = 0
    num_reg: int = 0
    readout: str = "avg"
    attns: tuple = ()

    @property
    def num_layers(self) -> int:
        return 0


ModelInfo = ViTInfo | ClassifierInfo


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or hasattr(m, "num_heads") or hasattr(m, "heads")


def _has_attention(model: nn.Module) -> bool:
    return any(_is_attention(m) for m in model.modules())


def _inside_attention(model: nn.Module) -> set[int]:
    """ids of attention modules and their descendants (their outputs are heads x tokens, not maps)."""
    out: set[int] = set()
    for m in model.modules():
        if _is_attention(m) and m is not model:
            out.update(id(d) for d in m.modules())
    return out


def _is_xca(model: nn.Module) -> bool:
    try:
        from timm.models.xcit import XCA
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return any(isinstance(m, XCA) for m in model.modules())


def _reductions(model: nn.Module) -> list[int]:
    fi = getattr(model, "feature_info", None)
    out = []
    for f in fi if isinstance(fi, (list, tuple)) else []:
        r = f.get("reduction") if isinstance(f, dict) else None
        if isinstance(r, int):
            out.append(r)
    return out


def inspect_classifier(model: nn.Module, vit_error: str = "", *, headless: bool = False) -> ClassifierInfo:
    """Describe an ``nn.Module`` image classifier (see the module docstring for the grid).

    Args:
        vit_error: why ``inspect_vit`` refused the model (quoted for single-grid transformers).
        headless: accept a model without a head (``num_classes=0``), for a callable target.
    """
    name = getattr(model, "vx_name", type(model).__name__)  # a view names the model it stands for (hf_classifier.py)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected an image classifier (torch.nn.Module), got {name}")
    if getattr(model, "num_classes", None) == 0 and not headless:
        raise UnsupportedModelError(
            f"{name} has no classifier head (num_classes=0); explanations need class logits. "
            "Create it with num_classes > 0, or explain a score of its embedding with a callable target "
            "(target=vx.targets.similarity(embedding))."
        )
    red = _reductions(model)
    if not _has_attention(model):
        kind: Kind = "cnn"
        reason = f"{name} is not a transformer (no attention module), so it has no token-to-token attention"
    elif windowed_reason(model):
        kind = "vit"
        reason = str(windowed_reason(model))
    elif _is_xca(model):
        kind = "channel_attention"
        reason = (
            f"{name}'s patch stage uses cross-covariance attention (XCA: channel x channel, not token x token), "
            "so it has no token-to-token attention over the patch grid"
        )
    elif len(set(red)) > 1:
        kind = "hierarchical"
        reason = (
            f"{name} is a hierarchical transformer (feature reductions {', '.join(map(str, sorted(set(red))))}): "
            "its attention runs within windows or pooled stages of a changing grid, so it has no global "
            "token-to-token attention over one patch grid"
        )
    else:
        kind = "vit"
        why = vit_error.replace(" Only Vision Transformers can be explained; CNNs and hybrid models are not supported.", "")
        reason = f"capture does not read {name}'s attention ({why or 'an unknown attention module'})"
    if hasattr(model, "vx_kind"):  # a view that says what it is (capture/hf_classifier.py)
        kind, reason = str(model.vx_kind), str(model.vx_reason)  # type: ignore[assignment]  # one of the kinds
    pe = getattr(model, "patch_embed", None)
    cell = red[-1] if red else _pair(getattr(pe, "patch_size", 32))[0] if pe is not None else 32
    dynamic = bool(getattr(model, "dynamic_img_size", False)) or not getattr(pe, "strict_img_size", False)
    img_size = None if pe is None or dynamic or getattr(pe, "img_size", None) is None else _pair(pe.img_size)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_chans = int(getattr(model, "in_chans", 0) or (conv.in_channels if conv is not None else 3))
    return ClassifierInfo(
        name=name, kind=kind, reason=reason, patch_size=(cell, cell), img_size=img_size, in_chans=in_chans,
        num_classes=int(getattr(model, "num_classes", 0) or 0),
        output_fmt=str(getattr(model, "output_fmt", "NCHW") or "NCHW"),
    )


def inspect_model(model: object, *, headless: bool = False) -> ModelInfo:
    """``inspect_vit(model)`` for a supported ViT, else ``inspect_classifier(model)``
    (``headless``: accept a model without a head, see ``inspect_vit``).

    Raises:
        UnsupportedModelError: not an ``nn.Module``, or a ViT without a classifier head.
    """
    try:
        return inspect_vit(model, headless=headless)
    except UnsupportedModelError as e:
        if not isinstance(model, nn.Module):
            raise
        if "num_classes=0" in str(e):
            raise
        return inspect_classifier(model, str(e), headless=headless)


def layout_any(info: ModelInfo, height: int, width: int) -> TokenLayout:
    """Token layout of a ViT, or the analysis grid of another classifier."""
    if isinstance(info, ClassifierInfo):
        ch, cw = info.patch_size
        grid = (-(-height // ch), -(-width // cw))
        return TokenLayout(0, 0, grid, info.patch_size, (height, width), "avg")
    return layout_for(info, height, width)


def applies(info: ModelInfo) -> str:
    """The sentence that names what applies to a classifier without token attention."""
    return (
        f"methods that apply: {', '.join(MODEL_AGNOSTIC)}, and vx.intervene with modes "
        f"{', '.join(PIXEL_MODES)}"
    )


def not_defined(info: ClassifierInfo, what: str) -> UnsupportedModelError:
    """The error for a token-attention method (``what``) on a classifier without it."""
    return UnsupportedModelError(f"{what} needs global token-to-token attention, but {info.reason}; {applies(info)}")


# --------------------------------------------------------------------------- passes


def capture_classifier(
    model: nn.Module,
    x: torch.Tensor,
    *,
    input_grad: bool,
    target: TargetLike = None,
    score: str = "logit",
    info: ClassifierInfo,
):
    """One pass of any classifier: logits, target and (optionally) ``d score / d x``.

    Returns a ``Trace`` on the analysis grid (attention fields empty). The model is left as
    found (training flags, ``requires_grad``), also after an error.
    """
    from .session import Trace

    x = check_tensor(info, x, model)
    state = SavedState(model, grads=input_grad)
    handles = contiguous_bn_grads(model) if input_grad else []  # torch's BatchNorm backward at batch 1
    try:
        state.freeze()
        xin = x.detach().clone().requires_grad_(True) if input_grad else x.detach()
        with torch.set_grad_enabled(input_grad):
            logits = _logits(model, xin)
        tgt = resolve_target(target, logits)
        grad = None
        if input_grad:
            y = target_score(logits, tgt, score).sum()
            if not y.requires_grad:
                raise CaptureError("the target score does not depend on the input; nothing to differentiate")
            (grad,) = torch.autograd.grad(y, [xin])
    finally:
        for h in handles:
            h.remove()
        state.restore()
    H, W = x.shape[-2:]
    return Trace(
        logits=logits.detach(), target=tgt, layout=layout_any(info, H, W), input=x.detach(),
        input_grad=None if grad is None else grad.detach(), score=score,  # type: ignore[arg-type]
    )


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = model(x)
    except RuntimeError as e:  # e.g. a module that is not an image model at all
        if isinstance(e, torch.OutOfMemoryError):
            raise
        raise UnsupportedModelError(
            f"{type(model).__name__} failed on an image batch of shape {tuple(x.shape)}: {e}; expected an "
            "image classifier mapping (B, 3, H, W) to logits (B, classes)"
        ) from e
    return check_logits(model, out)


def check_logits(model: nn.Module, out: object) -> torch.Tensor:
    """``out`` if it is a (B, classes) tensor, else an error saying what the model returned."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise UnsupportedModelError(
            f"expected an image classifier mapping (B, 3, H, W) to logits (B, classes), but "
            f"{type(model).__name__} returned {type(out).__name__}{tuple(getattr(out, 'shape', ()))}"
        )
    return checked_output(out)


def _fits(h: int, w: int, H: int, W: int) -> bool:
    """Whether an (h, w) map is the grid of some integer reduction of an H x W input."""
    if not (1 <= h <= H and 1 <= w <= W):
        return False
    for r in range(1, max(H, W) + 1):
        if (h, w) in ((H // r, W // r), (-(-H // r), -(-W // r))):  # one stride, one rounding
            return True
        if -(-H // r) < h and -(-W // r) < w:
            break
    return False


def _grid_of_tokens(n: int, H: int, W: int, prefix: tuple[int, ...]) -> tuple[int, tuple[int, int]] | None:
    for T in prefix:
        P = n - T
        if P < 1:
            continue
        # h / w close to H / W: try h around sqrt(P * H / W)
        h0 = math.sqrt(P * H / W)
        for h in sorted({max(1, math.floor(h0)), max(1, math.ceil(h0))}):
            if P % h == 0 and _fits(h, P // h, H, W):
                return T, (h, P // h)
    return None


@dataclass(frozen=True)
class Spatial:
    """How a layer's output lies on a grid: ``fmt`` (NCHW, NHWC, or tokens NC), ``T``
    prefix tokens (token outputs), ``grid`` (h, w)."""

    fmt: Literal["NCHW", "NHWC", "NC"]
    prefix: int
    grid: tuple[int, int]


def spatial_layout(out: object, model: nn.Module, info: ClassifierInfo, H: int, W: int) -> Spatial | None:
    """Read a module output as a map on a grid of the H x W input, or None.

    (B, C, h, w) is NCHW, (B, h, w, C) NHWC (when only that reading is a grid of the input,
    or the model declares ``output_fmt="NHWC"``); (B, N, C) are tokens: ``num_prefix_tokens``
    of the model (else 0, then up to 2) leading tokens, then an h x w grid in raster order.
    Token outputs of a model with an ``Unroll`` module (Hiera: mask-unit order) have no grid.
    """
    if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
        return None
    if out.ndim == 4:
        nchw, nhwc = _fits(out.shape[2], out.shape[3], H, W), _fits(out.shape[1], out.shape[2], H, W)
        if nhwc and (not nchw or info.output_fmt == "NHWC"):
            return Spatial("NHWC", 0, (out.shape[1], out.shape[2]))
        if nchw:
            return Spatial("NCHW", 0, (out.shape[2], out.shape[3]))
        return None
    if out.ndim == 3 and not _unrolled(model):
        T0 = int(getattr(model, "num_prefix_tokens", 0) or 0)
        got = _grid_of_tokens(out.shape[1], H, W, tuple(dict.fromkeys((T0, 0, 1, 2))))
        return None if got is None else Spatial("NC", got[0], got[1])
    return None


def _unrolled(model: nn.Module) -> bool:
    try:
        from timm.models.hiera import Unroll
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, Unroll) for m in model.modules())


def as_bhwc(t: torch.Tensor, sp: Spatial) -> torch.Tensor:
    """A layer output (or its gradient) as (B, h, w, C)."""
    if sp.fmt == "NCHW":
        return t.permute(0, 2, 3, 1)
    if sp.fmt == "NHWC":
        return t
    return t[:, sp.prefix :].reshape(t.shape[0], *sp.grid, t.shape[-1])


def layer_pass(
    model: nn.Module,
    x: torch.Tensor,
    layer: str | None,
    *,
    target: TargetLike,
    info: ClassifierInfo,
) -> tuple[str, torch.Tensor, torch.Tensor, Spatial, torch.Tensor, torch.Tensor | ScoreTarget]:
    """One forward and one backward of the target logit, recording a spatial layer.

    ``layer=None`` picks the default: the last module (in the order modules finish), other
    than an ``nn.Linear`` or an attention module or its parts, whose output lies on a grid of two or more cells of the input
    (``spatial_layout``) and whose grid positions get a non-zero gradient (after a
    class-token read-out, the last blocks' patch outputs do not).

    Returns ``(name, activation (B,h,w,C), gradient (B,h,w,C), spatial, logits, target)``.
    """
    x = check_tensor(info, x, model)
    H, W = x.shape[-2:]
    names = {m: n for n, m in model.named_modules() if n}
    if layer is not None:
        if not isinstance(layer, str):
            raise InputError(f"layer must be a module name (a string) for {info.name}, got {layer!r}")
        try:
            mod = model.get_submodule(layer)
        except AttributeError:
            raise InputError(f"no module named {layer!r} in {info.name}{suggest(layer, names.values())}") from None
        watched = {mod: layer}
    else:
        if _unrolled(model):
            raise InputError(
                f"{info.name} keeps its tokens in mask-unit (unrolled) order, not on the image grid, so there is "
                "no default Grad-CAM layer; pass layer= naming a module with a (B, C, h, w) output"
            )
        skip = _inside_attention(model)
        watched = {m: n for m, n in names.items() if id(m) not in skip and not isinstance(m, nn.Linear)}
    found: list[tuple[str, torch.Tensor, Spatial]] = []
    bad: dict[str, object] = {}

    def hook(module, args, out):
        sp = spatial_layout(out, model, info, H, W)
        if sp is not None and layer is None and sp.grid[0] * sp.grid[1] < 2:
            sp = None  # the default is a feature map of 2+ cells, not a pooled vector
        if sp is not None and out.requires_grad:
            name = watched[module]
            if found and found[-1][1] is out:  # the same tensor: keep the outermost module's name
                if name.startswith(found[-1][0] + ".") or not found[-1][0].startswith(name + "."):
                    return
                found.pop()
            found.append((name, out, sp))
        elif layer is not None:
            bad[layer] = out

    state = SavedState(model, grads=True)
    handles = [m.register_forward_hook(hook) for m in watched]
    bn_handles = contiguous_bn_grads(model)  # torch's BatchNorm backward at batch 1 (bn_grad.py)
    try:
        state.freeze()
        xin = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = _logits(model, xin)
        for h in handles:
            h.remove()
        handles = []
        tgt = resolve_target(target, logits)
        if layer is not None and not found:
            o = bad.get(layer)
            got = "did not run" if layer not in bad else (
                f"outputs {type(o).__name__}{tuple(o.shape) if isinstance(o, torch.Tensor) else ''}")
            raise InputError(
                f"Grad-CAM needs a layer whose output is (B, C, h, w) or tokens (B, N, C) on a grid of the "
                f"{H}x{W} input, but {layer!r} {got}"
            )
        if not found:
            raise InputError(f"no module of {info.name} outputs a map on the input grid; pass layer=")
        y = target_score(logits, tgt, "logit").sum()
        outs = [o for _, o, _ in found]
        grads = torch.autograd.grad(y, outs, allow_unused=True)
        pick = None
        for (name, o, sp), g in reversed(list(zip(found, grads))):
            if layer is not None or (g is not None and bool(as_bhwc(g, sp).ne(0).any())):
                pick = (name, o, sp, torch.zeros_like(o) if g is None else g)
                break
        if pick is None:
            raise InputError(f"no layer of {info.name} on the input grid receives a gradient; pass layer=")
    finally:
        for h in handles + bn_handles:
            h.remove()
        state.restore()
    name, o, sp, g = pick
    return name, as_bhwc(o.detach(), sp), as_bhwc(g.detach(), sp), sp, logits.detach(), tgt


def cam_layout(sp: Spatial, H: int, W: int) -> TokenLayout:
    """The layout of a map on a layer's grid: cells of ``ceil(H/h) x ceil(W/w)`` pixels."""
    h, w = sp.grid
    return TokenLayout(0, 0, (h, w), (-(-H // h), -(-W // w)), (H, W), "avg")


def capture_any(model: nn.Module, x: torch.Tensor, needs, *, target: TargetLike = None, info: ModelInfo):
    """``session.capture`` for a ViT; ``capture_classifier`` (logits and input gradient only)
    for another classifier."""
    if isinstance(info, ClassifierInfo):
        extra = needs.needs_unfused or needs.activations or needs.inputs or needs.attn_grad
        if extra:
            raise not_defined(info, "this capture")
        return capture_classifier(model, x, input_grad=needs.input_grad, target=target, info=info)
    from .session import capture

    return capture(model, x, needs, target=target, info=info)


def not_token_mode(info: ClassifierInfo) -> UnsupportedModelError:
    """The error for ``mode="drop"`` (removing patch tokens) on a classifier without them."""
    return UnsupportedModelError(
        f"mode 'drop' removes patch tokens from a ViT's sequence, but {info.reason}; use a pixel mode "
        f"({', '.join(PIXEL_MODES)})"
    )
