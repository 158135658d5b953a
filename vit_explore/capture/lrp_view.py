"""What Chefer's relevance pass (docs/methods.md §4.3) reads from a ViT: weights, module names, and
the structure of each block (layer scale, attention family, MLP kind).

The relevance pass itself (``explainers/chefer_lrp.py``) is a pure function of a captured
``Trace`` (module inputs and outputs, recorded via ``Needs.inputs`` / ``Needs.activations``,
plus the scores and rotary maps where the family has them) and this view.

Supported blocks: pre-norm ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))`` as in timm's
``Block`` (ViT, BEiT), ``EvaBlock`` and ``RelPosBlock`` (layer scale as ``LayerScale`` modules or
``gamma_1``/``gamma_2`` parameters); attention of the timm, rotary and relative-bias adapters;
MLPs ``Mlp``, ``GluMlp`` (SwiGLU packed) and ``SwiGLU``; CaiT (``LayerScaleBlock`` with talking
heads, ``LayerScaleBlockClassAttn``), ConViT (GPSA and MHSA ``Block``), timm's ``AttentionPoolLatent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .adapters import ViTInfo, adapter_for
from .attn_base import GenericAttention
from .attn_gpsa import GatedPositionalAttention
from .attn_talking import TalkingHeadsAttention
from .layout import Readout
from .session import Needs

MlpKind = Literal["mlp", "glu", "swiglu"]
_PRE_NORM_BLOCKS = ("Block", "EvaBlock", "RelPosBlock", "HFBlock", "LayerScaleBlock")  # HFBlock: capture/hf.py, a Hugging Face ViT / DeiT layer


@dataclass(frozen=True)
class LRPBlock:
    """Weights of one pre-norm block for the relevance pass (biases are ignored by the
    alpha=1/beta=0 rule; ``biases`` (by layer name) only serve to recover ``x W^T`` from the
    recorded outputs).

    Attributes:
        qkv: (3·A, C) weight of q, k, v (``cat(q_proj, k_proj, v_proj)`` where separate).
        fc1: ``Mlp``: fc1 (Hd, C); ``GluMlp``: fc1 (2·Hd, C) holding both halves; ``SwiGLU``: fc1_g.
        fc1_x: ``SwiGLU``'s value branch, else None.
        ls1, ls2: layer-scale gammas (C,) or None.
        mlp_kind: ``"mlp"``, ``"glu"`` or ``"swiglu"``; gate_last: ``GluMlp``'s ``h = x1 * act(x2)``.
        qkv_called: the ``qkv`` Linear runs as a module (its output is recorded); else q, k, v
            are ``F.linear(x, qkv, biases["qkv"])`` of the attention's recorded input, as the module computes them.
        rope: the family rotates q and k (maps in ``Trace.rope``); rope_prefix: tokens it skips.
        score_bias: the scores are ``(q·scale) kᵀ + B`` (relative positions); scale: ``attn.scale``.
        qk_norm_modules: the attention has ``q_norm`` / ``k_norm`` modules (recorded); else
            q and k are read from the qkv output (BEiT).
        ls_modules: layer scale as ``ls1`` / ``ls2`` modules (their outputs are recorded too).
    """

    prefix: str
    num_heads: int
    qkv: torch.Tensor
    proj: torch.Tensor
    fc1: torch.Tensor
    fc2: torch.Tensor
    ls1: torch.Tensor | None
    ls2: torch.Tensor | None
    biases: dict[str, torch.Tensor | None]
    mlp_kind: MlpKind = "mlp"
    fc1_x: torch.Tensor | None = None
    gate_last: bool = False
    qkv_called: bool = True
    rope: bool = False
    rope_prefix: int = 0
    score_bias: bool = False
    scale: float = 1.0
    qk_norm_modules: bool = True
    ls_modules: bool = True
    talking: tuple[torch.Tensor, torch.Tensor] | None = None
    gate: torch.Tensor | None = None


@dataclass(frozen=True)
class LRPClassBlock:
    """Weights of one CaiT class-attention block (``LayerScaleBlockClassAttn`` over ``ClassAttn``):
    ``u = [x_cls, x]``, ``x_cls += γ1·proj(softmax((q(norm1(u)_0)·scale) k(norm1(u))ᵀ) v(norm1(u)))``,
    ``x_cls += γ2·mlp(norm2(x_cls))``; the patch tokens ``x`` pass unchanged.

    Attributes:
        q, k, v, proj, fc1, fc2: Linear weights; gamma1, gamma2: layer scales (C,);
        biases: by layer name (to recover ``x Wᵀ`` from recorded outputs).
    """

    prefix: str
    num_heads: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    proj: torch.Tensor
    fc1: torch.Tensor
    fc2: torch.Tensor
    gamma1: torch.Tensor
    gamma2: torch.Tensor
    biases: dict[str, torch.Tensor | None]


@dataclass(frozen=True)
class LRPPool:
    """Weights of timm's ``AttentionPoolLatent`` (SigLIP's MAP head) for the relevance pass:
    ``y = z + mlp(norm(z))``, ``z = proj(A v)``, ``A = softmax((q(latent)·scale) k(x)ᵀ)``, ``[k, v] = kv(x)``,
    then the first latent (``pool="token"``) or the latent mean (``"avg"``).

    Attributes:
        kv: (2·C, C); proj: (C, C); fc1, fc2: the pool MLP's; biases: by layer name (to recover ``x Wᵀ``).
        prefix_skipped: the model drops its T prefix tokens before the pool (``pool_include_prefix=False``).
    """

    num_heads: int
    kv: torch.Tensor
    proj: torch.Tensor
    fc1: torch.Tensor
    fc2: torch.Tensor
    biases: dict[str, torch.Tensor | None]
    avg: bool
    prefix_skipped: bool


@dataclass(frozen=True)
class LRPView:
    """Everything Chefer's relevance pass reads from the model itself.

    Attributes:
        blocks: one entry per block.
        head: classifier weight (K, C); head_dist: the distillation head's, or None.
        readout: pooling rule (``TokenLayout.readout``).
        num_prefix: prefix tokens.
    """

    blocks: tuple[LRPBlock, ...]
    head: torch.Tensor
    head_dist: torch.Tensor | None
    readout: Readout
    num_prefix: int
    pool: LRPPool | None = None
    class_blocks: tuple[LRPClassBlock, ...] = ()
    late_prefix: int | None = None

    def needs(self, start_layer: int = 0) -> Needs:
        """The capture needs of the relevance pass from block ``start_layer`` up."""
        ins: list[str] = ["head"]
        acts: list[str] = ["norm", "head"]
        if self.head_dist is not None:
            ins.append("head_dist")
            acts.append("head_dist")
        if self.pool is not None:
            pp = "attn_pool"
            ins += [f"{pp}.kv", f"{pp}.proj", f"{pp}.mlp.fc1", f"{pp}.mlp.fc2"]
            acts += [f"{pp}.kv", f"{pp}.q_norm", f"{pp}.k_norm", f"{pp}.proj", f"{pp}.mlp", f"{pp}.mlp.fc1"]
        blocks = self.blocks[start_layer:]
        for b in blocks:
            p = b.prefix
            ins += [p, f"{p}.attn", f"{p}.attn.proj", f"{p}.norm2", f"{p}.mlp.fc2"]
            acts += [f"{p}.attn", f"{p}.mlp"]
            if b.qk_norm_modules:
                acts += [f"{p}.attn.q_norm", f"{p}.attn.k_norm"]
            if b.ls_modules:
                acts += [f"{p}.ls1", f"{p}.ls2"]
            if b.qkv_called:
                acts.append(f"{p}.attn.qkv")
            if b.mlp_kind == "swiglu":
                ins.append(f"{p}.mlp.fc1_g")
                acts += [f"{p}.mlp.fc1_g", f"{p}.mlp.fc1_x"]
            else:
                ins.append(f"{p}.mlp.fc1")
                acts.append(f"{p}.mlp.fc1")
            if b.mlp_kind != "mlp":
                acts += [f"{p}.mlp.act", f"{p}.mlp.drop1"]
            if b.talking is not None:  # the head-mixing Linears around the softmax, (B, N, N, H)
                ins += [f"{p}.attn.proj_l", f"{p}.attn.proj_w"]
            if b.gate is not None:  # GPSA: the positional scores (B, N, N, H)
                acts.append(f"{p}.attn.pos_proj")
        if self.class_blocks:
            ins.append("norm")  # the final cat of the class token and the patches
        for c in self.class_blocks:
            p = c.prefix
            ins += [f"{p}.norm1", f"{p}.attn", f"{p}.attn.proj", f"{p}.norm2", f"{p}.mlp.fc1", f"{p}.mlp.fc2"]
            acts += [f"{p}.attn", f"{p}.attn.q", f"{p}.attn.k", f"{p}.attn.v", f"{p}.mlp", f"{p}.mlp.fc1"]
        return Needs(
            attn=True,
            attn_grad=True,
            scores=any(b.score_bias for b in blocks),
            rope=any(b.rope for b in blocks),
            inputs=tuple(ins),
            activations=tuple(acts),
            layers=tuple(range(start_layer, len(self.blocks) + len(self.class_blocks))),
            grad_from_block=start_layer,
        )


def _linear_weight(mod: object, where: str) -> torch.Tensor:
    if not isinstance(mod, nn.Linear) and not getattr(mod, "linear_view", False):  # capture/hf.py's q|k|v
        raise UnsupportedModelError(
            f"{where} is a {type(mod).__name__}, expected torch.nn.Linear; chefer_lrp follows timm's "
            "standard Block/Mlp/Attention layout"
        )
    return mod.weight.detach()


def _bias(mod: nn.Module) -> torch.Tensor | None:
    return None if getattr(mod, "bias", None) is None else mod.bias.detach()


def _layer_scale(blk: nn.Module, i: int, where: str) -> torch.Tensor | None:
    mod = getattr(blk, f"ls{i}", None)
    if mod is not None:
        if isinstance(mod, nn.Identity):
            return None
        g = getattr(mod, "gamma", None)
        if not isinstance(g, torch.Tensor):
            raise UnsupportedModelError(f"{where}.ls{i} is a {type(mod).__name__}, expected timm LayerScale or Identity")
        return g.detach()
    g = getattr(blk, f"gamma_{i}", None)  # EvaBlock / BEiT Block: a parameter
    return None if g is None else g.detach()


def _qkv(attn: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of q, k, v stacked as the module computes them."""
    if getattr(attn, "qkv", None) is not None:
        w = _linear_weight(attn.qkv, f"{where}.qkv")
        if getattr(attn, "q_bias", None) is not None:  # EVA / BEiT: cat(q_bias, k_bias = 0, v_bias)
            k_bias = getattr(attn, "k_bias", None)
            k_bias = torch.zeros_like(attn.q_bias) if k_bias is None else k_bias
            return w, torch.cat([attn.q_bias, k_bias, attn.v_bias]).detach()
        return w, _bias(attn.qkv)
    projs = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    ws = [_linear_weight(m, f"{where}.{n}") for m, n in zip(projs, ("q_proj", "k_proj", "v_proj"))]
    if all(m.bias is None for m in projs):
        return torch.cat(ws), None
    return torch.cat(ws), torch.cat([m.bias.detach() if m.bias is not None else w.new_zeros(w.shape[0])
                                     for m, w in zip(projs, ws)])


def lrp_view(model: nn.Module, info: ViTInfo) -> LRPView:
    """Read the weights Chefer's LRP needs, checking each block has a supported layout.

    Raises:
        UnsupportedModelError: post-norm or parallel blocks, gated attention, grouped k/v
            heads, an attention family without a relevance rule, other MLPs, a non-Linear head.
    """
    if info.readout == "cls_avg":
        raise UnsupportedModelError(
            "the classifier reads concat(CLS, mean of patches) (Hugging Face DINOv2): not one read-out row of "
            "one head, which chefer_lrp's relevance pass starts from. Use attn_lrp or chefer_generic instead."
        )
    pool = _pool(model) if info.readout == "map" else None
    if info.below:  # XCiT: class attention over a patch stage without token-to-token attention
        raise UnsupportedModelError(
            f"{info.below}; chefer_lrp's rollout composes token-to-token attention maps from the input up (it has "
            "rules for class attention, not for cross-covariance attention). Use raw_attention or attn_grad_cam "
            "on a class-attention block instead."
        )
    refusal = getattr(getattr(model, "head", None), "lrp_refusal", None)  # a head without a rule (hf_zero_shot.py)
    if refusal:
        raise UnsupportedModelError(refusal)
    adapters = info.adapters or tuple(adapter_for(a) for a in info.attns)
    blocks = []
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        adapter = adapters[i]
        talking, gpsa = adapter is TalkingHeadsAttention, adapter is GatedPositionalAttention
        if not adapter.lrp_rule and not (talking or gpsa):
            raise UnsupportedModelError(
                f"{where}.attn is {adapter.family} ({adapter.score_terms}); chefer_lrp's relevance pass has no rule "
                "for it. Use attn_lrp or chefer_generic instead."
            )
        one_drop = talking or type(blk).__module__ == "timm.models.convit"  # a single drop_path
        needed = ("norm1", "attn", "norm2", "mlp", *(("drop_path",) if one_drop else ("drop_path1", "drop_path2")))
        if any(not hasattr(blk, a) for a in needed) or type(blk).__name__ not in _PRE_NORM_BLOCKS:
            raise UnsupportedModelError(
                f"{where} is a {type(blk).__name__} ({adapter.family} attention); chefer_lrp's relevance pass is "
                "written for pre-norm blocks (x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))): timm's pre-norm "
                f"Block, EvaBlock and RelPosBlock. For this block use attn_lrp or chefer_generic."
            )
        attn, mlp = blk.attn, blk.mlp
        if adapter is GenericAttention and not gpsa and not isinstance(getattr(attn, "qkv", None), nn.Linear):
            raise UnsupportedModelError(
                f"{where}.attn is a {type(attn).__name__}, an attention without a known relevance rule; "
                "use chefer_generic instead"
            )
        if adapter.gated(attn) or not hasattr(attn, "proj"):
            raise UnsupportedModelError(
                f"{where}.attn multiplies its output by a sigmoid gate or has no proj; chefer_lrp has no rule "
                "for it. Use chefer_generic instead."
            )
        if int(getattr(attn, "num_kv_groups", 1) or 1) > 1:
            raise UnsupportedModelError(f"{where}.attn shares k/v heads (grouped-query); use chefer_generic instead")
        fc2 = _linear_weight(getattr(mlp, "fc2", None), f"{where}.mlp.fc2")
        fc1_x = None
        gate_last = False
        if hasattr(mlp, "fc1_g") and hasattr(mlp, "fc1_x"):
            kind: MlpKind = "swiglu"
            fc1 = _linear_weight(mlp.fc1_g, f"{where}.mlp.fc1_g")
            fc1_x = _linear_weight(mlp.fc1_x, f"{where}.mlp.fc1_x")
            width = fc1.shape[0]
        elif hasattr(mlp, "chunk_dim") and hasattr(mlp, "gate_last"):
            if mlp.chunk_dim != -1:
                raise UnsupportedModelError(f"{where}.mlp is a GluMlp chunked along dim {mlp.chunk_dim}, expected -1")
            kind = "glu"
            fc1 = _linear_weight(mlp.fc1, f"{where}.mlp.fc1")
            gate_last = bool(mlp.gate_last)
            width = fc1.shape[0] // 2
        elif hasattr(mlp, "fc1") and hasattr(mlp, "act") and not hasattr(mlp, "gate"):
            kind = "mlp"
            fc1 = _linear_weight(mlp.fc1, f"{where}.mlp.fc1")
            width = fc1.shape[0]
        else:
            raise UnsupportedModelError(
                f"{where}.mlp is a {type(mlp).__name__}; chefer_lrp supports timm's Mlp, GluMlp and SwiGLU. "
                "Use chefer_generic instead."
            )
        if width != fc2.shape[1]:
            raise UnsupportedModelError(f"{where}.mlp: the hidden layer has {width} units but fc2 {fc2.shape[1]} inputs")
        qkv_w, qkv_b = _gpsa_qkv(attn, where) if gpsa else _qkv(attn, f"{where}.attn")
        biases = {"qkv": qkv_b, "proj": _bias(attn.proj), "fc2": _bias(mlp.fc2)}
        if kind == "swiglu":
            biases.update(fc1=_bias(mlp.fc1_g), fc1_x=_bias(mlp.fc1_x))
        else:
            biases["fc1"] = _bias(mlp.fc1)
        blocks.append(
            LRPBlock(
                prefix=where,
                num_heads=int(attn.num_heads),
                qkv=qkv_w,
                proj=_linear_weight(attn.proj, f"{where}.attn.proj"),
                fc1=fc1,
                fc2=fc2,
                ls1=_layer_scale(blk, 1, where),
                ls2=_layer_scale(blk, 2, where),
                biases=biases,
                mlp_kind=kind,
                fc1_x=fc1_x,
                gate_last=gate_last,
                qkv_called=adapter.qkv_called(attn) and not gpsa,
                rope=adapter.rope_map is not GenericAttention.rope_map,
                rope_prefix=int(getattr(attn, "num_prefix_tokens", 0) or 0),
                score_bias=adapter.score_bias,
                scale=float(attn.scale),
                qk_norm_modules=isinstance(getattr(attn, "q_norm", None), nn.Module)
                and isinstance(getattr(attn, "k_norm", None), nn.Module),
                ls_modules=isinstance(getattr(blk, "ls1", None), nn.Module)
                and isinstance(getattr(blk, "ls2", None), nn.Module),
                talking=(_linear_weight(attn.proj_l, f"{where}.attn.proj_l"),
                         _linear_weight(attn.proj_w, f"{where}.attn.proj_w")) if talking else None,
                gate=attn.gating_param.detach() if gpsa else None,
            )
        )
    head_dist = getattr(model, "head_dist", None) if info.readout == "cls_dist" else None
    return LRPView(
        blocks=tuple(blocks),
        head=_linear_weight(model.head, "head"),
        head_dist=_linear_weight(head_dist, "head_dist") if head_dist is not None else None,
        readout=info.readout,
        num_prefix=info.num_prefix,
        pool=pool,
        class_blocks=tuple(_class_block(b, f"blocks_token_only.{j}") for j, b in enumerate(info.extra_blocks)),
        late_prefix=info.late_prefix if not info.extra_blocks else None,
    )


def _gpsa_qkv(attn: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPSA's ``qk`` (2C, C) and ``v`` (C, C) stacked as one (3C, C) q|k|v weight (and bias)."""
    w = torch.cat([_linear_weight(attn.qk, f"{where}.attn.qk"), _linear_weight(attn.v, f"{where}.attn.v")])
    bs = [_bias(attn.qk), _bias(attn.v)]
    if all(b is None for b in bs):
        return w, None
    return w, torch.cat([b if b is not None else w.new_zeros(n) for b, n in zip(bs, (2 * w.shape[1], w.shape[1]))])


def _class_block(blk: nn.Module, where: str) -> LRPClassBlock:
    """A CaiT class-attention block's weights, or a refusal naming what has no rule."""
    attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
    if (type(blk).__name__ != "LayerScaleBlockClassAttn" or type(attn).__name__ != "ClassAttn"
            or not (hasattr(mlp, "fc1") and hasattr(mlp, "act") and not hasattr(mlp, "gate"))):
        raise UnsupportedModelError(
            f"{where} is a {type(blk).__name__} ({type(attn).__name__}, {type(mlp).__name__}); chefer_lrp's "
            "class-attention rules are written for CaiT's LayerScaleBlockClassAttn with ClassAttn and an Mlp. "
            "Use attn_lrp or chefer_generic instead."
        )
    names = {"q": attn.q, "k": attn.k, "v": attn.v, "proj": attn.proj, "fc1": mlp.fc1, "fc2": mlp.fc2}
    return LRPClassBlock(
        prefix=where,
        num_heads=int(attn.num_heads),
        **{n: _linear_weight(m, f"{where}.{n}") for n, m in names.items()},
        gamma1=blk.gamma_1.detach(),
        gamma2=blk.gamma_2.detach(),
        biases={n: _bias(m) for n, m in names.items()},
    )


def _pool(model: nn.Module) -> LRPPool:
    """The MAP head's weights, or a refusal naming what has no rule (docs/methods.md §4.3)."""
    pool = getattr(model, "attn_pool", None)
    name = type(pool).__name__
    if name != "AttentionPoolLatent" or not isinstance(getattr(pool, "kv", None), nn.Linear):
        raise UnsupportedModelError(
            f"the classifier reads an attention-pool (MAP) head ({name}) that is not timm's AttentionPoolLatent; "
            "chefer_lrp's rules for the pool are written for that module's latent query, kv, proj and MLP. "
            "Use attn_lrp or chefer_generic instead."
        )
    mlp = getattr(pool, "mlp", None)
    if getattr(pool, "pos_embed", None) is not None or mlp is None:
        raise UnsupportedModelError(
            "the attention-pool (MAP) head adds its own position embedding or has no MLP (pre-logits mode); "
            "chefer_lrp's rules for the pool cover timm's AttentionPoolLatent with pos_embed='' and its MLP. "
            "Use attn_lrp or chefer_generic instead."
        )
    if not (hasattr(mlp, "fc1") and hasattr(mlp, "act") and not hasattr(mlp, "gate")):
        raise UnsupportedModelError(f"attn_pool.mlp is a {type(mlp).__name__}; chefer_lrp supports timm's Mlp there")
    return LRPPool(
        num_heads=int(pool.num_heads),
        kv=_linear_weight(pool.kv, "attn_pool.kv"),
        proj=_linear_weight(pool.proj, "attn_pool.proj"),
        fc1=_linear_weight(mlp.fc1, "attn_pool.mlp.fc1"),
        fc2=_linear_weight(mlp.fc2, "attn_pool.mlp.fc2"),
        biases={"kv": _bias(pool.kv), "proj": _bias(pool.proj), "fc1": _bias(mlp.fc1), "fc2": _bias(mlp.fc2)},
        avg=getattr(pool, "pool", "token") == "avg",
        prefix_skipped=not getattr(model, "pool_include_prefix", False) and int(model.num_prefix_tokens) > 0,
    )
