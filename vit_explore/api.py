"""The public entry point ``explain``."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ._checks import check_model
from .capture.classifier import MODEL_AGNOSTIC, ClassifierInfo, capture_classifier, inspect_model, not_defined
from .capture.hf import as_vit
from .capture.session import Needs, capture
from .errors import UnsupportedModelError
from .explainers._registry import ExplainerResult, get_explainer
from .explanation import Explanation
from .inputs import ImageLike, as_batch, check_tensor
from .targets import ScoreTarget, TargetLike, class_index, explained_class, is_score_fn, resolve_target


def explain(
    model: nn.Module,
    x: ImageLike,
    method: str = "rollout",
    target: TargetLike = None,
    *,
    processor: Any = None,
    **params: Any,
) -> Explanation:
    """Explain the predictions of a timm ViT (or, for the model-agnostic methods, of any
    image classifier) on a batch of images.

    Args:
        model: any timm ``VisionTransformer`` (CLS, distilled, register tokens, average pool);
            for ``saliency``, ``integrated_gradients``, ``occlusion``, ``rise`` and ``grad_cam``
            any ``nn.Module`` mapping (B, 3, H, W) to (B, classes) (CNNs, hierarchical
            transformers), explained on an analysis grid (``vit_explore.capture.classifier``).
        x: a preprocessed (B, 3, H, W) float tensor, or a PIL image / (H, W, 3) uint8 array
            (or a list of them), then preprocessed with the model's own data config.
        method: a key of ``list_methods()``.
        target: None (top-1 per image), an int, or one int per image; a class name (or one per
            image) where the model has class names; or a callable mapping the model's output to one
            score per image (B,), e.g. ``vx.targets.similarity(embedding)`` for a model without a
            head (``Explanation.target`` is then -1 and ``extras["target_score"]`` holds the scores).
        processor: a Hugging Face image processor for PIL / uint8 images (Hugging Face models;
            default: the model type's processor sized from ``config.image_size``).
            ``Explanation.extras["preprocessing"]`` records which preprocessing was applied.
        **params: method parameters (see each method's docstring).

    Returns:
        An ``Explanation`` with ``patch_map`` (B, gh, gw) and ``heatmap()``.

    Example:
        >>> ex = explain(model, x, method="rollout", start_layer=1)  # doctest: +SKIP
    """
    check_model(model)
    spec = get_explainer(method)
    bound = spec.bind(params)
    target = cast(TargetLike, class_index(model, target))  # class names replaced by their indices
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    try:
        info = inspect_model(model, headless=is_score_fn(target))
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"method {method!r} cannot run on this model: {e}") from None
    if isinstance(info, ClassifierInfo) and method not in MODEL_AGNOSTIC:
        raise not_defined(info, f"method {method!r}")
    xb = as_batch(model, x, processor)
    extras_in: dict[str, Any] = {}
    if not isinstance(x, torch.Tensor) and not (isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor)):
        from .inputs import preprocessing_of

        extras_in["preprocessing"] = preprocessing_of(model, processor)  # which preprocessing made xb (vx.preprocess)
    if spec.kind == "trace" and isinstance(info, ClassifierInfo):
        needs = spec.needs_for(bound)
        trace = capture_classifier(
            model, xb, input_grad=needs.input_grad, target=target, score=bound.get("score", "logit"), info=info
        )
        out = spec.fn(trace, **bound)
        logits, tgt, layout = trace.logits, trace.target, trace.layout
    elif spec.kind == "trace":  # capture() validates the batch itself
        assert not isinstance(info, ClassifierInfo)  # the branch above
        trace = capture(model, xb, spec.needs_for(bound), target=target, score=bound.get("score", "logit"), info=info)
        out = spec.fn(trace, **bound)
        logits, tgt, layout = trace.logits, trace.target, trace.layout
    else:
        xb = check_tensor(info, xb, model, finite=not spec.checks_finite)
        out = spec.fn(model, xb, target=target, info=info, **bound)
        if not isinstance(out, ExplainerResult) or out.logits is None or out.layout is None:
            raise TypeError(f"model-level explainer {method!r} must return an ExplainerResult with logits and layout")
        logits, layout = out.logits, out.layout
        tgt = out.target if out.target is not None else resolve_target(target, logits)
    result = out if isinstance(out, ExplainerResult) else ExplainerResult(out)
    if isinstance(tgt, ScoreTarget):  # a callable target: no class; its scores on x are kept
        extras_in["target_score"] = tgt.values.detach().to(torch.float32)
    pm = result.patch_map
    if pm.shape != (xb.shape[0], *layout.grid):
        raise RuntimeError(f"{method} returned a map of shape {tuple(pm.shape)}, expected {(xb.shape[0], *layout.grid)}")
    return Explanation(
        patch_map=pm.detach().to(torch.float32),
        target=explained_class(tgt),
        logits=logits,
        method=method,
        params=bound,
        layout=layout,
        extras={**extras_in, **result.extras},
    )


def attention_maps(
    model: nn.Module, x: ImageLike, query: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """Every block's and head's attention map from a single pass: (B, L, H, gh, gw).

    Args:
        model: a timm ViT.
        x: images, as for ``explain``.
        query: None for the read-out row (CLS), or a patch index / (row, col) cell whose
            attention row to return.
    """
    from .explainers.raw_attention import attention_stack

    check_model(model)
    model = as_vit(model)  # Hugging Face classifiers: their timm-shaped view (capture/hf.py)
    info = inspect_model(model)
    if isinstance(info, ClassifierInfo):
        raise not_defined(info, "attention_maps")
    trace = capture(model, as_batch(model, x), Needs(attn=True))
    return attention_stack(trace, query)
