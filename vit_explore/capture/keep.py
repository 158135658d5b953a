"""Keep some tokens of a model whose scores depend on each token's grid position (rotary and
relative-position-bias attention), so that a dropped token takes its position terms with it.

Part of ``vit_explore.capture``. ``ablation.drop_tokens`` uses it for the families whose
attention adapter says ``keeps_positions``: EVA / EVA-02 / ``vit_*_rope_*`` / DINOv3 (the
rotary tensor passed as ``forward(x, rope=...)`` covers the patch tokens, (..., P, 2D)) and BEiT /
BEiT v2 / ``vit_relpos_*`` / ``vit_srelpos_*`` (a bias (…, H, N, N) over every token, from a
per-block table, ``rel_pos.get_bias()`` or a model-level shared bias).

``keep_positions`` slices, inside each attention module's own forward:

* the ``rope`` keyword to the kept patches' rows (their original grid positions), one set per
  output sequence: (K, ..., n, 2D);
* every (…, N, N) tensor that meets the (K, H, n, n) scores (an ``add`` or the ``attn_mask`` of
  ``scaled_dot_product_attention``, on the fused and the unfused path) to the kept tokens' rows
  and columns, ``B[..., rows_k, :][..., rows_k]``.

The model computes its position terms exactly as it always does (the full rotary tensor, the
full bias); only the rows and columns of the dropped tokens are left out. Nothing is recomputed
and nothing is patched: one forward pre-hook per attention module and a
``TorchFunctionMode`` active only while that module runs (the mechanism of ``tap.ScoreTap``),
all removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from .adapters import adapter_for
from .attn_class import class_blocks, is_cross_covariance
from .attn_gpsa import GatedPositionalAttention

__all__ = ["DropSite", "drop_site", "keep_gpsa", "keep_positions", "slice_bias", "slice_rope"]

_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.add_,
         torch.Tensor.__iadd__}
_SDPA = {F.scaled_dot_product_attention}


def slice_rope(rope: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """The rotary tensor (..., P, 2D) of the kept patches: (..., n, 2D) for one set (``patches``
    (1, n)), else (K, ..., n, 2D) with a head axis of 1 added to a 2-D tensor (so that it
    broadcasts against (K, H, n, D) queries)."""
    if patches.shape[0] == 1:
        return rope.index_select(-2, patches[0])
    out = rope.movedim(-2, 0)[patches]  # (K, n, ..., 2D)
    out = out.movedim(1, -2)  # (K, ..., n, 2D)
    return out.unsqueeze(1) if rope.ndim == 2 else out


def slice_bias(bias: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows and columns ``rows`` (K, n) (token indices into the full sequence) of a bias
    (..., N, N) whose leading axes are 1 or absent: (K, H, n, n) (K = 1: (1, H, n, n))."""
    b = bias.reshape(-1, *bias.shape[-3:]) if bias.ndim >= 3 else bias.reshape(1, 1, *bias.shape)
    if b.shape[0] != 1:  # a per-image bias would have to follow each set to its image: not a position bias
        raise RuntimeError(f"a (B, H, N, N) bias with B = {b.shape[0]} cannot be sliced by kept tokens")
    out = b[0][:, rows[:, :, None], rows[:, None, :]]  # (H, K, n, n)
    return out.transpose(0, 1)


class DropSite(NamedTuple):
    """Where ``ablation.drop_tokens`` cuts the token sequence of a model.

    ``target``: the module whose output (``patch_drop``) or, with ``before``, whose input (the
    first block) is cut; ``prefix``: the prefix tokens in the sequence there (0 on CaiT and ConViT,
    whose class token joins after the patch blocks); ``attns``: every block's attention;
    ``positional``: some of them take rotary / relative-position terms (``keep_positions``);
    ``gpsa``: ConViT's gated positional attentions (``keep_gpsa``)."""

    target: nn.Module
    before: bool
    prefix: int
    attns: tuple[nn.Module, ...]
    positional: bool
    gpsa: tuple[nn.Module, ...]


def drop_site(model: nn.Module) -> DropSite:
    """The cut of ``model`` (a timm ViT, after ``hf.as_vit``): its ``patch_drop`` (timm
    VisionTransformer), or the first block's input where the position terms live in the blocks
    (rotary, relative bias: EVA, EVA-02, RoPE, DINOv3, BEiT, relpos; ConViT's GPSA), where the
    class token joins after the patch blocks (CaiT, ConViT: the cut is then after every position
    embedding and before any class token) or where the model has no ``patch_drop`` module but
    embeds its patches once (NaFlexViT's ``embeds``: position embedding included; the blocks take no
    mask in image mode, and a kept patch's rows are what its image-mode forward computes).

    Raises:
        UnsupportedModelError: XCiT (its patch stage mixes tokens on the grid), or a model with
            none of these (SAM ViT's windows and others).
    """
    blocks = getattr(model, "blocks", None)
    kids = list(blocks.children()) if isinstance(blocks, nn.Module) else []
    found = [getattr(b, "attn", None) for b in kids]
    ok = bool(found) and all(isinstance(a, nn.Module) for a in found)
    attns: tuple[nn.Module, ...] = tuple(a for a in found if isinstance(a, nn.Module)) if ok else ()
    name = type(model).__name__
    if ok and any(is_cross_covariance(a) for a in attns):
        raise UnsupportedModelError(
            f"token dropping is not defined on {name}: its patch stage mixes the tokens with depthwise 3x3 "
            "convolutions over the patch grid (local patch interaction) and attends over channels, not tokens (XCA), "
            "so a removed token leaves a hole in the grid, not a shorter sequence; use a pixel mode of vx.intervene "
            "(blur, mean, noise, zero) instead"
        )
    positional = any(adapter_for(a).keeps_positions for a in attns)
    gpsa = tuple(a for a in attns if GatedPositionalAttention.matches(a))
    local = getattr(model, "local_up_to_layer", None)
    late = bool(class_blocks(model)) or (bool(gpsa) and isinstance(local, int) and local > 0)
    naflex = ok and isinstance(getattr(model, "embeds", None), nn.Module) and getattr(model, "patch_drop", 0) is None
    T = 0 if late else int(getattr(model, "num_prefix_tokens", 0))
    if ok and (positional or late or gpsa or naflex):
        return DropSite(kids[0], True, T, attns, positional, gpsa)
    target = getattr(model, "patch_drop", None)
    if not isinstance(target, nn.Module):
        raise UnsupportedModelError(
            f"{name} has no patch_drop module after the position embedding; "
            "token dropping needs a timm VisionTransformer"
        )
    return DropSite(target, False, T, attns, False, ())


class _Kept:
    """The kept tokens of the current pass: ``rows`` (K, n) into a sequence of ``full`` tokens."""

    def __init__(self, num_prefix: int) -> None:
        self.T = num_prefix
        self.rows: torch.Tensor | None = None
        self.patches: torch.Tensor | None = None
        self.full = 0

    def set(self, rows: torch.Tensor, full: int) -> None:
        self.rows, self.full = rows, full
        self.patches = rows[:, self.T :] - self.T

    @property
    def active(self) -> bool:
        return self.rows is not None and self.rows.shape[1] != self.full

    def fit(self, t):
        """``t`` sliced to the kept rows and columns if it is (..., N, N), else ``t``."""
        if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-2:] == (self.full, self.full):
            assert self.rows is not None
            return slice_bias(t, self.rows.to(t.device))
        return t

    def is_scores(self, t) -> bool:
        assert self.rows is not None
        n = self.rows.shape[1]
        return isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-2:] == (n, n)


class _SliceMode(TorchFunctionMode):
    """While one attention module runs: an ``add`` of a (…, N, N) tensor to (…, n, n) scores,
    and the ``attn_mask`` of ``scaled_dot_product_attention``, take the kept rows and columns."""

    def __init__(self, kept: _Kept) -> None:
        super().__init__()
        self.kept = kept

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        k = self.kept
        if func in _ADDS and len(args) >= 2:
            a, b = args[0], args[1]
            if k.is_scores(a):
                args = (a, k.fit(b), *args[2:])
            elif k.is_scores(b) and func is not torch.Tensor.add_ and func is not torch.Tensor.__iadd__:
                args = (k.fit(a), b, *args[2:])
        elif func in _SDPA:
            if "attn_mask" in kwargs:
                kwargs = {**kwargs, "attn_mask": k.fit(kwargs["attn_mask"])}
            elif len(args) >= 4:
                args = (*args[:3], k.fit(args[3]), *args[4:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def keep_positions(attns: Sequence[nn.Module], num_prefix: int) -> Iterator[_Kept]:
    """Inside every module of ``attns``, slice the position terms to the kept tokens.

    Yields a ``_Kept`` whose ``set(rows, full)`` the caller calls, before the blocks run, with
    ``rows`` (K, n) long, the kept tokens' indices into the full sequence (the prefix tokens
    ``0..T-1`` first, then ``T + p`` for each kept patch ``p``; one row per output sequence) and
    ``full`` = N, the length of the full sequence. The token sequence itself is cut by the caller
    (``ablation.drop_tokens``); with ``n == N`` (nothing dropped) nothing is changed.
    """
    kept = _Kept(num_prefix)
    modes: list[_SliceMode] = []
    inside: list[bool] = []

    def pre(i: int):
        def hook(module, args, kwargs):
            if not kept.active:
                return None
            rope = kwargs.get("rope")
            if isinstance(rope, torch.Tensor):
                assert kept.patches is not None
                kwargs = {**kwargs, "rope": slice_rope(rope, kept.patches.to(rope.device))}
            for key in ("shared_rel_pos_bias", "shared_rel_pos"):  # the model's shared bias
                if isinstance(kwargs.get(key), torch.Tensor):
                    kwargs = {**kwargs, key: kept.fit(kwargs[key])}
            if not inside[i]:
                modes[i].__enter__()
                inside[i] = True
            return args, kwargs

        return hook

    def post(i: int):
        def hook(module, args, out):
            close(i)

        return hook

    def close(i: int) -> None:
        if inside[i]:
            inside[i] = False
            modes[i].__exit__(None, None, None)

    handles = []
    try:
        for i, attn in enumerate(attns):
            modes.append(_SliceMode(kept))
            inside.append(False)
            handles.append(attn.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(attn.register_forward_hook(post(i)))
        yield kept
    finally:
        for i in reversed(range(len(modes))):
            close(i)
        for h in handles:
            h.remove()


@contextlib.contextmanager
def keep_gpsa(attns: Sequence[nn.Module], kept: _Kept) -> Iterator[None]:
    """ConViT's gated positional self-attention (``timm.models.convit.GPSA``, d'Ascoli et al. 2021)
    on the kept patches: its positional scores ``pos_proj(rel_indices)`` come from the (1, P, P, 3)
    grid offsets (dx, dy, dx² + dy²) it caches per sequence length (and would rebuild, for a
    square grid of ``int(√n)`` side, at any other length). While each GPSA module runs, its
    ``rel_indices`` buffer is the full grid's, restricted to the kept patches' rows and columns,
    (K, n, n, 3); the module's own buffer goes back right after it (and in ``finally``).

    The full grid's offsets are the module's own cached buffer when it holds P patches, else
    ``module.get_rel_indices(P)`` (the model's own construction, as a plain forward makes it).
    The GPSA blocks run before ConViT adds its class token, so ``kept.rows`` are patch indices.
    """
    found: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    full_of: dict[tuple[int, int], torch.Tensor] = {}

    def pre(module, args):
        if not kept.active:
            return
        assert kept.rows is not None
        P = kept.full
        own = module.rel_indices
        full = own if own is not None and own.shape[1] == P else full_of.get((id(module), P))
        if full is None:
            full = full_of[(id(module), P)] = module.get_rel_indices(P)
        rows = kept.rows.to(full.device)
        found.setdefault(id(module), (module, own))
        module.rel_indices = full[0][rows[:, :, None], rows[:, None, :]]  # (K, n, n, 3)
        return

    def restore(module, *_) -> None:
        item = found.pop(id(module), None)
        if item is not None:
            module.rel_indices = item[1]

    handles = []
    try:
        for a in attns:
            handles.append(a.register_forward_pre_hook(pre))
            handles.append(a.register_forward_hook(restore))
        yield
    finally:
        for h in handles:
            h.remove()
        for module, own in list(found.values()):
            module.rel_indices = own
        found.clear()
