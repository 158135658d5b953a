"""Zero-shot CLIP / SigLIP as a classifier over text labels, and a Hugging Face image tower as
an embedding model.

``zero_shot(model, labels=[...], processor=...)`` returns ``ZeroShot``: an ``nn.Module`` mapping
pixel values (B, 3, H, W) to logits (B, K), the model's own image-text similarities over the K
labels (``logit_scale.exp() * cos(image, text_k)``, + ``logit_bias`` for SigLIP; Radford et al.,
ICML 2021; Zhai et al., ICCV 2023), with the labels as class names. ``vx.explain``, the
interventions and the Explorer take it as any classifier, so the relevance methods explain the
image side of the similarity, as Chefer et al. do for CLIP (Transformer-MM-Explainability,
ICCV 2021). The text side is computed once, at construction, and kept as a buffer.

``image_features(model)`` returns ``ImageFeatures``: the image embedding (B, D) of a Hugging Face
CLIP / SigLIP model (``get_image_features``) or vision model (``image_embeds``, else
``pooler_output``), for callable targets such as ``vx.targets.similarity``.

open_clip models (``encode_image`` / ``encode_text``, ``logit_scale``, SigLIP's ``logit_bias``)
are taken the same way. Nothing here imports ``transformers`` or ``open_clip``: the models are
recognised by what they have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .capture.hf_zero_shot import UnitNorm, unsupported_reason
from .errors import InputError, UnsupportedModelError

__all__ = ["ImageFeatures", "ZeroShot", "image_features", "zero_shot"]

# default pixel statistics of each model type's image processor (transformers' own defaults)
_STATS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _is_open_clip(model: object) -> bool:
    return type(model).__module__.startswith("open_clip") and hasattr(model, "encode_image")


def _input_geometry(model: nn.Module) -> tuple[Any, Any, str]:
    """(image_size, patch_size, model type) from a Hugging Face config or an open_clip ``visual``."""
    if _is_open_clip(model):
        vis = getattr(model, "visual", None)
        kind = "siglip" if isinstance(getattr(model, "logit_bias", None), torch.Tensor) else "clip"
        return getattr(vis, "image_size", None), getattr(vis, "patch_size", None), kind
    cfg = getattr(model, "config", None)
    vcfg = getattr(cfg, "vision_config", None) or cfg
    kind = str(getattr(cfg, "model_type", "")).replace("_vision_model", "")
    return getattr(vcfg, "image_size", None), getattr(vcfg, "patch_size", None), kind


def _pooled(out: Any, what: str) -> torch.Tensor:
    """The embedding tensor of a Hugging Face output (a tensor, or ``image_embeds`` / ``pooler_output``)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        t = getattr(out, name, None)
        if isinstance(t, torch.Tensor):
            return t
    raise UnsupportedModelError(
        f"{what} returned {type(out).__name__} without image_embeds or pooler_output; expected a Hugging Face "
        "CLIP / SigLIP model or a vision model with a pooled output"
    )


class ImageFeatures(nn.Module):
    """The image embedding (B, D) of a Hugging Face model (see the module docstring).

    ``model`` is the model itself (not copied). Its ``config.vision_config`` (or ``config``)
    gives the input size. PIL / uint8 images are prepared by timm's transform from
    ``pretrained_cfg``: bicubic resize and centre crop (CLIP) or a resize to the input size
    (SigLIP, ``crop_mode="squash"``), normalised with ``image_processor``'s mean and std when
    given, else the model type's defaults; for the processor's exact pixels pass its
    ``pixel_values`` tensor instead.
    """

    def __init__(self, model: nn.Module, image_processor: Any = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(f"expected a Hugging Face model (torch.nn.Module), got {type(model).__name__}")
        self.model = model
        size, patch, kind = _input_geometry(model)
        if size is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no config.image_size; expected a Hugging Face vision model or an "
                "open_clip model"
            )
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean, std = _STATS.get(kind, ((0.5,) * 3, (0.5,) * 3))
        vis = getattr(model, "visual", None)  # open_clip keeps its pretrained statistics there
        mean = tuple(getattr(image_processor, "image_mean", None) or getattr(vis, "image_mean", None) or mean)
        std = tuple(getattr(image_processor, "image_std", None) or getattr(vis, "image_std", None) or std)
        self.pretrained_cfg = {  # timm's data config for PIL / uint8 inputs
            "input_size": (3, h, w), "mean": mean, "std": std, "interpolation": "bicubic", "crop_pct": 1.0,
            "crop_mode": "squash" if kind == "siglip" else "center",
        }
        self.num_classes = 0  # an embedding, not logits: explain it with a callable target
        if isinstance(patch, (tuple, list)) and len(set(patch)) == 1:
            patch = int(patch[0])
        if isinstance(patch, int):  # the analysis grid of the model-agnostic methods: one cell per patch
            self.feature_info = [{"reduction": patch}]

    @property
    def vx_kind(self) -> str:  # read by capture.classifier where no attention view applies (capture/hf.py)
        return "vit"

    @property
    def vx_reason(self) -> str:
        return unsupported_reason(self) or "capture reads it through its vision tower's view (capture/hf.py)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _is_open_clip(self.model):
            return getattr(self.model, "encode_image")(x)  # noqa: B009
        get = getattr(self.model, "get_image_features", None)
        if callable(get):
            return _pooled(get(pixel_values=x), "get_image_features")
        return _pooled(self.model(pixel_values=x), type(self.model).__name__)


def image_features(model: nn.Module, image_processor: Any = None) -> ImageFeatures:
    """``ImageFeatures(model)``: a Hugging Face model's image embedding (B, D) as a module, for
    callable targets (``vx.explain(image_features(m), x, "saliency", target=vx.targets.similarity(e))``)."""
    return ImageFeatures(model, image_processor)


class ZeroShot(nn.Module):
    """Zero-shot classifier over text labels (see the module docstring).

    Attributes:
        features: the ``ImageFeatures`` of the model.
        text_embeds: (K, D) buffer, the labels' text embeddings, L2-normalised.
        labels: the K class names; ``num_classes``: K.
        sigmoid: True for SigLIP (a ``logit_bias`` is added; its probabilities are per-label sigmoids).
        unit_norm: the L2 normalisation of the image embedding (a module: attn_lrp's rule acts on it).
    """

    def __init__(
        self, model: nn.Module, text_embeds: torch.Tensor, labels: Sequence[str], image_processor: Any = None
    ) -> None:
        super().__init__()
        self.features = ImageFeatures(model, image_processor)
        self.register_buffer("text_embeds", text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True))
        self.labels = [str(s) for s in labels]
        self.num_classes = len(self.labels)
        self.sigmoid = isinstance(getattr(model, "logit_bias", None), torch.Tensor)
        self.pretrained_cfg = {**self.features.pretrained_cfg, "label_names": self.labels}
        if hasattr(self.features, "feature_info"):
            self.feature_info = self.features.feature_info
        self.unit_norm = UnitNorm()

    @property
    def model(self) -> nn.Module:
        return self.features.model

    vx_kind = ImageFeatures.vx_kind
    vx_reason = ImageFeatures.vx_reason

    def similarity(self, img: torch.Tensor) -> torch.Tensor:
        """Image embeddings (..., D) -> logits (..., K): ``exp(logit_scale) · normalize(img) · Tᵀ`` (+ bias)."""
        text = torch.as_tensor(self.text_embeds).to(img.dtype)
        scale: torch.Tensor = getattr(self.model, "logit_scale")  # noqa: B009 - a Parameter, typed
        logits = self.unit_norm(img) @ text.t() * scale.exp()
        if self.sigmoid:
            logits = logits + getattr(self.model, "logit_bias")  # noqa: B009
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarity(self.features(x))


def zero_shot(
    model: nn.Module,
    labels: Sequence[str] | None = None,
    *,
    processor: Any = None,
    text_inputs: Any = None,
    text_embeddings: torch.Tensor | None = None,
) -> ZeroShot:
    """A ``transformers`` ``CLIPModel`` or ``SiglipModel`` (or an open_clip model) as a classifier
    over ``labels``.

    Give the text side one way:
        ``labels`` + ``processor``: a ``CLIPProcessor`` / ``SiglipProcessor`` or tokenizer
            (``AutoProcessor.from_pretrained(name)``); SigLIP's text is padded to ``max_length``,
            as it was trained. For open_clip, its tokenizer (``open_clip.get_tokenizer(name)``).
        ``text_inputs``: token ids (K, T), or a dict with ``input_ids`` (and ``attention_mask``).
        ``text_embeddings``: (K, D) text embeddings (``get_text_features``), normalised here.
    ``labels`` (the class names) default to ``"label i"`` without a processor.

    Returns:
        ``ZeroShot``, whose logits equal the model's ``logits_per_image`` for these texts.

    Raises:
        UnsupportedModelError: a model without ``get_image_features`` / ``get_text_features`` /
            ``logit_scale``. InputError: none or several text sources, or mismatched counts.
    """
    open_clip = _is_open_clip(model) and hasattr(model, "encode_text")
    if not open_clip and not all(hasattr(model, a) for a in ("get_image_features", "get_text_features", "logit_scale")):
        raise UnsupportedModelError(
            f"zero_shot needs a CLIP-style image-text model (transformers CLIPModel or SiglipModel, with "
            f"get_image_features, get_text_features and logit_scale; or an open_clip model), got {type(model).__name__}"
        )
    given = [n for n, v in (("processor", processor), ("text_inputs", text_inputs),
                            ("text_embeddings", text_embeddings)) if v is not None]
    if len(given) != 1:
        raise InputError(
            "zero_shot needs exactly one text source: labels with processor=, text_inputs= (token ids) or "
            f"text_embeddings=; got {', '.join(given) or 'none'}"
        )
    if labels is not None and (isinstance(labels, str) or not all(isinstance(s, str) for s in labels)):
        raise InputError(f"labels must be a list of strings, got {labels!r}")
    sigmoid = isinstance(getattr(model, "logit_bias", None), torch.Tensor)
    device = next(model.parameters()).device
    if text_embeddings is not None:
        emb = torch.as_tensor(text_embeddings).detach()
        if emb.ndim != 2 or not emb.dtype.is_floating_point:
            raise InputError(f"text_embeddings must be a (K, D) float tensor, got {tuple(emb.shape)} {emb.dtype}")
    else:
        if processor is not None:
            if not labels:
                raise InputError("labels= (the texts to compare images with) are needed with processor=")
            kw = {"padding": "max_length"} if sigmoid else {"padding": True}
            try:
                text_inputs = processor(list(labels)) if open_clip else processor(text=list(labels), return_tensors="pt", **kw)
            except TypeError as e:
                raise InputError(f"processor {type(processor).__name__} did not take text=...: {e}") from None
        inputs = _token_inputs(text_inputs)
        if open_clip and set(inputs) != {"input_ids"}:
            raise InputError("an open_clip model takes token ids only (its tokenizer's output), not an attention mask")
        emb = _text_embeddings(model, {k: v.to(device) for k, v in inputs.items()}, open_clip)
    K = emb.shape[0]
    if K == 0:
        raise InputError("zero_shot needs at least one label")
    labels = list(labels) if labels is not None else [f"label {i}" for i in range(K)]
    if len(labels) != K:
        raise InputError(f"{len(labels)} labels for {K} texts; give one label per text")
    dim = getattr(getattr(model, "visual_projection", None), "out_features", None)
    if dim is not None and emb.shape[1] != dim:
        raise InputError(f"text_embeddings have {emb.shape[1]} dimensions, the image embeddings {dim}")
    image_processor = getattr(processor, "image_processor", None)  # a CLIPProcessor's: its mean and std
    return ZeroShot(model, emb.to(device=device, dtype=torch.float32), labels, image_processor)


def _token_inputs(text_inputs: Any) -> dict[str, torch.Tensor]:
    if isinstance(text_inputs, torch.Tensor):
        text_inputs = {"input_ids": text_inputs}
    if not hasattr(text_inputs, "keys") or "input_ids" not in text_inputs:
        raise InputError(
            "text_inputs must be token ids (K, T) or a dict with input_ids (and attention_mask), "
            f"got {type(text_inputs).__name__}"
        )
    out = {k: torch.as_tensor(text_inputs[k]) for k in ("input_ids", "attention_mask", "position_ids") if k in text_inputs}
    ids = out["input_ids"]
    if ids.ndim != 2 or ids.dtype.is_floating_point:
        raise InputError(f"input_ids must be a (K, T) integer tensor, got {tuple(ids.shape)} {ids.dtype}")
    return out


def _text_embeddings(model: nn.Module, inputs: dict[str, torch.Tensor], open_clip: bool = False) -> torch.Tensor:
    """``get_text_features`` (open_clip: ``encode_text``) in eval mode without autograd; training
    flags put back."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            if open_clip:
                return getattr(model, "encode_text")(inputs["input_ids"]).detach()  # noqa: B009
            get = getattr(model, "get_text_features")  # noqa: B009
            return _pooled(get(**inputs), "get_text_features").detach()
    finally:
        for m, t in flags:
            m.training = t
