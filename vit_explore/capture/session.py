"""One forward (and optionally one backward) pass of a timm ViT, recorded into a ``Trace``.

The model is never copied and never patched at class level: fused attention is switched
off per attention module for the pass, hooks are registered per module, and everything
(``fused_attn``, training flags, ``requires_grad``, hooks) is put back in ``finally``.
See docs/methods.md §1.2 for the design.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from .._checks import checked_output
from ..errors import CaptureError, InputError, UnsupportedModelError, suggest
from ..inputs import check_tensor
from ..targets import ScoreTarget, TargetLike, resolve_target, target_score
from .adapters import ViTInfo, inspect_vit, layout_for
from .attn_class import to_tokens
from .attn_pool import PoolTap, readout_query
from .hf import as_vit
from .layout import TokenLayout
from .patchify import patchify_grad_hook
from .state import SavedState
from .tap import ScoreTap

Score = Literal["logit", "prob", "log_prob"]


@dataclass(frozen=True)
class Needs:
    """What one pass must record. Only what is asked for is captured.

    Attributes:
        attn: attention probabilities ``A`` (B, H, N, N) of the blocks in ``layers``.
        attn_grad: ``dy/dA`` for the same blocks (y = target score, summed over the batch).
        scores: pre-softmax scores (B, H, N, N) for the same blocks: the tensor the module's
            own ``softmax`` received (``tap.ScoreTap``), so with every bias, mask and rotary
            embedding of its family (``S = (q*scale) k^T`` for timm's ``Attention``).
        activations: outputs of modules, by name (``"blocks.11.norm1"``), (B, N, C).
        activation_grads: gradients of the target score w.r.t. those outputs.
        input_grad: gradient w.r.t. the input tensor (B, 3, H, W).
        detach_attn_input: gradients do not flow back through the attention branch
            into earlier blocks (AG-CAM's ``x.detach()`` at the attention input).
        layers: blocks whose attention is recorded (None: all). Other blocks keep
            their fused kernel.
        grad_from_block: build the autograd graph only from this block's input on
            (cheaper when only late gradients are needed, e.g. TAM).
        inputs: modules, by name, whose (first positional) input is recorded, detached,
            into ``Trace.inputs`` (relevance propagation needs the input of every layer).
        rope: the rotary embedding of the blocks in ``layers`` as linear maps of q and k
            (``Trace.rope``, from the ``rope`` tensor the model passed to each attention).
    """

    attn: bool = False
    attn_grad: bool = False
    scores: bool = False
    activations: tuple[str, ...] = ()
    activation_grads: bool = False
    input_grad: bool = False
    detach_attn_input: bool = False
    layers: tuple[int, ...] | None = None
    grad_from_block: int | None = None
    inputs: tuple[str, ...] = ()
    rope: bool = False

    @property
    def needs_grad(self) -> bool:
        return self.attn_grad or self.activation_grads or self.input_grad

    @property
    def needs_unfused(self) -> bool:
        return self.attn or self.attn_grad or self.scores

    def union(self, other: Needs) -> Needs:
        """The needs of two methods run from one pass."""
        layers = None if self.layers is None or other.layers is None else tuple(sorted({*self.layers, *other.layers}))
        gfb = None if self.grad_from_block is None or other.grad_from_block is None else min(
            self.grad_from_block, other.grad_from_block
        )
        if self.detach_attn_input != other.detach_attn_input and (self.needs_grad and other.needs_grad):
            raise CaptureError("cannot share one pass between methods with and without detached attention input")
        return Needs(
            attn=self.attn or other.attn,
            attn_grad=self.attn_grad or other.attn_grad,
            scores=self.scores or other.scores,
            activations=tuple(dict.fromkeys(self.activations + other.activations)),
            activation_grads=self.activation_grads or other.activation_grads,
            input_grad=self.input_grad or other.input_grad,
            detach_attn_input=self.detach_attn_input or other.detach_attn_input,
            layers=layers,
            grad_from_block=gfb,
            inputs=tuple(dict.fromkeys(self.inputs + other.inputs)),
            rope=self.rope or other.rope,
        )


@dataclass(frozen=True)
class Trace:
    """Everything one captured pass recorded. Tensors are detached.

    Attributes:
        logits: (B, C).
        target: (B,) long, the class whose score was differentiated (argmax if not given), or the
            ``ScoreTarget`` of a callable target (``vit_explore.targets``).
        layout: token layout of this input.
        attn: L entries (B, H, N, N), None for blocks not recorded.
        attn_grad: same layout as ``attn``, ``dy/dA``.
        scores: same layout, pre-softmax scores as the softmax saw them (``softmax(S) = A``).
        activations: name -> (B, N, C) module outputs.
        activation_grads: name -> gradient of the target score.
        input: the (B, 3, H, W) tensor that was fed.
        input_grad: its gradient, if asked.
        inputs: name -> the (detached) first positional input of that module (``Needs.inputs``).
        rope: L entries, the rotary embedding as a map (..., P, D, D) of each patch token's q and
            k after ``q_norm``/``k_norm`` (``q_rot[p] = q[p] @ M[p]``; prefix tokens are not
            rotated), or None (no rotary embedding, or not recorded).
        pool_attn, pool_attn_grad, pool_scores: an attention-pool (MAP) head's latent-query
            attention (B, H, Q, N), its gradient and its pre-softmax scores, recorded with the
            blocks' attention (``capture/attn_pool.py``); None for other read-outs.
        notes: per block, why its attention rows are not probabilities (talking heads), else None.
        below: why the model mixes tokens below its first block without token attention (XCiT).

    A block whose attention does not span all N tokens (class attention: one query row; CaiT's
    patch blocks: before the class token exists) is laid out on the N tokens with identity rows
    for the tokens it passes unchanged (``capture/attn_class.py``).
    """

    logits: torch.Tensor
    target: torch.Tensor | ScoreTarget
    layout: TokenLayout
    input: torch.Tensor
    attn: tuple[torch.Tensor | None, ...] | None = None
    attn_grad: tuple[torch.Tensor | None, ...] | None = None
    scores: tuple[torch.Tensor | None, ...] | None = None
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    activation_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    input_grad: torch.Tensor | None = None
    score: Score = "logit"
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    rope: tuple[torch.Tensor | None, ...] | None = None
    pool_attn: torch.Tensor | None = None
    pool_attn_grad: torch.Tensor | None = None
    pool_scores: torch.Tensor | None = None
    notes: tuple[str | None, ...] = ()
    below: str | None = None

    @property
    def num_layers(self) -> int:
        seq = self.attn if self.attn is not None else self.attn_grad
        return len(seq) if seq is not None else 0

    def attn_at(self, layer: int) -> torch.Tensor:
        """Attention of block ``layer`` (negative counts from the end)."""
        return _pick(self.attn, layer, "attn")

    def attn_grad_at(self, layer: int) -> torch.Tensor:
        return _pick(self.attn_grad, layer, "attn_grad")

    def scores_at(self, layer: int) -> torch.Tensor:
        return _pick(self.scores, layer, "scores")


def _pick(seq, layer: int, what: str) -> torch.Tensor:
    if seq is None:
        raise CaptureError(f"this trace has no {what}; capture it with Needs({what}=True)")
    if not -len(seq) <= layer < len(seq):
        raise InputError(f"layer {layer} is out of range: the model has {len(seq)} blocks (0..{len(seq) - 1})")
    t = seq[layer]
    if t is None:
        raise CaptureError(f"block {layer % len(seq)} was not recorded; add it to Needs(layers=...)")
    return t


def capture(
    model: nn.Module,
    x: torch.Tensor,
    needs: Needs,
    *,
    target: TargetLike = None,
    score: Score = "logit",
    info: ViTInfo | None = None,
) -> Trace:
    """Run ``model`` once on ``x`` and record what ``needs`` asks for.

    Args:
        model: a timm VisionTransformer (any image/patch size, CLS, distilled, registers, GAP).
        x: (B, C, H, W) float tensor, already preprocessed.
        needs: what to record.
        target: class(es) for the backward pass: None (top-1 per image), an int, or B ints; or a
            callable mapping the output to one score per image (``vit_explore.targets``).
        score: differentiate the ``"logit"`` (default), the softmax ``"prob"`` or ``"log_prob"``.

    Returns:
        A ``Trace``. The model is left exactly as it was found, also when the pass raises.
    """
    if not isinstance(needs, Needs):
        raise InputError(f"needs must be a vx.Needs(...), got {type(needs).__name__}; e.g. Needs(attn=True)")
    model = as_vit(model)  # a Hugging Face classifier is seen through its timm-shaped view (capture/hf.py)
    info = info if info is not None and model.blocks[0].attn is info.attns[0] else inspect_vit(model)
    x = check_tensor(info, x, model)
    num_layers = info.num_layers
    layers = tuple(range(num_layers)) if needs.layers is None else tuple(i % num_layers for i in needs.layers)
    for i in needs.layers or ():
        if not -num_layers <= i < num_layers:
            raise InputError(f"layer {i} is out of range: the model has {num_layers} blocks (0..{num_layers - 1})")
    gfb = needs.grad_from_block
    if gfb is not None:
        gfb %= num_layers
    modules = {name: _submodule(model, name) for name in (*needs.activations, *needs.inputs)}

    for i in layers if needs.scores else ():
        adapter = info.adapters[i] if info.adapters else None
        if adapter is not None and not adapter.single_softmax:
            raise UnsupportedModelError(
                f"the pre-softmax scores are not defined for block {i}: it and the blocks like it "
                f"{adapter.not_single_softmax}. Methods that read the scores (ag_cam) do not apply; "
                "chefer_generic, attn_grad_cam, rollout and raw_attention do"
            )
    record_attn = needs.attn or needs.attn_grad
    attn_store: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    score_store: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    taps: list[ScoreTap] = []
    rope_store: dict[int, list[torch.Tensor | None]] = {i: [] for i in layers}
    act_store: dict[str, list[torch.Tensor]] = {n: [] for n in needs.activations}
    in_store: dict[str, list[torch.Tensor]] = {n: [] for n in needs.inputs}
    handles: list[torch.utils.hooks.RemovableHandle] = []
    # parameters are frozen only for a pass that differentiates (so the backward skips them)
    pool = info.pool if needs.needs_unfused else None  # the MAP head's attention defines the read-out row
    state = SavedState(model, (*info.attns, *([pool] if pool is not None else [])), grads=needs.needs_grad)
    pool_tap: PoolTap | None = None
    # a differentiating pass works inside the caller's torch.no_grad() / inference_mode(): the
    # whole pass, target score and backward included, runs with autograd on, and the caller's
    # mode is back when capture returns (the context managers restore it)
    mode = contextlib.ExitStack()
    if needs.needs_grad:
        mode.enter_context(torch.inference_mode(False))
        mode.enter_context(torch.enable_grad())
    try:
        state.freeze()
        for i in layers:
            attn = info.attns[i]
            if needs.needs_unfused:
                attn.fused_attn = False
            if record_attn:
                handles.append(attn.attn_drop.register_forward_hook(_store_output(attn_store[i])))
            if needs.scores:
                taps.append(ScoreTap(attn, score_store[i], detach=True))
            if needs.rope:
                handles.append(attn.register_forward_pre_hook(_store_kwarg("rope", rope_store[i]), with_kwargs=True))
        if pool is not None:
            pool.fused_attn = False
            pool_tap = PoolTap(pool)
        if needs.detach_attn_input:
            for attn in info.attns:
                handles.append(attn.register_forward_pre_hook(_detach_first_arg))
        if gfb is not None and needs.needs_grad:
            blk = model.blocks[gfb] if gfb < len(model.blocks) else None  # type: ignore[arg-type]
            if blk is not None and getattr(blk, "attn", None) is info.attns[gfb]:
                handles.append(blk.register_forward_pre_hook(_detach_first_arg))
            else:  # a class-attention block (CaiT, XCiT): the whole graph, from the input
                gfb = None
        for name in needs.activations:
            handles.append(modules[name].register_forward_hook(_store_output(act_store[name])))
        for name in needs.inputs:
            handles.append(modules[name].register_forward_hook(_store_input(in_store[name])))
        if needs.needs_grad and needs.input_grad and (h := patchify_grad_hook(model)) is not None:
            handles.append(h)  # the patch embedding's input gradient as one matmul

        need_grad = needs.needs_grad
        xin = x.detach()
        if need_grad and xin.is_inference():  # made under the caller's inference_mode
            xin = xin.clone()
        if need_grad and (needs.input_grad or gfb is None):
            xin = xin.clone().requires_grad_(True)
        with torch.set_grad_enabled(need_grad):
            logits = checked_output(model(xin), x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise CaptureError(
                f"expected the model to return logits (B, num_classes), got "
                f"{type(logits).__name__}{tuple(getattr(logits, 'shape', ()))}"
            )
        for i in layers:
            got = len(attn_store[i]) if record_attn else 1
            if got != 1:
                raise CaptureError(
                    f"block {i}: expected its attention to be computed once through attn_drop, saw {got} "
                    f"calls; {type(info.attns[i]).__name__} may not follow timm's unfused attention path."
                )
            if needs.scores and len(score_store[i]) != 1:
                raise CaptureError(
                    f"block {i}: expected one softmax over (B, H, N, N) scores inside "
                    f"{type(info.attns[i]).__name__}.forward, saw {len(score_store[i])}; the pre-softmax "
                    "scores (AG-CAM) cannot be taken from this attention. Use attn_grad_cam or chefer_generic."
                )
        if pool_tap is not None and len(pool_tap.attn) != 1:
            raise CaptureError(
                f"expected one softmax over the latent query's scores inside {type(pool).__name__}.forward, "
                f"saw {len(pool_tap.attn)}; the attention pool's read-out row cannot be taken from it"
            )
        tgt = resolve_target(target, logits)

        attn_list = [attn_store[i][0] if attn_store.get(i) else None for i in range(num_layers)]
        grads: dict[str, torch.Tensor] = {}
        if need_grad:
            wanted: list[torch.Tensor] = []
            keys: list[tuple[str, object]] = []
            if needs.attn_grad:
                for i in layers:
                    a = attn_list[i]
                    assert a is not None  # recorded: attn_grad records the attention of these layers
                    wanted.append(a)
                    keys.append(("attn", i))
            if needs.activation_grads:
                for name in needs.activations:
                    wanted.append(act_store[name][-1])
                    keys.append(("act", name))
            if needs.input_grad:
                wanted.append(xin)
                keys.append(("input", None))
            if needs.attn_grad and pool_tap is not None:
                wanted.append(pool_tap.graph[0])  # the tensor the pool used (attn[0] or its base)
                keys.append(("pool", None))
            y = target_score(logits, tgt, score).sum()
            if not y.requires_grad:
                raise CaptureError("the target score does not depend on any captured tensor; nothing to differentiate")
            usable = [t.requires_grad for t in wanted]
            got_grads = torch.autograd.grad(
                y, [t for t, u in zip(wanted, usable) if u], allow_unused=True
            )
            it = iter(got_grads)
            for (kind, key), t, u in zip(keys, wanted, usable):
                g = next(it) if u else None
                grads[f"{kind}:{key}"] = torch.zeros_like(t) if g is None else g.detach()

        _B, _, H, W = x.shape
        layout = layout_for(info, H, W)
        n_tok, n_pre = layout.num_tokens, layout.num_prefix

        def on_tokens(v: torch.Tensor | None, fill, i: int) -> torch.Tensor | None:
            if v is None:
                return None
            late = info.late_prefix
            return to_tokens(v, n_tok, n_pre, fill, class_row=info.attns[i] in [b.attn for b in info.extra_blocks],
                             patch_stage=late is not None and i < late)

        def per_layer(kind: str) -> tuple[torch.Tensor | None, ...]:
            return tuple(on_tokens(grads.get(f"{kind}:{i}"), "grad", i) if i in layers else None
                         for i in range(num_layers))

        attn_list = [on_tokens(a, "attn", i) for i, a in enumerate(attn_list)]
        scores = None
        if needs.scores:
            scores = tuple(on_tokens(score_store[i][0], "scores", i) if i in layers else None for i in range(num_layers))
        rope = None
        if needs.rope:
            adapters = info.adapters or ()
            rope = tuple(
                adapters[i].rope_map(info.attns[i], rope_store[i][-1]) if i in layers and rope_store[i] and adapters
                else None
                for i in range(num_layers)
            )
        if pool_tap is not None:
            assert pool is not None  # pool_tap is set only where the model has a pool
            layout = replace(layout, readout_query=readout_query(pool, pool_tap.attn[0], layout.num_tokens, layout.num_prefix))
        if record_attn:
            first = attn_list[layers[0]]
            assert first is not None  # record_attn: recorded
            n = first.shape[-1]
            if n != layout.num_tokens:
                raise CaptureError(
                    f"attention has {n} tokens but the layout expects {layout.num_prefix} prefix + "
                    f"{layout.num_patches} patches = {layout.num_tokens}"
                )
        return Trace(
            logits=logits.detach(),
            target=tgt,
            layout=layout,
            input=x.detach(),
            attn=tuple(a.detach() if a is not None else None for a in attn_list) if needs.attn else None,
            attn_grad=per_layer("attn") if needs.attn_grad else None,
            scores=scores,
            activations={n: v[-1].detach() for n, v in act_store.items()},
            activation_grads={n: grads[f"act:{n}"] for n in needs.activations} if needs.activation_grads else {},
            input_grad=grads.get("input:None") if needs.input_grad else None,
            score=score,
            inputs={n: v[-1].detach() for n, v in in_store.items() if v},
            rope=rope,
            pool_attn=pool_tap.attn[0].detach() if pool_tap is not None else None,
            pool_attn_grad=grads["pool:None"].reshape(pool_tap.attn[0].shape)
            if pool_tap is not None and needs.attn_grad and need_grad else None,
            pool_scores=pool_tap.scores[0] if pool_tap is not None and pool_tap.scores else None,
            notes=tuple(None if a.probabilities else a.not_probabilities for a in info.adapters),
            below=info.below,
        )
    finally:
        if pool_tap is not None:
            pool_tap.remove()
        for tap in reversed(taps):
            tap.remove()
        for h in handles:
            h.remove()
        state.restore()
        mode.close()


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``; the full list of names is built only to suggest one."""
    try:
        m = model.get_submodule(name)
    except AttributeError:
        m = None
    if not isinstance(m, nn.Module):
        names = [n for n, _ in model.named_modules()]
        raise InputError(f"no module named {name!r} in {type(model).__name__}{suggest(name, names)}")
    return m


def _store_output(store: list, detach: bool = False):
    def hook(module, args, output):
        if isinstance(output, tuple):  # Hugging Face attention returns (output, weights): the output
            output = output[0]
        store.append(output.detach() if detach else output)

    return hook


def _store_input(store: list):
    def hook(module, args, output):
        if args:
            store.append(args[0].detach())

    return hook


def _store_kwarg(name: str, store: list):
    def hook(module, args, kwargs):
        t = kwargs.get(name)
        store.append(t.detach() if isinstance(t, torch.Tensor) else None)

    return hook


def _detach_first_arg(module, args):
    if not args:
        return None
    return (args[0].detach().requires_grad_(True), *args[1:])
