"""Recognise a timm Vision Transformer and find its attention modules.

Part of ``vit_explore.capture``, the only package that touches ``nn.Module`` internals.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError
from .attn_base import AttentionAdapter, GenericAttention
from .attn_class import ClassAttention, class_blocks, is_cross_covariance, xca_reason
from .attn_gpsa import GatedPositionalAttention
from .attn_pool import find_pool
from .attn_relbias import RelativeBiasAttention
from .attn_rotary import RotaryAttention
from .attn_talking import TalkingHeadsAttention
from .attn_timm import TimmAttention
from .hf import HFAttentionAdapter, HFRelBiasAdapter  # Hugging Face (capture/hf.py); imports no transformers
from .layout import Readout, TokenLayout

#: adapters tried in order; the first whose ``matches`` accepts the module is used
ADAPTERS: tuple[type[AttentionAdapter], ...] = (
    HFAttentionAdapter, HFRelBiasAdapter, ClassAttention, TalkingHeadsAttention, GatedPositionalAttention,
    RotaryAttention, RelativeBiasAttention, TimmAttention,
)


def adapter_for(attn: nn.Module) -> type[AttentionAdapter]:
    """The adapter of one attention module, chosen by its structure (``GenericAttention`` if none)."""
    for a in ADAPTERS:
        if a.matches(attn):
            return a
    return GenericAttention

_ATTN_ATTRS = ("qkv", "attn_drop", "num_heads", "scale")  # fused_attn where it has a fused path


@dataclass(frozen=True)
class ViTInfo:
    """What capture needs to know about a model.

    Attributes:
        attns: the attention module of every block, in order (L entries).
        num_prefix: ``model.num_prefix_tokens``.
        num_reg: register tokens.
        readout: read-out rule of the classifier (see ``TokenLayout``).
        patch_size: ``(ph, pw)``.
        img_size: the fixed input size, or None when the model takes any size.
        in_chans: input channels of the patch embedding.
        num_classes: classifier outputs.
        adapters: the attention adapter of every block (``adapter_for``), L entries.
        pool: the attention-pool (MAP) head when ``readout == "map"`` (``capture/attn_pool.py``).
        extra_blocks: the class-attention blocks after ``model.blocks`` (CaiT, XCiT), whose
            attention modules are the last entries of ``attns`` (``capture/attn_class.py``).
        below: why the model mixes tokens below its first recorded block without token attention
            (XCiT's cross-covariance stage), else None.
        late_prefix: the first block that sees the prefix tokens where the model adds them after
            its first blocks (CaiT: its class blocks; ConViT: ``local_up_to_layer``), else None.
    """

    attns: tuple[nn.Module, ...]
    num_prefix: int
    num_reg: int
    readout: Readout
    patch_size: tuple[int, int]
    img_size: tuple[int, int] | None
    dynamic_pad: bool
    in_chans: int
    num_classes: int
    adapters: tuple[type[AttentionAdapter], ...] = ()
    pool: nn.Module | None = None
    extra_blocks: tuple[nn.Module, ...] = ()
    below: str | None = None
    late_prefix: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.attns)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def inspect_vit(model: object, *, headless: bool = False) -> ViTInfo:
    """Check that ``model`` is a supported timm ViT and describe it.

    ``headless=True`` accepts a model without a classifier head (``num_classes=0``: its output
    is the pooled embedding), for a callable target (``vit_explore.targets``).

    Raises:
        UnsupportedModelError: not an ``nn.Module``, not a timm VisionTransformer,
            a block without a separate timm ``Attention``, or an unsupported pooling.
    """
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected a timm VisionTransformer (torch.nn.Module), got {name}; "
            "create one with timm.create_model('vit_...') or vit_explore.load_model()."
        )
    embed = "embeds" if isinstance(getattr(model, "embeds", None), nn.Module) else "patch_embed"  # NaFlexViT: embeds
    missing = [a for a in (embed, "blocks", "num_prefix_tokens", "head") if not hasattr(model, a)]
    if missing:
        raise UnsupportedModelError(
            f"expected a timm VisionTransformer (with patch_embed, blocks, num_prefix_tokens, head), "
            f"got {name}, which lacks {', '.join(missing)}. Only Vision Transformers can be explained; "
            "CNNs and hybrid models are not supported."
        )
    attns = []
    extra = class_blocks(model)  # CaiT / XCiT: class attention after the patch blocks
    below = None
    if extra and all(is_cross_covariance(getattr(b, "attn", nn.Identity())) for b in model.blocks):
        below = xca_reason(model)  # XCiT: only the class-attention blocks have token attention
    for i, blk in enumerate(() if below else model.blocks):
        attn = getattr(blk, "attn", None)
        if TalkingHeadsAttention.matches(attn) or GatedPositionalAttention.matches(attn):
            attns.append(attn)
            continue
        if attn is None or any(not hasattr(attn, a) for a in _ATTN_ATTRS):
            got = type(attn).__name__ if attn is not None else "no .attn"
            raise UnsupportedModelError(
                f"block {i} is a {type(blk).__name__} ({got}); capture expects blocks with a timm "
                "Attention at .attn (qkv, attn_drop, fused_attn), as in Block, ResPostBlock and "
                "LayerScale blocks. ParallelScalingBlock and other fused block types are not supported."
            )
        attns.append(attn)
    attns += [b.attn for b in extra]
    if not attns:
        raise UnsupportedModelError(f"{name} has no transformer blocks")

    pool = getattr(model, "global_pool", "token")
    num_reg = int(getattr(model, "num_reg_tokens", 0) or 0)
    distilled = getattr(model, "dist_token", None) is not None and hasattr(model, "head_dist")
    if pool == "token":
        if not getattr(model, "has_class_token", True) and getattr(model, "cls_token", None) is None:
            raise UnsupportedModelError(f"{name} pools by token but has no class token")
        readout: Readout = "cls_dist" if distilled else "cls"
    elif pool == "avg":
        readout = "avg_all" if getattr(model, "pool_include_prefix", False) else "avg"
    elif pool == "map" and find_pool(model) is not None:
        readout = "map"
    else:
        raise UnsupportedModelError(
            f"global_pool={pool!r} is not supported; expected 'token' (class token) or 'avg' "
            "(global average pool) or 'map' (timm's AttentionPoolLatent). Max pooling and other pools have "
            "no read-out row over the tokens."
        )

    readout = getattr(model, "vx_readout", readout)  # a view that states its read-out (capture/hf.py)
    pe = getattr(model, embed)  # NaFlexViT's embeds take (B, 3, H, W) of any size: no padding, no mask
    patch_size = _pair(getattr(pe, "patch_size", 16))
    dynamic = bool(getattr(model, "dynamic_img_size", False)) or not getattr(pe, "strict_img_size", True)
    img_size = None if dynamic or getattr(pe, "img_size", None) is None else _pair(pe.img_size)
    proj = getattr(pe, "proj", None)
    in_chans = int(getattr(proj, "in_channels", 3))
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes <= 0 and not headless:
        raise UnsupportedModelError(
            f"{name} has no classifier head (num_classes=0); explanations need class logits. "
            "Create it with num_classes > 0, or explain a score of its embedding with a callable target "
            "(target=vx.targets.similarity(embedding))."
        )
    return ViTInfo(
        attns=tuple(attns),
        num_prefix=int(model.num_prefix_tokens),
        num_reg=num_reg,
        readout=readout,
        patch_size=patch_size,
        img_size=img_size,
        dynamic_pad=bool(getattr(pe, "dynamic_img_pad", False)),
        in_chans=in_chans,
        num_classes=num_classes,
        adapters=tuple(adapter_for(a) for a in attns),
        pool=find_pool(model) if readout == "map" else None,
        extra_blocks=extra,
        below=below,
        late_prefix=_late_prefix(model, attns, extra, below),
    )


def _late_prefix(model: nn.Module, attns: list, extra: tuple, below: str | None) -> int | None:
    if extra and not below:  # CaiT: the class token joins at the class-attention blocks
        return len(attns) - len(extra)
    local = getattr(model, "local_up_to_layer", None)  # ConViT: the class token joins after the GPSA blocks
    if isinstance(local, int) and any(GatedPositionalAttention.matches(a) for a in attns):
        return local
    return None


def grid_for(info: ViTInfo, height: int, width: int) -> tuple[int, int]:
    """Patch grid of an input of ``height x width`` pixels."""
    ph, pw = info.patch_size
    if info.dynamic_pad:
        return (-(-height // ph), -(-width // pw))
    return (height // ph, width // pw)


def layout_for(info: ViTInfo, height: int, width: int) -> TokenLayout:
    """Token layout of an input of ``height x width`` pixels."""
    return TokenLayout(
        num_prefix=info.num_prefix,
        num_reg=info.num_reg,
        grid=grid_for(info, height, width),
        patch_size=info.patch_size,
        input_size=(height, width),
        readout=info.readout,
    )
