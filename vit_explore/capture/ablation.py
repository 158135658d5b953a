"""Reversible model surgery for interventions: token dropping, head ablation, token blocking.

Every function here is a context manager (or runs inside one) that registers per-module
hooks and removes them in ``finally``; nothing is patched at class level, no flag is
changed, so the model is left exactly as it was found. They compose freely (nest them or
enter them on one ``contextlib.ExitStack``). Like the rest of
``vit_explore.capture``, it is where ``nn.Module`` internals are touched.

* ``drop_tokens``: after the position embedding (the output of ``model.patch_drop``; on
  rotary and relative-position families the first block's input), keep the prefix tokens and
  only the chosen patch tokens; the kept tokens keep their own position embeddings (and their
  own rotary rows and bias rows/columns, ``keep.py``), so the cost falls with the number of
  kept tokens. Global-average-pool
  models then average over the kept patches.
* ``ablate_heads``: zero the outputs of chosen heads (their channels at the input of
  ``attn.proj``, i.e. after the per-head ``softmax(QK^T) V`` and after timm's optional
  ``attn.norm``), per layer.
* ``block_tokens``: no query may attend to the chosen tokens (an additive ``-inf`` column
  mask given to the attention as ``attn_mask`` (timm ``Attention``, rotary attention; fused and
  unfused paths), or, for families whose forward takes no mask (BEiT, relpos), added to the
  scores their own softmax receives, on the unfused path for the block).
"""

from __future__ import annotations

import array
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._checks import as_list, as_tensor, checked_output
from ..errors import InputError, UnsupportedModelError
from .adapters import inspect_vit
from .attn_base import forward_params
from .hf import HFAttention, as_vit, mask_pre_hook
from .keep import drop_site, keep_gpsa, keep_positions
from .state import SavedState, eval_mode
from .tap import ScoreTap

__all__ = [
    "ablate_heads",
    "block_tokens",
    "drop_tokens",
    "forward_logits",
    "forward_recording",
]


def forward_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int | None = None, mods: Sequence[nn.Module] | None = None
) -> torch.Tensor:
    """Logits (B, C) of ``x`` (B, 3, H, W) in eval mode, in chunks of ``batch_size``.

    The passes run in ``torch.inference_mode`` (cheaper than ``no_grad``); the (B, C) result
    is copied out of it, so callers get an ordinary tensor they may edit in place.
    ``mods``: ``submodules(model)`` if the caller already walked the model.
    """
    with torch.inference_mode(), eval_mode(model, mods):
        if batch_size is None or x.shape[0] <= batch_size:
            out = model(x)
        else:
            out = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    return checked_output(out, x).clone()


def forward_recording(
    model: nn.Module, x: torch.Tensor, modules: Mapping[str, nn.Module], mods: Sequence[nn.Module] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (B, C) of ``x`` and the outputs of ``modules`` ({name: module}), from one pass
    in eval and inference mode (no autograd record at all: for explainers that need features
    but no gradient, e.g. ViT-CX). The hooks are removed in ``finally``; results are ordinary
    tensors (copied out of inference mode). ``mods``: ``submodules(model)`` if the caller
    already walked the model."""
    got: dict[str, torch.Tensor] = {}

    def store(name: str):
        def hook(module, args, out):
            got[name] = out

        return hook

    handles = [m.register_forward_hook(store(n)) for n, m in modules.items()]
    try:
        with torch.inference_mode(), eval_mode(model, mods):
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in got]
    if missing:
        raise InputError(f"module(s) {', '.join(missing)} did not run in the forward pass")
    return checked_output(logits, x).clone(), {n: t.clone() for n, t in got.items()}


# --------------------------------------------------------------------------- token dropping


@contextlib.contextmanager
def drop_tokens(
    model: nn.Module,
    keep: torch.Tensor | Sequence[int],
    source: torch.Tensor | None = None,
    *,
    checked: bool = False,
) -> Iterator[None]:
    """Keep only some patch tokens after the position embedding.

    Args:
        model: a timm VisionTransformer (with ``patch_drop`` after ``_pos_embed``), or a rotary /
            relative-position one (EVA, EVA-02, RoPE, DINOv3, BEiT, relpos; see below).
        keep: (K, n) long, row-major patch indices kept for each of the K output sequences
            (same n for all rows; group sets by size to run sets of different sizes); or
            one set (K = 1) as a Python list of ints.
        source: (K,) long, which input image each output row comes from (None: row k of
            the input batch, which must then have K images). Lets one patch embedding of
            one image feed K different token subsets.
        checked: the caller guarantees ``keep`` holds valid patch indices (derived from a
            patch grid of the input): the range check is skipped.

    The prefix tokens (CLS, distillation, registers) are always kept; the position
    embeddings the kept tokens received are unchanged. On rotary and relative-position
    families (adapters with ``keeps_positions``: EVA, EVA-02, RoPE, DINOv3, BEiT, relpos) the
    sequence is cut at the first block's input and each attention sees the rotary rows and the
    bias rows and columns of the kept tokens' original positions (``keep.keep_positions``). CaiT and
    ConViT are cut at the first block's input too, before their class token joins (ConViT's GPSA
    sees the grid offsets of the kept patches, ``keep.keep_gpsa``), and NaFlexViT after its
    ``embeds``; XCiT refuses (``keep.drop_site``).
    """
    site = drop_site(as_vit(model))  # where to cut; XCiT and windowed models refuse (capture/keep.py)
    T = site.prefix
    if isinstance(keep, torch.Tensor):
        if keep.ndim != 2:
            raise InputError(f"keep must be (K, n) patch indices, got shape {tuple(keep.shape)}")
        K = keep.shape[0]
        one = keep[0].tolist() if K == 1 else None
    else:
        one, K = [int(k) for k in keep], 1
    if one is not None:  # one set: the prefix and the kept patches' rows, built in Python, for one index_select
        # (over the buffer of an int64 array: half the cost of torch.tensor(list) right after a forward)
        ids = array.array("q", [*range(T), *(k + T for k in one)])
        rows = torch.frombuffer(ids, dtype=torch.long) if ids else torch.zeros(0, dtype=torch.long)  # CaiT: T = 0
        lo, hi = (min(one), max(one)) if one and not checked else (0, -1)
    else:
        lo, hi = (int(keep.min()), int(keep.max())) if keep.numel() and not checked else (0, -1)

    def cut(out: torch.Tensor) -> torch.Tensor:
        _, N, C = out.shape
        P = N - T
        if hi >= P or lo < 0:
            raise InputError(f"kept patch index out of range: the sequence has {P} patches")
        src = out if source is None else out[source.to(out.device)]
        if src.shape[0] != K:
            raise InputError(
                f"{K} kept-token sets for a batch of {src.shape[0]}; pass source= to map sets to images"
            )
        if one is not None:
            return src.index_select(1, rows if rows.device == out.device else rows.to(out.device))
        idx = keep.to(out.device)[..., None].expand(-1, -1, C)
        return torch.cat([src[:, :T], torch.gather(src[:, T:], 1, idx)], dim=1)

    if not site.before:
        handle = site.target.register_forward_hook(lambda module, args, out: cut(out))
        try:
            yield
        finally:
            handle.remove()
        return

    # cut the sequence at the first block's input; on rotary / relative-position families slice the
    # position terms inside every attention to the kept tokens' own positions, on ConViT the GPSA
    # grid offsets (capture/keep.py)
    def rows_of() -> torch.Tensor:
        if one is not None:
            return rows[None]
        pre = torch.arange(T, dtype=torch.long).expand(K, T)
        return torch.cat([pre, keep.cpu() + T], dim=1)

    with contextlib.ExitStack() as stack:
        kept = stack.enter_context(keep_positions(site.attns if site.positional else (), T))
        if site.gpsa:
            stack.enter_context(keep_gpsa(site.gpsa, kept))

        def first(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            y = cut(x)
            kept.set(rows_of(), x.shape[1])
            return ((y, *args[1:]), kwargs) if args else (args, {**kwargs, "x": y})

        handle = site.target.register_forward_pre_hook(first, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


# --------------------------------------------------------------------------- head ablation


@contextlib.contextmanager
def ablate_heads(model: nn.Module, heads: Mapping[int, Sequence[int] | int]) -> Iterator[None]:
    """Switch off attention heads: ``{layer: [head, ...]}`` (negative layers count from the end).

    A head's output ``softmax(q k^T * scale) v`` (its ``head_dim`` channels at the input of
    ``attn.proj``) is set to zero, so only ``proj``'s bias remains of what it contributed.
    """
    info = inspect_vit(as_vit(model))
    L = info.num_layers
    if not isinstance(heads, Mapping):
        raise InputError(f"heads must be a dict {{layer: [heads]}}, got {type(heads).__name__}")
    plan: dict[int, list[int]] = {}
    for layer, hs in heads.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -L <= int(layer) < L:
            raise InputError(f"layer {layer!r} is out of range: the model has {L} blocks (0..{L - 1})")
        attn = info.attns[int(layer) % L]
        H = int(attn.num_heads)
        hs_list = [hs] if isinstance(hs, (int, np.integer)) else as_list(f"heads[{layer}]", hs)
        for h in hs_list:
            if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not -H <= int(h) < H:
                raise InputError(f"head {h!r} of layer {layer} is out of range: the block has {H} heads (0..{H - 1})")
        plan.setdefault(int(layer) % L, []).extend(int(h) % H for h in hs_list)
    handles = []
    try:
        for layer, hs in plan.items():
            attn = info.attns[layer]
            proj = getattr(attn, "proj", None)
            if not isinstance(proj, nn.Module):
                raise UnsupportedModelError(f"block {layer}'s attention has no proj module to ablate heads at")
            handles.append(proj.register_forward_pre_hook(_zero_heads_hook(sorted(set(hs)), int(attn.num_heads))))
        yield
    finally:
        for h in handles:
            h.remove()


def _zero_heads_hook(heads: list[int], num_heads: int):
    def hook(module, args):
        y = args[0]
        d = y.shape[-1] // num_heads
        keep = torch.ones(num_heads, dtype=y.dtype, device=y.device)
        keep[heads] = 0
        y = y * keep.repeat_interleave(d)
        return (y, *args[1:])

    return hook


# --------------------------------------------------------------------------- token blocking


@contextlib.contextmanager
def block_tokens(
    model: nn.Module,
    tokens_or_patches: Sequence[int] | torch.Tensor | np.ndarray,
    layers: Sequence[int] | None = None,
) -> Iterator[None]:
    """No query attends to the chosen tokens in ``layers`` (None: every block).

    Args:
        tokens_or_patches: a boolean patch grid (gh, gw) (those patches' tokens), or a
            sequence of **token** indices into the full sequence (0 = CLS, ``T + p`` = patch
            ``p`` where ``T`` is the number of prefix tokens), or a boolean (N,) token mask.
        layers: block indices (negative from the end).

    The blocked tokens still exist (their own rows attend to the others); for
    global-average-pool models they are still averaged by the read-out. On CaiT and ConViT the
    blocks before the class token joins see the patch columns alone (and both of GPSA's
    softmaxes, content and positional, get the mask); CaiT's class-attention blocks mask the
    class token's one query row. XCiT's patch stage has no token attention: refused.
    """
    info = inspect_vit(as_vit(model))
    if info.below:  # XCiT (capture/attn_class.py)
        raise UnsupportedModelError(
            f"block_tokens masks token-to-token attention, but {info.below}; use vx.intervene with a pixel mode "
            "(blur, mean, noise, zero) instead"
        )
    L = info.num_layers
    sel = range(L) if layers is None else as_list("layers", layers)
    for i in sel:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -L <= int(i) < L:
            raise InputError(f"layer {i!r} is out of range: the model has {L} blocks (0..{L - 1})")
    sel = sorted({int(i) % L for i in sel})
    T = info.num_prefix
    spec = as_tensor("tokens_or_patches", tokens_or_patches)
    if spec.dtype == torch.bool and spec.ndim == 2:
        grid_mask = spec

        def columns(N: int) -> torch.Tensor:
            if N - T != grid_mask.numel():
                raise InputError(
                    f"the patch grid {tuple(grid_mask.shape)} has {grid_mask.numel()} cells but the sequence has "
                    f"{N - T} patch tokens"
                )
            return torch.cat([torch.zeros(T, dtype=torch.bool), grid_mask.reshape(-1)])
    elif spec.dtype == torch.bool and spec.ndim == 1:
        tok_mask = spec

        def columns(N: int) -> torch.Tensor:
            if tok_mask.numel() != N:
                raise InputError(f"the token mask has {tok_mask.numel()} entries but the sequence has {N} tokens")
            return tok_mask
    elif spec.ndim <= 1 and not spec.dtype.is_floating_point:
        idx = spec.reshape(-1).long()

        def columns(N: int) -> torch.Tensor:
            if idx.numel() and (int(idx.max()) >= N or int(idx.min()) < -N):
                raise InputError(f"token index out of range: the sequence has {N} tokens (0..{N - 1})")
            m = torch.zeros(N, dtype=torch.bool)
            m[idx % N] = True
            return m
    else:
        raise InputError(
            "tokens_or_patches must be a bool (gh, gw) patch grid, a bool (N,) token mask or a list of token "
            f"indices; got dtype {spec.dtype} and shape {tuple(spec.shape)}"
        )

    cache: dict = {}

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        N = x.shape[1]
        key = (N, x.dtype, x.device)
        if key not in cache:
            cols = columns(N)
            if bool(cols.all()):
                raise InputError("every token would be blocked; leave at least one token visible")
            bias = torch.zeros(1, 1, N, N, dtype=x.dtype)
            bias[..., cols] = float("-inf")
            cache[key] = bias.to(x.device)
        bias = cache[key]
        old = kwargs.get("attn_mask")
        if old is not None:
            if old.dtype == torch.bool:
                old = torch.zeros_like(old, dtype=x.dtype).masked_fill(~old, float("-inf"))
            bias = old + bias
        return args, {**kwargs, "attn_mask": bias}

    def edit_for(patch_stage: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """-inf on the blocked columns of the (…, q, n) scores a softmax receives; in a block that
        runs before the class token joins (CaiT's patch blocks, ConViT's GPSA blocks, whose two
        softmaxes both receive it) the n columns are the patch tokens alone."""

        def edit(scores: torch.Tensor) -> torch.Tensor:
            n = scores.shape[-1]
            key = ("edit", n, patch_stage, scores.dtype, scores.device)
            if key not in cache:
                cols = columns(n + T)[T:] if patch_stage else columns(n)
                if bool(cols.all()):
                    raise InputError("every token would be blocked; leave at least one token visible")
                bias = torch.zeros(1, 1, 1, n, dtype=scores.dtype)
                bias[..., cols] = float("-inf")
                cache[key] = bias.to(scores.device)
            return scores + cache[key]

        return edit

    handles = []
    taps: list[ScoreTap] = []
    takes_mask = {i: "attn_mask" in forward_params(info.attns[i]) for i in sel}
    masked_by_tap = [info.attns[i] for i in sel if not takes_mask[i]]
    state = SavedState(model, masked_by_tap, grads=False) if masked_by_tap else None
    try:
        for i in sel:
            attn = info.attns[i]
            if isinstance(attn, HFAttention):  # the Hugging Face module itself (also for direct calls)
                handles.append(attn.inner.register_forward_pre_hook(mask_pre_hook(hook), with_kwargs=True))
            elif takes_mask[i]:
                handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
            else:  # the -inf columns go into the scores its own softmax receives (unfused path)
                if hasattr(attn, "fused_attn"):
                    attn.fused_attn = False
                late = info.late_prefix is not None and i < info.late_prefix
                taps.append(ScoreTap(attn, _Discard(), detach=True, edit=edit_for(late)))
        yield
    finally:
        for tap in reversed(taps):
            tap.remove()
        for h in handles:
            h.remove()
        if state is not None:
            state.restore()


class _Discard(list):
    """A list that keeps nothing (``ScoreTap`` used only to edit the scores)."""

    def append(self, item) -> None:
        pass
