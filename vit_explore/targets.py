"""Which score an explanation is of: a class index, or a callable on the model's output.

A *class target* (None, an int, one int per image) names a class whose logit (or softmax
probability) is explained. A *score target* is a callable mapping the model's output (B, D)
to one score per image (B,), e.g. ``similarity(embedding)`` for a backbone without a head
(timm ``num_classes=0``) or ``lambda out: out[:, 3] - out[:, 5]``. ``resolve_target`` turns
either into what the explainers use (a (B,) long tensor, or a ``ScoreTarget``), and
``target_score`` is the one place that turns an output and a resolved target into scores.

A score callable must be row-wise: image ``k``'s score depends on row ``k`` of the output only
(methods re-batch images: perturbations, integration steps). One that holds per-image state
(``similarity`` with one reference per image) says which rows it is for through a
``rows(index)`` method returning the callable for a batch whose row ``k`` is image ``index[k]``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import InputError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
TargetLike = int | Sequence[int] | np.ndarray | torch.Tensor | ScoreFn | None

__all__ = ["ScoreTarget", "Similarity", "TargetLike", "is_score_fn", "resolve_target", "similarity", "target_score"]


def is_score_fn(target: object) -> bool:
    """True for a callable target (not a tensor, array, class name or index)."""
    return callable(target) and not isinstance(target, (torch.Tensor, np.ndarray, str, numbers.Number))


def _name(fn: object) -> str:
    q = getattr(fn, "__qualname__", None)
    return q if isinstance(q, str) and not isinstance(fn, Similarity) else repr(fn)


class ScoreTarget:
    """A callable target resolved on a batch of B images.

    Attributes:
        fn: the user's callable.
        values: (B,) its scores on the unmodified batch (detached).
    """

    def __init__(self, fn: ScoreFn, values: torch.Tensor) -> None:
        self.fn = fn
        self.values = values

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        return f"ScoreTarget({_name(self.fn)}, batch={len(self)})"

    def for_rows(self, index: torch.Tensor | None) -> ScoreFn:
        """The callable for a batch whose row ``k`` is image ``index[k]`` (None: row k is image k)."""
        if index is None:
            return self.fn
        rows = getattr(self.fn, "rows", None)
        return rows(index) if callable(rows) else self.fn

    def __getitem__(self, index: torch.Tensor | slice | int) -> ScoreTarget:
        """The target of a subset of the images (``index`` into the batch)."""
        idx = torch.arange(len(self))[index.cpu() if isinstance(index, torch.Tensor) else index].reshape(-1)
        return ScoreTarget(self.for_rows(idx.to(self.values.device)), self.values[idx.to(self.values.device)])

    def __call__(self, out: Any, index: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (K,) of an output whose row k is image ``index[k]``, checked."""
        n = _batch_of(out)
        s = self.for_rows(index)(out)
        where = f"the target callable {_name(self.fn)}"
        if not isinstance(s, torch.Tensor):
            raise InputError(
                f"{where} must return a tensor of one score per image (shape ({n},)), got {type(s).__name__}"
            )
        if not s.dtype.is_floating_point:
            raise InputError(f"{where} must return floating-point scores, got dtype {s.dtype}; e.g. out[:, 3].float()")
        if s.ndim != 1 or (n is not None and s.shape[0] != n):
            raise InputError(
                f"{where} must return one score per image, shape ({n},), got {tuple(s.shape)}; "
                "reduce each image's output to a scalar, e.g. lambda out: out[:, 3] (not out[:, 3:4])"
            )
        with torch.no_grad():
            bad = (~torch.isfinite(s)).nonzero().reshape(-1)
        if bad.numel():
            raise InputError(
                f"{where} returned NaN or inf for row(s) {bad[:8].tolist()} of the output; a score must be finite"
            )
        return s


def _batch_of(out: Any) -> int | None:
    return int(out.shape[0]) if isinstance(out, torch.Tensor) and out.ndim >= 1 else None


def resolve_target(target: TargetLike | ScoreTarget, logits: torch.Tensor) -> torch.Tensor | ScoreTarget:
    """Turn ``target`` into a (B,) long tensor of class indices on ``logits.device``, or, for a
    callable, a ``ScoreTarget`` (the callable checked on ``logits``, the model's output).

    ``None`` means the top-1 class of each image; an int applies to every image;
    otherwise one int per image.

    Raises:
        InputError: wrong count, non-integer values, a class outside ``0..C-1``, or a callable
            whose result is not one floating-point score per image.
    """
    if isinstance(target, ScoreTarget):
        return target
    if is_score_fn(target):
        st = ScoreTarget(target, torch.empty(0))  # type: ignore[arg-type]
        with torch.no_grad():
            st.values = st(logits).detach()
        return st
    B, C = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(v, str) for v in target)):
        raise InputError(
            f"target {target!r} is a class name, but this model has no class names to look it up in "
            "(vx.class_names(model)); give the class index instead"
        )
    if isinstance(target, bool):
        raise InputError(f"target must be a class index, got the bool {target}")
    if isinstance(target, numbers.Integral):
        if not 0 <= int(target) < C:
            raise InputError(f"target {int(target)} is out of range: the model has {C} classes (0..{C - 1})")
        t = torch.full((B,), int(target), dtype=torch.long, device=logits.device)
    else:
        try:
            arr = torch.as_tensor(np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target))
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise InputError(
                f"target must be None, a class index, one index per image or a callable, got {target!r} ({e})"
            ) from None
        if arr.ndim == 0:
            arr = arr.reshape(1).expand(B)
        if arr.dtype.is_floating_point or arr.dtype == torch.bool or arr.dtype.is_complex:
            raise InputError(f"target must hold integer class indices, got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.shape[0] != B:
            raise InputError(f"target has {arr.numel()} entries but the batch has {B} images; give one int or {B} ints")
        t = arr.to(device=logits.device, dtype=torch.long)
    bad = (t < 0) | (t >= C)
    if bool(bad.any()):
        v = int(t[bad][0])
        raise InputError(f"target {v} is out of range: the model has {C} classes (0..{C - 1})")
    return t


def target_score(
    logits: Any, target: torch.Tensor | ScoreTarget, score: str = "logit", rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image scalar (K,) to differentiate or compare: the target's logit, softmax probability
    or log-probability, or a ``ScoreTarget``'s value (``score="logit"``: the callable as is).

    Args:
        logits: the model's output (K, C) (for a ``ScoreTarget``, whatever the callable takes).
        target: a resolved target (``resolve_target``) of the B images.
        rows: (K,) which image each row of ``logits`` is (None: row k is image k).

    Raises:
        InputError: ``score`` "prob" / "log_prob" with a callable target (a softmax over
            classes has no meaning for an arbitrary score).
    """
    if score not in ("logit", "prob", "log_prob"):
        raise InputError(f"score must be 'logit', 'prob' or 'log_prob', got {score!r}")
    if isinstance(target, ScoreTarget):
        if score != "logit":
            raise InputError(
                f"the score {score!r} is a softmax over class logits, but the target is a callable "
                f"({_name(target.fn)}) whose value is the score itself; use 'logit' (the callable's value as "
                "is: score='logit', or tam's target_score='logit') or fold a softmax into the callable"
            )
        return target(logits, rows)
    if score == "logit":
        out = logits
    elif score == "prob":
        out = logits.softmax(dim=-1)
    else:
        out = logits.log_softmax(dim=-1)
    t = target if rows is None else target[rows]
    return out.gather(1, t[:, None])[:, 0]


def explained_class(target: torch.Tensor | ScoreTarget) -> torch.Tensor:
    """(B,) long class indices for an ``Explanation``: the target itself, or -1 per image for a
    callable target (whose scores are in ``Explanation.extras["target_score"]``)."""
    if isinstance(target, ScoreTarget):
        return torch.full((len(target),), -1, dtype=torch.long, device=target.values.device)
    return target


def needs_class(target: object, what: str, instead: str) -> None:
    """Raise the error of a method (``what``) that needs a class read-out, for a callable target."""
    if is_score_fn(target) or isinstance(target, ScoreTarget):
        fn = target.fn if isinstance(target, ScoreTarget) else target
        raise InputError(
            f"{what} needs a class read-out, but the target is a callable ({_name(fn)}); {instead}"
        )


def class_index(model: torch.nn.Module, target: object) -> object:
    """``target`` with class names (a str, or a list holding strs) replaced by their indices in
    the model's class names (``vx.class_names(model)``); other values are returned as given.

    Raises:
        InputError: a name the model does not have (with the closest one), or a model
            without class names.
    """
    if not (isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(v, str) for v in target))):
        return target
    from .errors import suggest
    from .zoo import class_names

    names = class_names(model)
    if not names:
        return target  # resolve_target says the model has no class names

    def one(v: object) -> object:
        if not isinstance(v, str):
            return v
        if v not in names:
            fallback = names == [f"class {i}" for i in range(len(names))]
            why = " (this model carries no class names; give a class index)" if fallback else suggest(v, names)
            raise InputError(f"target {v!r} is not one of the model's class names{why}")
        return names.index(v)

    return one(target) if isinstance(target, str) else [one(v) for v in target]


class Similarity:
    """Cosine similarity of the model's output (B, D), an image embedding, to a reference
    embedding: ``<e/|e|, r/|r|>`` per image (as CLIP compares image and text embeddings;
    Radford et al., ICML 2021). Made by ``similarity(embedding)``.

    Attributes:
        reference: (D,) one reference for every image, or (B, D) one per image.
    """

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = reference

    def __repr__(self) -> str:
        return f"similarity(reference of shape {tuple(self.reference.shape)})"

    def rows(self, index: torch.Tensor) -> Similarity:
        """The similarity for a batch whose row k is image ``index[k]`` (one reference per image)."""
        if self.reference.ndim == 1:
            return self
        return Similarity(self.reference[index.to(self.reference.device)])

    def __call__(self, out: Any) -> torch.Tensor:
        e = out
        if not isinstance(e, torch.Tensor) or e.ndim != 2:
            raise InputError(
                f"similarity compares an image embedding (B, D) with the reference, but the model returned "
                f"{type(out).__name__}{tuple(getattr(out, 'shape', ()))}; explain a model whose output is the "
                "embedding (a timm model with num_classes=0, or vx.image_features(hf_model))"
            )
        r = self.reference.to(device=e.device, dtype=e.dtype)
        if e.shape[-1] != r.shape[-1]:
            raise InputError(
                f"the model's embedding has {e.shape[-1]} dimensions but the reference has {r.shape[-1]}"
            )
        if r.ndim == 2 and r.shape[0] != e.shape[0]:
            raise InputError(
                f"the reference holds {r.shape[0]} embeddings (one per image) but the batch has {e.shape[0]} images"
            )
        n = e.norm(dim=-1, keepdim=True)
        if not bool((n > 0).all()):
            raise InputError("an image embedding is the zero vector: its cosine similarity is undefined")
        rn = r / r.norm(dim=-1, keepdim=True)
        return ((e / n) * rn).sum(dim=-1)


def similarity(embedding: torch.Tensor | np.ndarray | Sequence[float]) -> Similarity:
    """A callable target: cosine similarity of the model's output (an image embedding, (B, D))
    to ``embedding`` ((D,) for every image, or (B, D), one per image).

    Use it with a backbone without a head (timm ``num_classes=0``; ``vx.image_features`` of a
    Hugging Face CLIP / SigLIP / DINOv2 model), e.g. to explain what makes an image similar to
    another image's embedding: ``vx.explain(backbone, x, "saliency", target=vx.targets.similarity(e))``.

    Raises:
        InputError: not a 1-D or 2-D float embedding, a non-finite one, or the zero vector.
    """
    try:
        r = torch.as_tensor(embedding.detach() if isinstance(embedding, torch.Tensor) else np.asarray(embedding))
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"similarity needs an embedding (a (D,) or (B, D) float tensor), got {embedding!r} ({e})") from None
    if not r.dtype.is_floating_point:
        raise InputError(f"similarity needs a floating-point embedding, got dtype {r.dtype}")
    if r.ndim not in (1, 2) or r.shape[-1] == 0:
        raise InputError(f"similarity needs a (D,) or (B, D) embedding, got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()):
        raise InputError("the similarity reference holds NaN or inf")
    if not bool((r.norm(dim=-1) > 0).all()):
        raise InputError("the similarity reference is the zero vector: its cosine similarity is undefined")
    return Similarity(r.clone())
