"""The small modules that stand in a Hugging Face layer's places during a ``HFViT`` pass (``hf.py``),
each named as timm's counterpart: ``qkv`` over the three projections, the MLP, the patch embedding,
the layer scale; and the call that hands the attention its input positionally."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError


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


class _Positional(nn.Module):
    """Calls ``attn(hidden_states, attention_mask, **rest)`` however the layer passes them (CLIP and
    SigLIP pass keywords), so that hooks on ``blocks.i.attn`` see the input as ``args[0]`` as on timm."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self._attn = (attn,)

    def forward(self, *args, **kwargs):
        if not args:
            args = (kwargs.pop("hidden_states"),)
        if len(args) == 1 and "attention_mask" in kwargs:
            args = (*args, kwargs.pop("attention_mask"))
        return self._attn[0](*args, **kwargs)


class _Scale(nn.Module):
    """timm's ``LayerScale`` over a Hugging Face layer's own scale parameter (BEiT's ``lambda_1``):
    ``x * gamma``, ``gamma`` the layer's parameter (read at each call, never copied)."""

    def __init__(self, layer: nn.Module, name: str) -> None:
        super().__init__()
        self._at = (layer, name)  # a tuple: the layer is not registered a second time

    @property
    def gamma(self) -> torch.Tensor:
        layer, name = self._at
        gamma = layer._parameters[name]
        assert gamma is not None
        return gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


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
