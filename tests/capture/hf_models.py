"""Small random-weight Hugging Face models, and timm models converted to them (nothing downloaded)."""

from __future__ import annotations

import pytest
import timm
import torch

transformers = pytest.importorskip("transformers")

SIZE, PATCH, DIM, DEPTH, HEADS, CLASSES = 32, 8, 32, 2, 4, 5


def hf_vit(attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        image_size=SIZE, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=2 * DIM, num_labels=CLASSES, layer_norm_eps=1e-6, attn_implementation=attn,
    )
    return _randomise(transformers.ViTForImageClassification(cfg).eval())


def hf_deit(teacher: bool = True, attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.DeiTConfig(
        image_size=SIZE, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=2 * DIM, num_labels=CLASSES, layer_norm_eps=1e-6, attn_implementation=attn,
    )
    cls = transformers.DeiTForImageClassificationWithTeacher if teacher else transformers.DeiTForImageClassification
    return _randomise(cls(cfg).eval())


def hf_dinov2(attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.Dinov2Config(
        image_size=SIZE, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        mlp_ratio=2, num_labels=CLASSES, attn_implementation=attn,
    )
    return _randomise(transformers.Dinov2ForImageClassification(cfg).eval())


def _randomise(m):
    """Random weights away from the init (which has zero biases and tokens), so every term matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            unit = p.ndim == 1 and name.endswith("weight") and "norm" in name
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.2) + (1.0 if unit else 0.0))
    return m


def timm_twin(hf) -> torch.nn.Module:
    """The timm ViT / DeiT computing the same function as ``hf`` (weights converted here)."""
    kind = type(hf).__name__
    distilled = kind == "DeiTForImageClassificationWithTeacher"
    arch = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    m = timm.create_model(arch, pretrained=False, img_size=SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
                          num_heads=HEADS, mlp_ratio=2, num_classes=CLASSES).eval()
    base = hf.vit if kind.startswith("ViT") else hf.deit
    sd = {
        "cls_token": base.embeddings.cls_token, "pos_embed": base.embeddings.position_embeddings,
        "patch_embed.proj.weight": base.embeddings.patch_embeddings.projection.weight,
        "patch_embed.proj.bias": base.embeddings.patch_embeddings.projection.bias,
        "norm.weight": base.layernorm.weight, "norm.bias": base.layernorm.bias,
    }
    if distilled:
        sd["dist_token"] = base.embeddings.distillation_token
        for src, dst in (("cls_classifier", "head"), ("distillation_classifier", "head_dist")):
            sd[f"{dst}.weight"], sd[f"{dst}.bias"] = getattr(hf, src).weight, getattr(hf, src).bias
    else:
        sd["head.weight"], sd["head.bias"] = hf.classifier.weight, hf.classifier.bias
    for i, lyr in enumerate(base.layers):
        a, p = lyr.attention, f"blocks.{i}."
        sd[p + "attn.qkv.weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[p + "attn.qkv.bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        for src, dst in ((a.o_proj, "attn.proj"), (lyr.layernorm_before, "norm1"), (lyr.layernorm_after, "norm2"),
                         (lyr.mlp.fc1, "mlp.fc1"), (lyr.mlp.fc2, "mlp.fc2")):
            sd[p + dst + ".weight"], sd[p + dst + ".bias"] = src.weight, src.bias
    m.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return m


def image(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
