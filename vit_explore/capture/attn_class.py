"""Class attention: CaiT's class blocks and XCiT's class-attention stage (``timm.models.cait.ClassAttn``).

Only the class token queries: ``q(x[:, 0])`` against ``k(x)`` over [CLS, patches], scores
``(q·scale) kᵀ`` (B, H, 1, N), softmax, ``attn_drop``, ``attn @ v`` updates the class token
alone; the patch tokens pass the block unchanged (CaiT) or get only token-wise terms (XCiT:
``x + γ·norm1(x)`` and the MLP), never a mixture of other tokens.

Token-to-token trace. Every block's attention is laid out on the N = 1 + P tokens the read-out
sees (``to_tokens``): a class block's (B, H, 1, N) is row 0, and every other row is the
identity (the token passes); a block that runs before the class token exists (CaiT's patch
blocks, over the P patches) fills rows and columns T… and leaves the class token's row as the
identity. Scores are laid out alike (the identity rows as 0 on the diagonal, -inf elsewhere, so
``softmax(scores) = attn`` holds row by row for class attention) and gradients as zeros (those
entries are not in the model's graph).

XCiT's patch stage is cross-covariance attention (XCA: softmax over channel × channel, the
tokens mixed by the local patch interaction's convolutions): it has no token-to-token attention,
so capture sees only the class-attention blocks and ``ViTInfo.below`` says why the methods that
compose attention from the input up are not defined there.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import CaptureError, UnsupportedModelError
from .attn_base import AttentionAdapter, forward_params

#: the methods that apply to a model whose lower stage has no token attention (XCiT)
_APPLY_BELOW = (
    "raw_attention and attn_grad_cam on one class-attention block, and the methods without attention: "
    "saliency, integrated_gradients, occlusion, rise, grad_cam"
)


class ClassAttention(AttentionAdapter):
    family = "class attention (CaiT / XCiT)"
    score_terms = "(q(x_cls)·scale) k(x)ᵀ: the class token's query over [CLS, patches]"
    lrp_rule = False

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return (
            all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q", "k", "v", "proj"))
            and getattr(attn, "qkv", None) is None
            and isinstance(getattr(attn, "attn_drop", None), nn.Module)
            and forward_params(attn) == ("x",)
        )

    @staticmethod
    def qkv_called(attn: nn.Module) -> bool:
        return False


def class_blocks(model: nn.Module) -> tuple[nn.Module, ...]:
    """The class-attention blocks (CaiT ``blocks_token_only``, XCiT ``cls_attn_blocks``), or ()."""
    for name in ("blocks_token_only", "cls_attn_blocks"):
        seq = getattr(model, name, None)
        kids = list(seq.children()) if isinstance(seq, nn.Module) else []
        if kids and all(ClassAttention.matches(getattr(b, "attn", None) or nn.Identity()) for b in kids):
            return tuple(kids)
    return ()


def is_cross_covariance(attn: nn.Module) -> bool:
    """XCA's structure: a learned per-head ``temperature`` scaling channel × channel scores."""
    return isinstance(getattr(attn, "temperature", None), torch.Tensor) and isinstance(getattr(attn, "qkv", None), nn.Linear)


def xca_reason(model: nn.Module) -> str:
    return (
        f"{type(model).__name__}'s patch stage uses cross-covariance attention (XCA: a softmax over channel x "
        "channel, the tokens mixed by the local patch interaction's convolutions), which has no token-to-token "
        "attention; only its class-attention blocks do"
    )


def layer_blocks(model: nn.Module, attns: tuple[nn.Module, ...]) -> tuple[str, ...]:
    """Module name of the block of every recorded attention (``"blocks.3"``, CaiT's
    ``"blocks_token_only.0"``, XCiT's ``"cls_attn_blocks.1"``)."""
    owner: dict[int, str] = {}
    for name, mod in model.named_modules():
        a = getattr(mod, "attn", None)
        if isinstance(a, nn.Module):
            owner.setdefault(id(a), name)
    return tuple(owner.get(id(a), f"blocks.{i}") for i, a in enumerate(attns))


Fill = Literal["attn", "grad", "scores"]


def to_tokens(t: torch.Tensor, n: int, prefix: int, fill: Fill, *, class_row: bool, patch_stage: bool) -> torch.Tensor:
    """A block's (B, H, q, k) attention, gradient or scores laid out on all N tokens (module docstring).

    Args:
        class_row: the block is class attention (one query row, the class token's).
        patch_stage: the block runs before the model adds its prefix tokens (CaiT, ConViT).
    """
    q, k = t.shape[-2:]
    if q == n and k == n or not (class_row or patch_stage):
        return t  # the caller checks that an N x N attention has the layout's N
    B, H = t.shape[:2]
    eye = torch.eye(n, dtype=t.dtype, device=t.device)
    if fill == "attn":
        base = eye
    elif fill == "grad":
        base = torch.zeros_like(eye)
    else:
        base = torch.full_like(eye, float("-inf")).fill_diagonal_(0.0)
    out = base.expand(B, H, n, n).clone()
    if class_row and q == 1 and k == n:  # class attention: the class token's row
        out[:, :, :1, :] = t
    elif patch_stage and q == k == n - prefix:  # a block before the class token is added: the patch tokens
        out[:, :, prefix:, prefix:] = t
    else:
        raise CaptureError(f"an attention of {q} x {k} tokens does not fit the {n} tokens of the read-out")
    return out


def check_composable(
    method: str, notes: tuple[str | None, ...], below: str | None, start: int | None = 0, probabilities: bool = True,
) -> None:
    """Refuse a method that composes attention over blocks ``start…`` where it is not defined.

    Args:
        notes: per block, why its attention rows are not probabilities (None where they are).
        below: why the model mixes tokens below its first recorded block without token attention (XCiT).
        start: the method's first block (None: a method without ``start_layer`` that reads every block).
        probabilities: the method needs the rows to be probabilities (rollout, attention flow, TAM, AG-CAM).
    """
    if below:
        raise UnsupportedModelError(
            f"{method} composes token-to-token attention from the input up, but {below}; methods that apply: "
            f"{_APPLY_BELOW}"
        )
    bad = [i for i in range(start or 0, len(notes)) if notes[i]] if probabilities else []
    if bad:
        first_ok = bad[-1] + 1
        fix = f"start_layer >= {first_ok} (the blocks after them), or " if start is not None and first_ok < len(notes) else ""
        raise UnsupportedModelError(
            f"{method} needs attention rows that are probabilities, but blocks {bad[0]}..{bad[-1]} {notes[bad[0]]}; "
            f"use {fix}chefer_generic, attn_grad_cam, raw_attention or attn_lrp"
        )
