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
(``ablation.drop_tokens``); on BEiT the relative position bias then follows the kept tokens (its
rows and columns at their positions). BEiT's layer scales (``lambda_1`` / ``lambda_2``, parameters
the layer multiplies by) are ``blocks[i].ls1`` / ``ls2`` for the pass (the layer multiplies by 1.0
meanwhile); CLIP / SigLIP layers, which pass their attention keywords, hand it ``hidden_states``
positionally. Nothing in ``vit_explore`` imports ``transformers``: a model is recognised by its
class's module name.

Supported (``hf_parts.py`` says where each keeps its parts and how its classifier reads out):
``ViTForImageClassification``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher`` (mean of the CLS and distillation rows),
``Dinov2ForImageClassification`` (``concat(h_cls, mean(h_patches))``: read-out row
``0.5 * row_cls + 0.5 * mean(patch rows)``, ``"cls_avg"``; not one read-out row of one head,
so chefer_lrp refuses it), ``BeitForImageClassification`` (relative position bias in the scores;
mean of the patch tokens, then the pooler's layernorm as ``fc_norm``), ``CLIPForImageClassification``
(mean of the patch tokens, no final norm) and ``SiglipForImageClassification`` (no class token;
mean of all tokens after ``post_layernorm``). Any other classifier whose output has ``.logits``
gets ``HFClassifier`` (``hf_classifier.py``): the model-agnostic methods.

``vx.zero_shot`` / ``vx.image_features`` over a ``CLIPModel`` (``vx.image_features`` also over a
``CLIPVisionModelWithProjection``) get the same view of the vision tower
(``hf_zero_shot.py``): its forward is the wrapper's own, with ``post_layernorm`` standing aside in the
tower's pooler and run as ``norm`` on the whole sequence after the last layer; ``head`` maps the normed
CLS token to the wrapper's output. Over a ``SiglipModel`` the read-out is the attention-pool (MAP)
head: ``attn_pool`` (``hf_pool.HFPool``) stands in its ``attention`` slot for the pass and records the
probe's attention, the read-out row (``"map"``, as timm's ``AttentionPoolLatent``). Over another model
the wrapper is returned unchanged: the model-agnostic methods, and a clear error from the others.

One view per model (``as_vit``): reused while the model's modules are the same objects.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import CaptureError, UnsupportedModelError
from .attn_base import AttentionAdapter
from .hf_classifier import HFClassifier, logits_of
from .hf_parts import SUPPORTED, parts_of
from .hf_pool import HFPool
from .hf_standins import _QKV, _MLPView, _PatchEmbedView, _Positional, _Scale
from .hf_zero_shot import is_wrapper, unsupported_reason

_M = TypeVar("_M")

__all__ = [
    "HFAttention", "HFAttentionAdapter", "HFBlock", "HFClassifier", "HFRelBiasAdapter", "HFViT", "as_vit", "id2label",
    "is_hf", "logits_of", "mask_pre_hook", "source_model",
]


def is_hf(model: object) -> bool:
    """True for a ``transformers`` model (recognised without importing ``transformers``)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


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

    def __init__(self, inner: nn.Module, num_heads: int, view: HFViT | None = None) -> None:
        super().__init__()
        proj = getattr(inner, "o_proj", None) or getattr(inner, "out_proj", None)
        scale = getattr(inner, "scaling", getattr(inner, "scale", None))
        if not all(hasattr(inner, n) for n in ("q_proj", "k_proj", "v_proj", "config")) or proj is None or scale is None:
            raise UnsupportedModelError(
                f"{type(inner).__name__} lacks q_proj/k_proj/v_proj/o_proj (or out_proj)/scaling; vit_explore reads the "
                "attention modules of transformers >= 5.25 (pip install 'vit-explore[hf]')"
            )
        self.inner = inner
        self.attn_drop = nn.Identity()
        self.proj = proj
        self.q_proj, self.k_proj, self.v_proj = inner.q_proj, inner.k_proj, inner.v_proj
        self.qkv = _QKV(inner.q_proj, inner.k_proj, inner.v_proj)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.num_heads = num_heads
        self.scale = float(scale)
        # BEiT: the view whose token drop this attention's relative position bias follows (a tuple: not a child)
        self._view = (view,)

    @property
    def view(self) -> HFViT | None:
        return self._view[0]

    def _kept_bias(self, bias: torch.Tensor, n: int) -> torch.Tensor:
        """The relative position bias (1 or B, H, N, N) between the tokens a drop kept (B, H, n, n)."""
        kept = self.view._kept if self.view is not None else None
        if kept is None or bias.shape[-1] == n:
            return bias
        if kept.shape[1] != n:
            raise CaptureError(f"a token drop kept {kept.shape[1]} tokens but the attention sees {n}")
        rows = kept.to(bias.device)  # (K, n): the positions of the kept tokens (prefix included)
        K, H, N = rows.shape[0], bias.shape[1], bias.shape[-1]
        b = bias.expand(K, -1, -1, -1).gather(2, rows[:, None, :, None].expand(-1, H, -1, N))
        return b.gather(3, rows[:, None, None, :].expand(-1, H, n, -1))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args,
                attn_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is not None and self.view is not None:
            attention_mask = self._kept_bias(attention_mask, hidden_states.shape[1])
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


class HFBlock(nn.Module):
    """Stands in for one Hugging Face encoder layer during a ``HFViT`` pass; names its parts
    as timm's ``Block`` does (``norm1``, ``attn``, ``norm2``, ``mlp`` with ``fc1``/``act``/``fc2``,
    ``ls1`` / ``ls2``)."""

    def __init__(self, inner: nn.Module, attn: HFAttention, norm1: nn.Module, norm2: nn.Module, mlp: nn.Module,
                 scales: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.attn = attn
        self.norm1 = norm1
        self.norm2 = norm2
        self.mlp = _MLPView(mlp)
        # the branch outputs before the residual sums: DINOv2's own layer-scale modules; else modules the
        # branch outputs pass through (so hooks there see them, as on timm's ls1 / ls2): BEiT's lambda_1 /
        # lambda_2 as ``_Scale`` (the layer multiplies by 1.0 for the pass), identities where there is none
        own = getattr(inner, "layer_scale1", None) is not None
        self._scales = scales
        self._slots: tuple[str, str] | None = None
        if own:  # DINOv2: its layer-scale modules' slots hold ``_Scale`` views of their parameters for the pass
            self.ls1, self.ls2 = _Scale(inner.layer_scale1, "lambda1"), _Scale(inner.layer_scale2, "lambda1")
            self._slots = ("layer_scale1", "layer_scale2")
        elif scales is not None:
            self.ls1, self.ls2 = _Scale(inner, scales[0]), _Scale(inner, scales[1])
        else:
            self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        self.drop_path1, self.drop_path2 = nn.Identity(), nn.Identity()
        self._call = (_Positional(attn),)  # a tuple: not a child

    @property
    def attn_call(self) -> nn.Module:
        """What stands in the layer's attention slot: ``attn`` called with ``hidden_states`` positional."""
        return self._call[0]

    def forward(self, *args, **kwargs):
        mods = self.inner._modules
        if self._slots is not None:
            saved = [mods[n] for n in self._slots]
            try:
                mods[self._slots[0]], mods[self._slots[1]] = self.ls1, self.ls2
                return self.inner(*args, **kwargs)
            finally:
                mods[self._slots[0]], mods[self._slots[1]] = saved
        handles = [
            self.attn.register_forward_hook(lambda m, a, out: (self.ls1(out[0]), *out[1:])),
            self.mlp.register_forward_hook(lambda m, a, out: self.ls2(out)),
        ]
        own = self.inner.__dict__
        try:
            for name in self._scales or ():
                own[name] = 1.0  # shadows the parameter (still registered) for this call: ls1 / ls2 multiply
            return self.inner(*args, **kwargs)
        finally:
            for name in self._scales or ():
                own.pop(name, None)
            for h in handles:
                h.remove()


class HFViT(nn.Module):
    """timm-shaped view of a supported Hugging Face ViT classifier (see the module docstring).

    ``hf`` is the model itself; calling the view returns ``hf(pixel_values=x).logits`` (a zero-shot
    wrapper's: ``hf(x)``). Build it with ``as_vit`` (one view per model, reused).
    """

    global_pool = "token"
    num_reg_tokens = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        parts = parts_of(model)
        self.hf = model
        self.vx_readout = parts.readout
        self.head, self.head_dist = parts.head, parts.head_dist
        self.dist_token = model.deit.embeddings.distillation_token if parts.head_dist is not None else None
        self.fc_norm = parts.fc_norm if parts.fc_norm is not None else nn.Identity()
        self.num_prefix_tokens = parts.num_prefix
        self.norm = parts.norm
        # CLIP's classifier reads the last layer's output itself: an identity ``norm`` it passes through
        self._route_norm = parts.pooled_norm is not None or not any(m is parts.norm for m in model.modules())
        self.embeddings = parts.embeddings
        self.patch_drop = nn.Identity()
        self.patch_embed = _PatchEmbedView(parts.proj, parts.img_size)
        self.num_classes = int(getattr(self.head, "out_features", 0))
        self._wrapper = is_wrapper(model)  # vx.zero_shot / vx.image_features: its forward is called as it is
        if self._wrapper:
            self.pretrained_cfg = model.pretrained_cfg  # input size, statistics, label names
        self._pooled_norm = parts.pooled_norm
        if parts.pool_head is not None:  # SigLIP's MAP head: its attention slot holds the view for the pass
            self.global_pool = "map"
            self.attn_pool = HFPool(parts.pool_head)
        self._standin_norm = (nn.Identity(),)  # a tuple: not a child
        self._layers = weakref.ref(parts.layers)  # the ModuleList whose entries the blocks stand in for
        self._names = (parts.attn, parts.mlp)
        self._kept: torch.Tensor | None = None  # (K, n) positions kept by a token drop (relative bias only)
        self._active = 0
        heads = parts.num_heads or int(getattr(model.config, "vision_config", model.config).num_attention_heads)
        self.blocks = nn.ModuleList(
            HFBlock(lyr, HFAttention(getattr(lyr, parts.attn), heads, self if parts.rel_bias else None),
                    n1, n2, getattr(lyr, parts.mlp), ls)
            for lyr, (n1, n2), ls in zip(parts.layers, parts.norms, parts.layer_scales)
        )

    def _embedded(self, module, args, out: torch.Tensor) -> torch.Tensor:
        if self.blocks[0].attn.view is not None and self.patch_drop._forward_hooks:
            # a token drop (ablation.drop_tokens) on a model with a relative position bias: the positions of
            # the kept tokens, from the same drop applied first to the position indices (B, N, 1)
            pos = torch.arange(out.shape[1], device=out.device, dtype=torch.float64)
            kept = self.patch_drop(pos[None, :, None].expand(out.shape[0], -1, 1))[..., 0]
            self._kept = kept.round().long() if kept.shape[1] != out.shape[1] else None
        return self.patch_drop(out)

    @contextmanager
    def _standing_in(self) -> Iterator[None]:
        layers = self._layers()
        attn_name, mlp_name = self._names
        handles = [self.embeddings.register_forward_hook(self._embedded)]
        if self._route_norm:
            handles.append(self.blocks[-1].register_forward_hook(
                lambda m, a, out: (self.norm(out[0]), *out[1:]) if isinstance(out, tuple) else self.norm(out)))
        self._active += 1
        try:
            if self._pooled_norm is not None:  # the tower's own norm on the pooled token: ``norm`` ran already
                owner, slot = self._pooled_norm
                owner._modules[slot] = self._standin_norm[0]
            if isinstance(getattr(self, "attn_pool", None), HFPool):
                self.attn_pool.head._modules["attention"] = self.attn_pool
            for i, blk in enumerate(self.blocks):
                layers._modules[str(i)] = blk
                blk.inner._modules[attn_name] = blk.attn_call
                blk.inner._modules[mlp_name] = blk.mlp
            yield
        finally:
            for i, blk in enumerate(self.blocks):
                blk.inner._modules[attn_name] = blk.attn.inner
                blk.inner._modules[mlp_name] = blk.mlp._inner[0]
                layers._modules[str(i)] = blk.inner
            if self._pooled_norm is not None:
                owner, slot = self._pooled_norm
                owner._modules[slot] = self.norm
            if isinstance(getattr(self, "attn_pool", None), HFPool):
                self.attn_pool.head._modules["attention"] = self.attn_pool.mha
            for h in handles:
                h.remove()
            self._kept = None
            self._active -= 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks[0].attn.view is not None and torch.is_inference_mode_enabled():
            # transformers keeps BEiT's relative position index in an lru_cache shared by all calls: made
            # under inference mode it would break every later pass with gradients, so this pass runs without
            with torch.inference_mode(False), torch.no_grad(), self._standing_in():
                return self.hf(pixel_values=x).logits
        with self._standing_in():
            return self.hf(x) if self._wrapper else self.hf(pixel_values=x).logits

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier on a normed sequence (B, N, D) -> (B, classes), as the model reads it out."""
        T = self.num_prefix_tokens
        if self.vx_readout == "cls_dist":
            assert self.head_dist is not None  # cls_dist reads both heads
            return 0.5 * (self.head(x[:, 0]) + self.head_dist(x[:, 1]))
        if self.vx_readout == "cls_avg":
            return self.head(torch.cat([x[:, 0], x[:, T:].mean(1)], -1))
        if self.vx_readout == "avg":
            return self.head(self.fc_norm(x[:, T:].mean(1)))
        if self.vx_readout == "map":
            return self.head(self.attn_pool.head(x))
        return self.head(x[:, 0])


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


def source_model(model: object) -> object:
    """The Hugging Face model behind a view (``HFViT``, ``HFClassifier``), else ``model``."""
    return model.hf if isinstance(model, (HFViT, HFClassifier)) else model


def id2label(model: object) -> list[str] | None:
    """Class names from ``model.config.id2label`` (Hugging Face), in index order, or None."""
    hf = source_model(model)
    labels = getattr(getattr(hf, "config", None), "id2label", None)
    if not is_hf(hf) or not isinstance(labels, dict) or not labels:
        return None
    try:
        return [str(labels[i]) for i in range(len(labels))]
    except KeyError:
        return None


#: model -> (its modules when the view was built, a weak reference to the view)
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LAST: list[nn.Module] = []  # the last view handed out, kept alive between two calls
_LOCK = threading.Lock()


def as_vit(model: _M) -> _M | HFViT | HFClassifier:
    """The view of a Hugging Face model (``HFViT``, or ``HFClassifier`` for any other classifier
    with ``.logits``), anything else unchanged.

    One view per model: the view built for a model is returned again while the model's modules
    are the same objects (a replaced module builds a new view). The views are held weakly
    (the model and the view live as long as the caller keeps either), except the last one
    handed out, so that consecutive calls on one model share it (and the interventions' caches).
    """
    if isinstance(model, (HFViT, HFClassifier)) or not (is_hf(model) or is_wrapper(model)):
        return model
    if is_wrapper(model) and unsupported_reason(model) is not None:  # type: ignore[arg-type]
        return model  # the model-agnostic methods; the wrapper's vx_reason says why no other applies
    with _LOCK:
        got = _VIEWS.get(model)
        view = got[1]() if got is not None else None
        if view is not None and (view._active or got[0] == _modules_of(model)):
            _LAST[:] = [view]
            return view
        view = HFViT(model) if type(model).__name__ in SUPPORTED or is_wrapper(model) else HFClassifier(model)  # type: ignore[arg-type]
        _VIEWS[model] = (_modules_of(model), weakref.ref(view))
        _LAST[:] = [view]
        return view


def _modules_of(model: nn.Module) -> tuple[int, ...]:
    return tuple(map(id, model.modules()))


class HFAttentionAdapter(AttentionAdapter):
    """Adapter of ``HFAttention``: eager ``softmax(q kᵀ·scaling + attention_mask)`` of a
    Hugging Face ViT / DeiT / DINOv2 attention module, run per module (see ``HFAttention``)."""

    family = "transformers eager attention"
    score_terms = "(q kᵀ)·scaling (+ attention_mask)"
    takes_attn_mask = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return isinstance(attn, HFAttention) and attn.view is None


class HFRelBiasAdapter(HFAttentionAdapter):
    """Adapter of a BEiT ``HFAttention``: ``softmax(q kᵀ·scaling + B (+ attention_mask))``, B the
    relative position bias the layer hands to its attention as ``attention_mask``."""

    family = "transformers eager attention with relative position bias (BEiT)"
    score_terms = "(q kᵀ)·scaling + relative position bias (+ attention_mask)"
    score_bias = True

    @classmethod
    def matches(cls, attn: nn.Module) -> bool:
        return isinstance(attn, HFAttention) and attn.view is not None
