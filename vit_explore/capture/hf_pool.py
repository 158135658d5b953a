"""The attention-pool (MAP) head of a ``transformers`` SigLIP vision tower
(``SiglipMultiheadAttentionPoolingHead``), named as timm's ``AttentionPoolLatent`` (``attn_pool.py``).

The head is ``h = MHA(probe, x, x)``, ``h + mlp(layernorm(h))``, read out at ``[:, 0]`` (Zhai et al.,
ICCV 2023), with ``MHA`` a ``torch.nn.MultiheadAttention`` whose probabilities
``softmax((q(probe)/sqrt(d)) k(x)ᵀ)`` (B, H, 1, N) are computed inside
``F.multi_head_attention_forward``. ``HFPool`` stands in the head's ``attention`` slot for a
``HFViT`` pass (``hf.py``) and calls that very module with ``need_weights=True,
average_attn_weights=False``: the head's own call already takes this path (``need_weights`` is on by
default; only the head mean of the returned weights differs, and the head reads only the output), so the
arithmetic is the model's. The returned weights are a view of the softmax output that the module's
``bmm`` with v consumed (their ``_base``): the recorder keeps both, the view for its values, the base
to differentiate (its gradient is ``dy/dA`` (B·H, 1, N)) and, for AttnLRP, to carry the rule as a
gradient factor on that tensor (a hook on it: the same gradient as timm's detached / halved
probabilities). The pre-softmax scores are not handed out by the module and are not recorded.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CaptureError, UnsupportedModelError
from .hf_standins import _MLPView

__all__ = ["HFPool"]


class _Recording:
    """One recorder of ``HFPool``'s probabilities; ``remove()`` ends it."""

    def __init__(self, pool: HFPool, attn: list[torch.Tensor], graph: list[torch.Tensor],
                 grad_factor: float | None) -> None:
        self.pool, self.attn, self.graph, self.grad_factor = pool, attn, graph, grad_factor
        pool._recorders.append(self)

    def __call__(self, w: torch.Tensor, base: torch.Tensor) -> None:
        self.attn.append(w)
        self.graph.append(base)
        f = self.grad_factor
        if f is not None and base.requires_grad:
            base.register_hook(lambda g: g * f)

    def remove(self) -> None:
        if self in self.pool._recorders:
            self.pool._recorders.remove(self)


class HFPool(nn.Module):
    """timm-named view of a ``SiglipMultiheadAttentionPoolingHead`` (module docstring).

    Attributes (timm's names): ``latent`` (the probe, (1, 1, D)), ``num_heads``, ``pool`` (``"token"``:
    the head reads its one probe), ``norm`` (the head's layernorm), ``mlp`` (its MLP, ``fc1`` / ``act`` /
    ``fc2``), ``kv`` (an identity the key/value input passes through: the MHA projects it functionally
    with ``in_proj_weight``, so a rule on the k / v gradients acts here, on its input, which only those
    projections read), ``fused_attn`` (kept for ``SavedState``; the path is the same either way).
    """

    pool = "token"
    fused_attn = True
    gamma_refusal = (
        "the SigLIP attention-pool head's nn.MultiheadAttention applies its q/k/v and output projections "
        "functionally (in_proj_weight, out_proj.weight inside F.multi_head_attention_forward), so the LRP-gamma "
        "rule cannot be put on them as on timm's Linear modules; use gamma_linear=0 (the epsilon rule)"
    )

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        mha = getattr(head, "attention", None)
        probe, mlp, norm = (getattr(head, n, None) for n in ("probe", "mlp", "layernorm"))
        if (not isinstance(mha, nn.MultiheadAttention) or not mha.batch_first or not isinstance(probe, torch.Tensor)
                or not isinstance(mlp, nn.Module) or not isinstance(norm, nn.Module)):
            raise UnsupportedModelError(
                f"{type(head).__name__} is not SigLIP's attention-pool head (a probe and a batch-first "
                "nn.MultiheadAttention); the attention methods read transformers' SiglipMultiheadAttentionPoolingHead"
            )
        self._head = (head,)  # a tuple: the model's module, not registered a second time
        self.mha = mha
        self.num_heads = int(mha.num_heads)
        self.norm = norm
        self.mlp = _MLPView(mlp)
        self.kv = nn.Identity()
        self._recorders: list[_Recording] = []

    @property
    def latent(self) -> torch.Tensor:
        probe = self._head[0].probe
        assert isinstance(probe, torch.Tensor)  # checked at construction
        return probe

    @property
    def head(self) -> nn.Module:
        return self._head[0]

    def record(self, attn: list[torch.Tensor], graph: list[torch.Tensor],
               grad_factor: float | None = None) -> _Recording:
        """Append, at each call, the probabilities (B, H, Q, N) to ``attn`` and the tensor the module
        used (B·H, Q, N) to ``graph``; ``grad_factor``: multiply the gradient at the latter (AttnLRP)."""
        return _Recording(self, attn, graph, grad_factor)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
        if args or kwargs:
            raise CaptureError(
                f"SigLIP's attention-pool head called its attention with extra arguments ({len(args)} positional, "
                f"{sorted(kwargs)}); the view expects attention(probe, x, x)"
            )
        kv = self.kv(key)
        out, w = self.mha(query, kv, kv if value is key else self.kv(value), need_weights=True,
                          average_attn_weights=False)
        if self._recorders:
            base = w._base if w is not None else None
            if base is None and w is not None and not w.requires_grad:  # no graph (inference mode): values only
                base = w.reshape(-1, *w.shape[2:])
            if base is None or base.ndim != 3 or base.shape[0] != w.shape[0] * w.shape[1]:
                raise CaptureError(
                    "nn.MultiheadAttention did not return its probabilities as a view of the tensor it multiplied "
                    "with v; the attention pool's read-out row cannot be taken from it"
                )
            for rec in list(self._recorders):
                rec(w, base)
        return out, w.mean(dim=1)

