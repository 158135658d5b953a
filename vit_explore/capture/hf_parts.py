"""Where each supported Hugging Face ``transformers`` classifier keeps its parts (read by ``hf.HFViT``).

``parts_of(model)`` names, for one model, the modules ``HFViT`` maps onto timm's layout and the
classifier's read-out, read from the installed transformers (5.x) sources:

* ViT / DeiT: ``embeddings -> layers -> layernorm -> classifier(h[:, 0])`` (DeiT with teacher:
  mean of the CLS and distillation heads);
* DINOv2: ``classifier(concat(h_cls, mean(h_patches)))`` after ``layernorm``;
* BEiT: layers with a relative position bias (per layer, or one shared by all layers) that the
  layer hands to its attention as ``attention_mask``, layer scales ``lambda_1`` / ``lambda_2``;
  read-out ``classifier(pooler.layernorm(mean(h_patches)))`` (``use_mean_pooling``, the default,
  with ``layernorm`` an identity) or ``classifier(layernorm(h)[:, 0])``;
* CLIP: ``embeddings -> pre_layrnorm -> layers -> classifier(mean(h_patches))``, no final norm
  (``post_layernorm`` normalises only the pooled CLS, which the classifier does not read);
* SigLIP: no class token; ``classifier(mean(post_layernorm(h)))`` over all (patch) tokens (the
  attention-pool ``head``, where the config has one, runs but the classifier does not read it);
* ``vx.zero_shot`` / ``vx.image_features`` over a ``CLIPModel`` (``image_features`` also over a
  ``CLIPVisionModelWithProjection``; ``hf_zero_shot.py``): the vision
  tower with ``post_layernorm`` as the final norm on the whole sequence (it stands aside in the
  tower's own pooler for the pass) and ``ZeroShotHead`` on the CLS token; over a ``SiglipModel``
  (``image_features`` also over a ``SiglipVisionModel``):
  no class token, ``post_layernorm`` on the sequence (the tower's own), the attention-pool (MAP)
  head (``hf_pool.HFPool``, read-out ``"map"``) and ``ZeroShotHead`` (no projection) on its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UnsupportedModelError
from .hf_zero_shot import ZeroShotHead, is_wrapper, unsupported_reason

SUPPORTED = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "Dinov2ForImageClassification",
    "BeitForImageClassification",
    "CLIPForImageClassification",
    "SiglipForImageClassification",
)


@dataclass(frozen=True)
class HFParts:
    """The parts of one model, by role.

    Attributes:
        layers: the encoder's ``nn.ModuleList`` of layers.
        attn, mlp: attribute names of a layer's attention and MLP.
        norms: per layer ``(norm before attention, norm before MLP)``.
        layer_scales: per layer the names of its two layer-scale attributes, where the layer
            multiplies by parameters it holds itself (BEiT's ``lambda_1`` / ``lambda_2``), else None.
        embeddings: the module whose output is the token sequence, position embedding included.
        proj: the patch embedding's ``Conv2d``.
        norm: the final norm on the whole sequence (``nn.Identity`` where there is none).
        fc_norm: a norm on the pooled vector (BEiT's mean pooling), else None.
        head, head_dist: the classifier (and DeiT's distillation head).
        readout: ``TokenLayout`` read-out rule; num_prefix: leading non-patch tokens.
        img_size: the fixed input size, or None where the model takes any size.
        rel_bias: the scores include a relative position bias (BEiT).
        pooled_norm: ``(module, name)``: the slot of the model's own norm on the pooled token, which
            holds an identity during the pass while ``norm`` (that same norm) runs on the whole
            sequence after the last layer (CLIP's ``post_layernorm`` in a zero-shot wrapper), else None.
        num_heads: attention heads per layer (None: from the model's config).
        pool_head: SigLIP's attention-pool (MAP) head (``readout == "map"``, ``hf_pool.py``), else None.
    """

    layers: nn.ModuleList
    attn: str
    mlp: str
    norms: tuple[tuple[nn.Module, nn.Module], ...]
    layer_scales: tuple[tuple[str, str] | None, ...]
    embeddings: nn.Module
    proj: nn.Conv2d
    norm: nn.Module
    fc_norm: nn.Module | None
    head: nn.Module
    head_dist: nn.Module | None
    readout: str
    num_prefix: int
    img_size: tuple[int, int] | None
    rel_bias: bool = False
    pooled_norm: tuple[nn.Module, str] | None = None
    num_heads: int | None = None
    pool_head: nn.Module | None = None


def _size(cfg) -> tuple[int, int]:
    s = cfg.image_size
    return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def parts_of(model: Any) -> HFParts:
    """The parts of a supported classifier (see the module docstring).

    Raises:
        UnsupportedModelError: a class not in ``SUPPORTED``.
    """
    kind = type(model).__name__
    if is_wrapper(model):
        return _zero_shot_parts(model)
    if kind not in SUPPORTED:
        raise UnsupportedModelError(
            f"{kind} from transformers is not supported by the attention methods; supported: "
            f"{', '.join(SUPPORTED)}. Model-agnostic methods (saliency, integrated_gradients, occlusion, rise, "
            "grad_cam) need only the model's .logits."
        )
    cfg = model.config
    if kind == "Dinov2ForImageClassification":
        base = model.dinov2
        layers = base.encoder.layer
        return HFParts(
            layers=layers, attn="attention", mlp="mlp", norms=tuple((lyr.norm1, lyr.norm2) for lyr in layers),
            layer_scales=(None,) * len(layers), embeddings=base.embeddings,
            proj=base.embeddings.patch_embeddings.projection, norm=base.layernorm, fc_norm=None,
            head=model.classifier, head_dist=None, readout="cls_avg", num_prefix=1, img_size=None,
        )
    if kind in ("CLIPForImageClassification", "SiglipForImageClassification"):
        vm = model.vision_model
        layers = vm.encoder.layers
        clip = kind.startswith("CLIP")
        return HFParts(
            layers=layers, attn="self_attn", mlp="mlp",
            norms=tuple((lyr.layer_norm1, lyr.layer_norm2) for lyr in layers), layer_scales=(None,) * len(layers),
            embeddings=vm.embeddings, proj=vm.embeddings.patch_embedding,
            norm=nn.Identity() if clip else vm.post_layernorm, fc_norm=None, head=model.classifier, head_dist=None,
            readout="avg", num_prefix=1 if clip else 0, img_size=_size(vm.config),
        )
    if kind == "BeitForImageClassification":
        base = model.beit
        layers = base.layers
        mean = base.pooler is not None and base.pooler.layernorm is not None
        scales = tuple(("lambda_1", "lambda_2") if isinstance(lyr.lambda_1, nn.Parameter) else None for lyr in layers)
        rel = bool(cfg.use_relative_position_bias or cfg.use_shared_relative_position_bias)
        return HFParts(
            layers=layers, attn="attention", mlp="mlp",
            norms=tuple((lyr.layernorm_before, lyr.layernorm_after) for lyr in layers), layer_scales=scales,
            embeddings=base.embeddings, proj=base.embeddings.patch_embeddings.projection, norm=base.layernorm,
            fc_norm=base.pooler.layernorm if mean else None, head=model.classifier, head_dist=None,
            readout="avg" if mean else "cls", num_prefix=1, img_size=_size(cfg), rel_bias=rel,
        )
    base = model.vit if kind.startswith("ViT") else model.deit
    layers = base.layers
    teacher = kind == "DeiTForImageClassificationWithTeacher"
    return HFParts(
        layers=layers, attn="attention", mlp="mlp",
        norms=tuple((lyr.layernorm_before, lyr.layernorm_after) for lyr in layers), layer_scales=(None,) * len(layers),
        embeddings=base.embeddings, proj=base.embeddings.patch_embeddings.projection, norm=base.layernorm,
        fc_norm=None, head=model.cls_classifier if teacher else model.classifier,
        head_dist=model.distillation_classifier if teacher else None, readout="cls_dist" if teacher else "cls",
        num_prefix=2 if kind.startswith("DeiT") else 1, img_size=_size(cfg),
    )


def _zero_shot_parts(wrapper: Any) -> HFParts:
    """The parts of a ``ZeroShot`` / ``ImageFeatures`` wrapper over a ``CLIPModel`` or a ``SiglipModel``
    (``ImageFeatures``: or a ``CLIPVisionModelWithProjection`` / ``SiglipVisionModel``; ``hf_zero_shot.py``)."""
    why = unsupported_reason(wrapper)
    if why is not None:
        raise UnsupportedModelError(why)
    hf = wrapper.model
    vm = getattr(hf, "vision_model", hf)  # a SiglipVisionModel is the tower itself
    layers = vm.encoder.layers
    zero_shot = type(wrapper).__name__ == "ZeroShot"
    if type(hf).__name__ in ("SiglipModel", "SiglipVisionModel"):  # no class token; post_layernorm on the sequence, then the MAP head
        return HFParts(
            layers=layers, attn="self_attn", mlp="mlp",
            norms=tuple((lyr.layer_norm1, lyr.layer_norm2) for lyr in layers), layer_scales=(None,) * len(layers),
            embeddings=vm.embeddings, proj=vm.embeddings.patch_embedding, norm=vm.post_layernorm, fc_norm=None,
            head=ZeroShotHead(nn.Identity(), wrapper if zero_shot else None), head_dist=None, readout="map",
            num_prefix=0, img_size=_size(vm.config), num_heads=int(vm.config.num_attention_heads), pool_head=vm.head,
        )
    return HFParts(
        layers=layers, attn="self_attn", mlp="mlp", norms=tuple((lyr.layer_norm1, lyr.layer_norm2) for lyr in layers),
        layer_scales=(None,) * len(layers), embeddings=vm.embeddings, proj=vm.embeddings.patch_embedding,
        norm=vm.post_layernorm, fc_norm=None, head=ZeroShotHead(hf.visual_projection, wrapper if zero_shot else None),
        head_dist=None, readout="cls", num_prefix=1, img_size=_size(vm.config), pooled_norm=(vm, "post_layernorm"),
        num_heads=int(vm.config.num_attention_heads),
    )
