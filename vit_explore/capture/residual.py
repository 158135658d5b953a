"""The residual stream of a timm ViT: record it block by block, read it out with the model's
own final norm and head, and overwrite parts of it during a pass (activation patching).

Part of ``vit_explore.capture``: the only place that touches ``nn.Module`` internals. Every
pass runs in eval and inference mode, hooks are per module and removed in ``finally``, and no
flag is left changed, so the model is left exactly as it was found.

Sites (timm ``Block``: ``x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))``):

* ``resid[l]``: the input of block ``l`` (``resid[0]`` = the embedded tokens, after
  ``norm_pre``); ``resid[L]`` is the output of the last block, before ``model.norm``.
* ``heads[l]``: the input of block ``l``'s ``attn.proj``, (B, N, H * d): head ``h``'s output
  ``softmax(q k^T * scale) v`` in channels ``h*d .. (h+1)*d``.
* ``attn_out[l]`` / ``mlp_out[l]``: what block ``l`` adds to the stream (outputs of ``ls1`` / ``ls2``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import checked_output
from ..errors import CaptureError, UnsupportedModelError
from .adapters import ViTInfo, inspect_vit
from .state import eval_mode

__all__ = [
    "Stream",
    "check_decomposable",
    "readout_logits",
    "record_stream",
    "replace_head",
    "replace_tokens",
    "token_logits",
]


@dataclass(frozen=True)
class Stream:
    """One recorded pass. Tensors are ordinary (not inference) tensors, detached.

    Attributes:
        logits: (B, C), the model's output.
        resid: L + 1 entries (B, N, D): the input of every block, then the last block's output.
        heads: L entries (B, N, D), the input of each ``attn.proj`` (empty unless asked).
        attn_out: L entries (B, N, D), the output of each ``ls1`` (empty unless asked).
        mlp_out: L entries (B, N, D), the output of each ``ls2`` (empty unless asked).
    """

    logits: torch.Tensor
    resid: tuple[torch.Tensor, ...]
    heads: tuple[torch.Tensor, ...] = ()
    attn_out: tuple[torch.Tensor, ...] = ()
    mlp_out: tuple[torch.Tensor, ...] = ()


def _blocks(model: nn.Module, info: ViTInfo) -> list[nn.Module]:
    blocks = list(model.blocks)
    if len(blocks) != info.num_layers:
        raise UnsupportedModelError("model.blocks does not match the attention modules found")
    return blocks


def record_stream(
    model: nn.Module, x: torch.Tensor, *, heads: bool = False, parts: bool = False, info: ViTInfo | None = None
) -> Stream:
    """Run ``model`` on ``x`` (B, 3, H, W) once and record its residual stream.

    ``heads=True`` also records the input of every ``attn.proj`` (the heads' outputs);
    ``parts=True`` records those and each block's attention and MLP terms (needs pre-norm
    timm ``Block`` s, see ``check_decomposable``).
    """
    info = info or inspect_vit(model)
    blocks = _blocks(model, info)
    if parts:
        check_decomposable(model, info)
    L = len(blocks)
    want_heads = heads or parts
    resid: list[torch.Tensor | None] = [None] * (L + 1)
    head_in: list[torch.Tensor | None] = [None] * L
    attn_out: list[torch.Tensor | None] = [None] * L
    mlp_out: list[torch.Tensor | None] = [None] * L

    def put(store: list, i: int, pre: bool):
        if pre:
            def pre_hook(module, args):
                store[i] = args[0]
            return pre_hook

        def hook(module, args, out):
            store[i] = out
        return hook

    handles = []
    try:
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_pre_hook(put(resid, i, True)))
            if want_heads:
                proj = getattr(info.attns[i], "proj", None)
                if not isinstance(proj, nn.Module):
                    raise UnsupportedModelError(f"block {i}'s attention has no proj module to read the heads at")
                handles.append(proj.register_forward_pre_hook(put(head_in, i, True)))
            if parts:
                handles.append(blk.ls1.register_forward_hook(put(attn_out, i, False)))
                handles.append(blk.ls2.register_forward_hook(put(mlp_out, i, False)))
        handles.append(blocks[-1].register_forward_hook(put(resid, L, False)))
        with torch.inference_mode(), eval_mode(model):
            logits = checked_output(model(x), x)
    finally:
        for h in handles:
            h.remove()
    missing_heads = want_heads and any(v is None for v in head_in)
    if any(r is None for r in resid) or missing_heads or (parts and any(v is None for v in (*attn_out, *mlp_out))):
        raise CaptureError("a block did not run in the forward pass; the model must call every block in order")

    def out(seq: list) -> tuple[torch.Tensor, ...]:
        return tuple(t.clone() for t in seq)

    return Stream(
        logits=logits.clone(),
        resid=out(resid),
        heads=out(head_in) if want_heads else (),
        attn_out=out(attn_out) if parts else (),
        mlp_out=out(mlp_out) if parts else (),
    )


def check_decomposable(model: nn.Module, info: ViTInfo | None = None) -> None:
    """Raise ``UnsupportedModelError`` unless every block adds ``ls1(proj(heads))`` and
    ``ls2(mlp(.))`` to the stream (timm's pre-norm ``Block``) and the final norms are
    LayerNorms or Identity: then the logit splits exactly into per-head terms."""
    info = info or inspect_vit(model)
    if info.readout == "map":
        raise UnsupportedModelError(
            "the classifier reads an attention-pool (MAP) head (a softmax attention and an MLP over the tokens), "
            "so the logit does not split into per-head terms of the stream; use the ablation attribution "
            "(vx.ablate_heads) instead"
        )
    for i, blk in enumerate(_blocks(model, info)):
        attn = info.attns[i]
        ok = (
            all(isinstance(getattr(blk, a, None), nn.Module) for a in ("ls1", "ls2", "mlp"))
            and (isinstance(blk.ls1, nn.Identity) or isinstance(getattr(blk.ls1, "gamma", None), torch.Tensor))
            and isinstance(getattr(attn, "proj", None), nn.Linear)
            and isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity)
        )
        if not ok:
            raise UnsupportedModelError(
                f"block {i} ({type(blk).__name__}) does not add ls1(attn.proj(heads)) to the residual stream "
                "(post-norm blocks and attention with a norm before proj mix the heads non-linearly), so the "
                "per-head direct attribution is not exact; use the ablation attribution (vx.ablate_heads) instead"
            )
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):  # e.g. the zero-shot head (capture/hf_zero_shot.py): normalises first
        raise UnsupportedModelError(
            f"model.head is a {type(head).__name__}, not a Linear: the logit is not a linear function of the final "
            "stream, so the per-head direct attribution is not exact; use the ablation attribution "
            "(vx.ablate_heads) instead"
        )
    for name in ("norm", "fc_norm"):
        m = getattr(model, name, nn.Identity())
        if not isinstance(m, (nn.Identity, nn.LayerNorm)):
            raise UnsupportedModelError(
                f"model.{name} is a {type(m).__name__}; the direct attribution freezes a LayerNorm's scale and "
                "supports only LayerNorm or Identity there"
            )


def readout_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own ``norm`` and ``forward_head`` on a residual stream (M, N, D) -> (M, C)."""
    with torch.inference_mode(), eval_mode(model):
        out = model.forward_head(model.norm(tokens))
    return out.clone()


def token_logits(model: nn.Module, tokens: torch.Tensor, info: ViTInfo | None = None) -> torch.Tensor:
    """Every token read out on its own, as the model reads out its read-out token: (M, N, D) -> (M, N, C).

    ``head(fc_norm(norm(t)))``; a distilled model averages ``head`` and ``head_dist`` as it does
    for its two read-out tokens.
    """
    info = info or inspect_vit(model)
    if info.readout == "cls_avg":
        raise UnsupportedModelError(
            "the classifier reads concat(CLS, mean of patches) (Hugging Face DINOv2): one token alone has no "
            "read-out; use the read-out of the whole sequence (logit_lens(tokens='readout'))"
        )
    if info.readout == "map":
        raise UnsupportedModelError(
            "the classifier reads an attention-pool (MAP) head that attends over all tokens together, so one "
            "token alone has no read-out of its own; use tokens='readout' (the model's own head on the stream)"
        )
    with torch.inference_mode(), eval_mode(model):
        t = model.norm(tokens)
        if info.readout == "cls_dist":
            out = 0.5 * (model.head(t) + model.head_dist(t))
        else:
            out = model.head(model.fc_norm(t))
    return out.clone()  # copied out of inference mode


@contextlib.contextmanager
def replace_tokens(model: nn.Module, layer: int, values: torch.Tensor, tokens: torch.Tensor | None) -> Iterator[None]:
    """During the block, the input of block ``layer`` has ``values`` (B or 1, N, D) at the token
    indices ``tokens`` (None: every token)."""
    info = inspect_vit(model)
    blk = _blocks(model, info)[layer]

    def hook(module, args):
        x = args[0]
        v = values.to(dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)
        if v.shape[1:] != x.shape[1:]:
            raise CaptureError(f"the patched tokens {tuple(v.shape)} do not fit the stream {tuple(x.shape)}")
        if tokens is None:
            x = v.clone()
        else:
            x = x.clone()
            idx = tokens.to(x.device)
            x[:, idx] = v[:, idx]
        return (x, *args[1:])

    handle = blk.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def replace_head(
    model: nn.Module, layer: int, head: int, values: torch.Tensor, tokens: torch.Tensor | None
) -> Iterator[None]:
    """During the block, head ``head`` of block ``layer`` outputs ``values`` (B or 1, N, D), the
    input of ``attn.proj`` recorded on another pass, at the token indices ``tokens`` (None: all)."""
    info = inspect_vit(model)
    attn = info.attns[layer]
    H = int(attn.num_heads)
    proj = getattr(attn, "proj", None)
    if not isinstance(proj, nn.Module):
        raise UnsupportedModelError(f"block {layer}'s attention has no proj module to patch a head at")

    def hook(module, args):
        y = args[0]
        d = y.shape[-1] // H
        v = values.to(dtype=y.dtype, device=y.device).expand(y.shape[0], -1, -1)
        if v.shape[1:] != y.shape[1:]:
            raise CaptureError(f"the patched head output {tuple(v.shape)} does not fit {tuple(y.shape)}")
        y = y.clone()
        sl = slice(head * d, (head + 1) * d)
        if tokens is None:
            y[..., sl] = v[..., sl]
        else:
            idx = tokens.to(y.device)
            y[:, idx, sl] = v[:, idx, sl]
        return (y, *args[1:])

    handle = proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
