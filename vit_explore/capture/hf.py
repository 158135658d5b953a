"""Hugging Face ``transformers`` vision classifiers, seen through timm's module layout.

``as_vit(model)`` returns a ``HFViT``: an ``nn.Module`` that owns nothing but a reference to
the Hugging Face model (its parameters are the model's own, never copied) and names the
model's modules the way the rest of ``vit_explore.capture`` expects them (``blocks.i.norm1``,
``blocks.i.attn.proj``, ``head``, ``patch_embed.proj``...). Its forward runs the Hugging Face
model and returns ``.logits``. While that forward runs (and only then) two kinds of module
stand in the model's own places, and are put back in ``finally``:

* ``blocks[i]`` (``HFBlock``) calls the Hugging Face layer, so hooks on a block fire;
* ``blocks[i].mlp`` calls the layer's MLP, so hooks on it fire (its output is ``fc2``'s, as timm's ``Mlp``);
* ``blocks[i].attn`` (``HFAttention``) calls the Hugging Face attention module. With
  ``fused_attn = False`` (what ``session.capture`` sets for a pass that records attention)
  that one module runs the eager attention function whatever ``attn_implementation`` the
  model was loaded with: its ``config`` attribute is, for the call, a copy of the config with
  ``_attn_implementation = "eager"`` (the model's config is never written); the probabilities
  the eager function hands to ``dropout`` pass through ``attn.attn_drop`` (an ``nn.Identity``),
  so hooks there see, and may replace, the (B, H, N, N) matrix as on timm's unfused path.
  An additive ``attn_mask`` keyword (``ablation.block_tokens``) is added to the model's own
  ``attention_mask``.

The output of the embeddings (position embedding included) passes through ``patch_drop``
(``ablation.drop_tokens``). Nothing in ``vit_explore`` imports ``transformers``: a model is
recognised by its class's module name.

Supported: ``ViTForImageClassification``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher`` (read-out: mean of the CLS and distillation rows,
as its logits are the mean of the two heads') and ``Dinov2ForImageClassification``, whose
classifier reads ``concat(h_cls, mean(h_patches))``: its read-out row is
``0.5 * row_cls + 0.5 * mean(patch rows)`` (``TokenLayout.readout == "cls_avg"``: both
halves of the classifier's input have equal width; the classifier itself is not a single
read-out row, so chefer_lrp refuses it).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from .attn_base import AttentionAdapter

_M = TypeVar("_M")

__all__ = [
    "HFAttention", "HFAttentionAdapter", "HFBlock", "HFViT", "as_vit", "id2label", "is_hf", "logits_of", "mask_pre_hook",
]

SUPPORTED = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "Dinov2ForImageClassification",
)


def is_hf(model: object) -> bool:
    """True for a ``transformers`` model (recognised without importing ``transformers``)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


def logits_of(out: object) -> object:
    """``out.logits`` for a Hugging Face ``ModelOutput`` (or any object with a tensor ``.logits``),
    else ``out`` unchanged."""
    lg = getattr(out, "logits", None)
    return lg if isinstance(lg, torch.Tensor) and not isinstance(out, torch.Tensor) else out


class _ProbMode(TorchFunctionMode):
    """Active inside one eager attention call: the (B, H, N, N) tensor the eager function hands
    to ``dropout`` (the probabilities) goes through ``attn_drop``; the first 4-D ``matmul``
    (``q @ kᵀ``) takes q through ``q_norm`` and k through ``k_norm`` (identities, named as timm's)."""

    def __init__(self, attn: HFAttention) -> None:
        super().__init__()
        self.attn_drop = attn.attn_drop
        self.attn = attn
        self.scores_done = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.matmul and not self.scores_done and len(args) == 2 and args[0].ndim == 4:
            self.scores_done = True
            q = self.attn.q_norm(args[0])
            kt = self.attn.k_norm(args[1].transpose(-1, -2)).transpose(-1, -2)
            return func(q, kt, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if func is F.dropout and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            out = self.attn_drop(out)
        return out


class HFAttention(nn.Module):
    """Stands in for one Hugging Face attention module during a ``HFViT`` pass.

    Attributes (timm's names): ``inner`` (the model's attention module), ``attn_drop``
    (identity the probabilities pass through on the eager path), ``proj`` (the output
    projection), ``num_heads``, ``scale``, ``fused_attn`` (True: the model's own
    implementation; False: eager for this module).
    """

    fused_attn = True

    def __init__(self, inner: nn.Module, num_heads: int) -> None:
        super().__init__()
        if not all(hasattr(inner, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "config")):
            raise UnsupportedModelError(
                f"{type(inner).__name__} lacks q_proj/k_proj/v_proj/o_proj/scaling; vit_explore reads the attention "
                "modules of transformers >= 5.25 (pip install 'vit-explore[hf]')"
            )
        self.inner = inner
        self.attn_drop = nn.Identity()
        self.proj = inner.o_proj
        self.q_proj, self.k_proj, self.v_proj = inner.q_proj, inner.k_proj, inner.v_proj
        self.qkv = _QKV(inner.q_proj, inner.k_proj, inner.v_proj)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.num_heads = num_heads
        self.scale = float(inner.scaling)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args,
                attn_mask: torch.Tensor | None = None, **kwargs):
        if attn_mask is not None:
            attention_mask = attn_mask if attention_mask is None else attention_mask + attn_mask
        handles = self.qkv.route() if self.qkv._forward_hooks or self.qkv._forward_pre_hooks else []
        try:
            if self.fused_attn:
                return self.inner(hidden_states, attention_mask, *args, **kwargs)
            inner = self.inner
            saved = inner.__dict__.get("config")
            cfg = copy.copy(saved)
            cfg._attn_implementation = "eager"
            try:
                inner.config = cfg
                with _ProbMode(self):
                    return inner(hidden_states, attention_mask, *args, **kwargs)
            finally:
                inner.config = saved
        finally:
            for h in handles:
                h.remove()


class _QKV(nn.Module):
    """timm's ``qkv``: ``[q | k | v] = x [Wq; Wk; Wv]ᵀ + [bq; bk; bv]`` from the model's own three
    projections (their parameters, concatenated per call). It runs only while hooks are registered on
    it (relevance propagation records its input and output): then, for that forward, ``q_proj``,
    ``k_proj`` and ``v_proj`` return the three slices of its output (the same values)."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        super().__init__()
        self._lin = (q, k, v)  # a tuple: not registered twice as children
        self._out: list[torch.Tensor] = []

    linear_view = True  # reads as an nn.Linear (weight (3C, C), bias (3C,)) for rules.lrp_view

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([m.weight for m in self._lin])

    @property
    def bias(self) -> torch.Tensor:
        return torch.cat([m.bias if m.bias is not None else torch.zeros_like(m.weight[:, 0]) for m in self._lin])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def route(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks (to remove after the forward) that make the three projections return slices of this."""
        sizes = [m.out_features for m in self._lin]

        def pre(mod, args):
            self._out = list(torch.split(self(args[0]), sizes, dim=-1))

        def post(i):
            return lambda mod, args, out: self._out[i]

        first = self._lin[0].register_forward_pre_hook(pre)
        return [first, *(m.register_forward_hook(post(i)) for i, m in enumerate(self._lin))]


class HFBlock(nn.Module):
    """Stands in for one Hugging Face encoder layer during a ``HFViT`` pass; names its parts
    as timm's ``Block`` does (``norm1``, ``attn``, ``norm2``, ``mlp`` with ``fc1``/``act``/``fc2``)."""

    def __init__(self, inner: nn.Module, attn: HFAttention, norm1: nn.Module, norm2: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.attn = attn
        self.norm1 = norm1
        self.norm2 = norm2
        self.mlp = _MLPView(inner.mlp)
        # the branch outputs before the residual sums: DINOv2's own layer scales, else identities
        # that the branch outputs pass through (so hooks there see them, as on timm's ls1 / ls2)
        own = getattr(inner, "layer_scale1", None) is not None
        self.ls1 = inner.layer_scale1 if own else nn.Identity()
        self.ls2 = inner.layer_scale2 if own else nn.Identity()
        self._route_ls = not own
        self.drop_path1, self.drop_path2 = nn.Identity(), nn.Identity()

    def forward(self, *args, **kwargs):
        if not self._route_ls:
            return self.inner(*args, **kwargs)
        handles = [
            self.attn.register_forward_hook(lambda m, a, out: (self.ls1(out[0]), *out[1:])),
            self.mlp.register_forward_hook(lambda m, a, out: self.ls2(out)),
        ]
        try:
            return self.inner(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()


class _MLPView(nn.Module):
    """Stands in for a Hugging Face layer's ``mlp`` during a ``HFViT`` pass: calls it, so hooks
    on ``blocks.i.mlp`` see its output (``fc2``'s, before the layer scale) as on timm's ``Mlp``;
    names its parts ``fc1`` / ``act`` / ``fc2``."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        if not (isinstance(getattr(mlp, "fc1", None), nn.Module) and isinstance(getattr(mlp, "fc2", None), nn.Module)):
            raise UnsupportedModelError(
                f"the layer's MLP is a {type(mlp).__name__} without fc1/fc2 (a gated SwiGLU MLP, e.g. DINOv2 with "
                "use_swiglu_ffn=True): the Hugging Face view supports the plain two-layer MLP of ViT, DeiT and DINOv2. "
                "The model-agnostic methods (saliency, integrated_gradients, occlusion, rise) apply to any classifier."
            )
        self._inner = (mlp,)  # a tuple: the model's module, not registered a second time
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2
        act = getattr(mlp, "activation_fn", None)
        if isinstance(act, nn.Module):
            self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._inner[0](x)


class _PatchEmbedView(nn.Module):
    def __init__(self, proj: nn.Conv2d, img_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.proj = proj
        self.patch_size = tuple(proj.kernel_size)
        self.img_size = img_size
        self.strict_img_size = img_size is not None
        self.dynamic_img_pad = False


class HFViT(nn.Module):
    """timm-shaped view of a supported Hugging Face ViT classifier (see the module docstring).

    ``hf`` is the model itself; calling the view returns ``hf(pixel_values=x).logits``.
    """

    global_pool = "token"
    num_reg_tokens = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        kind = type(model).__name__
        if kind not in SUPPORTED:
            raise UnsupportedModelError(
                f"{kind} from transformers is not supported by the attention methods; supported: "
                f"{', '.join(SUPPORTED)}. Model-agnostic methods (saliency, integrated_gradients, occlusion, rise) "
                "need only the model's .logits."
            )
        cfg = model.config
        self.hf = model
        self.head_dist = None
        self.dist_token = None
        self.vx_readout = "cls"
        if kind == "Dinov2ForImageClassification":
            base, layers = model.dinov2, model.dinov2.encoder.layer
            self.head = model.classifier
            self.vx_readout = "cls_avg"
            norms = [(lyr.norm1, lyr.norm2) for lyr in layers]
            img = None  # Dinov2 interpolates its position embedding to any input size
        else:
            base = model.vit if kind.startswith("ViT") else model.deit
            layers = base.layers
            norms = [(lyr.layernorm_before, lyr.layernorm_after) for lyr in layers]
            size = cfg.image_size
            img = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
            if kind == "DeiTForImageClassificationWithTeacher":
                self.head, self.head_dist = model.cls_classifier, model.distillation_classifier
                self.dist_token = base.embeddings.distillation_token
                self.vx_readout = "cls_dist"
            else:
                self.head = model.classifier
        self.num_prefix_tokens = 2 if kind.startswith("DeiT") else 1
        self.norm = base.layernorm
        self.embeddings = base.embeddings
        self.patch_drop = nn.Identity()
        self.patch_embed = _PatchEmbedView(base.embeddings.patch_embeddings.projection, img)
        self.num_classes = int(getattr(self.head, "out_features", 0))
        self._layers = weakref.ref(layers)  # the ModuleList whose entries the blocks stand in for
        self.blocks = nn.ModuleList(
            HFBlock(lyr, HFAttention(lyr.attention, int(cfg.num_attention_heads)), n1, n2)
            for lyr, (n1, n2) in zip(layers, norms)
        )

    @contextmanager
    def _standing_in(self) -> Iterator[None]:
        layers = self._layers()
        handles = [self.embeddings.register_forward_hook(lambda m, a, out: self.patch_drop(out))]
        try:
            for i, blk in enumerate(self.blocks):
                layers._modules[str(i)] = blk
                blk.inner._modules["attention"] = blk.attn
                blk.inner._modules["mlp"] = blk.mlp
            yield
        finally:
            for i, blk in enumerate(self.blocks):
                blk.inner._modules["attention"] = blk.attn.inner
                blk.inner._modules["mlp"] = blk.mlp._inner[0]
                layers._modules[str(i)] = blk.inner
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._standing_in():
            return self.hf(pixel_values=x).logits


def mask_pre_hook(hook):
    """A timm ``attn_mask`` forward pre-hook (``ablation.block_tokens``) adapted to a Hugging Face
    attention module, whose additive mask is its ``attention_mask`` (second positional argument
    or keyword): the hook sees the old mask as ``attn_mask`` and its result goes back in place."""

    def hf_hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        positional = len(args) > 1
        old = args[1] if positional else kwargs.get("attention_mask")
        _, kw = hook(module, (x,), {} if old is None else {"attn_mask": old})
        if positional:
            return (args[0], kw["attn_mask"], *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": kw["attn_mask"]}

    return hf_hook


def id2label(model: object) -> list[str] | None:
    """Class names from ``model.config.id2label`` (Hugging Face), in index order, or None."""
    hf = model.hf if isinstance(model, HFViT) else model
    labels = getattr(getattr(hf, "config", None), "id2label", None)
    if not is_hf(hf) or not isinstance(labels, dict) or not labels:
        return None
    try:
        return [str(labels[i]) for i in range(len(labels))]
    except KeyError:
        return None


def as_vit(model: _M) -> _M | HFViT:
    """``HFViT(model)`` for a Hugging Face model, anything else unchanged."""
    if isinstance(model, HFViT) or not is_hf(model):
        return model
    return HFViT(model)  # type: ignore[arg-type]


class HFAttentionAdapter(AttentionAdapter):
    """Adapter of ``HFAttention``: eager ``softmax(q kᵀ·scaling + attention_mask)`` of a
    Hugging Face ViT / DeiT / DINOv2 attention module, run per module (see ``HFAttention``)."""

    family = "transformers eager attention"
    score_terms = "(q kᵀ)·scaling (+ attention_mask)"
    takes_attn_mask = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return isinstance(attn, HFAttention)
