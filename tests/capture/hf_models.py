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


def hf_beit(attn: str = "eager", seed: int = 0, mean_pool: bool = True, shared: bool = False):
    """BEiT with a relative position bias (per layer, or one shared), layer scales and mean pooling."""
    torch.manual_seed(seed)
    cfg = transformers.BeitConfig(
        image_size=SIZE, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=2 * DIM, num_labels=CLASSES, layer_norm_eps=1e-6, attn_implementation=attn,
        use_relative_position_bias=not shared, use_shared_relative_position_bias=shared,
        use_mean_pooling=mean_pool, layer_scale_init_value=0.1,
    )
    return _randomise(transformers.BeitForImageClassification(cfg).eval())


def hf_clip(attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    vc = {"image_size": SIZE, "patch_size": PATCH, "hidden_size": DIM, "num_hidden_layers": DEPTH,
          "num_attention_heads": HEADS, "intermediate_size": 2 * DIM, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
    cfg = transformers.CLIPConfig(vision_config=vc, num_labels=CLASSES, attn_implementation=attn)
    return _randomise(transformers.CLIPForImageClassification(cfg).eval())


def hf_siglip(attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    vc = {"image_size": SIZE, "patch_size": PATCH, "hidden_size": DIM, "num_hidden_layers": DEPTH,
          "num_attention_heads": HEADS, "intermediate_size": 2 * DIM, "layer_norm_eps": 1e-6,
          "vision_use_head": False, "hidden_act": "gelu"}
    text = {"vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # unused; quiets the config's check
    cfg = transformers.SiglipConfig(vision_config=vc, text_config=text, num_labels=CLASSES, attn_implementation=attn)
    return _randomise(transformers.SiglipForImageClassification(cfg).eval())


def timm_beit_twin(hf) -> torch.nn.Module:
    """The timm BEiT computing the same function as ``hf_beit()`` (per-layer bias, mean pooling)."""
    m = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=SIZE, patch_size=PATCH, embed_dim=DIM,
                          depth=DEPTH, num_heads=HEADS, mlp_ratio=2, num_classes=CLASSES, init_values=0.1).eval()
    base = hf.beit
    sd = {
        "cls_token": base.embeddings.cls_token,
        "patch_embed.proj.weight": base.embeddings.patch_embeddings.projection.weight,
        "patch_embed.proj.bias": base.embeddings.patch_embeddings.projection.bias,
        "fc_norm.weight": base.pooler.layernorm.weight, "fc_norm.bias": base.pooler.layernorm.bias,
        "head.weight": hf.classifier.weight, "head.bias": hf.classifier.bias,
    }
    for i, lyr in enumerate(base.layers):
        a, p = lyr.attention, f"blocks.{i}."
        sd[p + "attn.qkv.weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[p + "attn.q_bias"], sd[p + "attn.v_bias"] = a.q_proj.bias, a.v_proj.bias
        sd[p + "attn.relative_position_bias_table"] = lyr.relative_position_bias.relative_position_bias_table
        sd[p + "gamma_1"], sd[p + "gamma_2"] = lyr.lambda_1, lyr.lambda_2
        for src, dst in ((a.o_proj, "attn.proj"), (lyr.layernorm_before, "norm1"), (lyr.layernorm_after, "norm2"),
                         (lyr.mlp.fc1, "mlp.fc1"), (lyr.mlp.fc2, "mlp.fc2")):
            sd[p + dst + ".weight"], sd[p + dst + ".bias"] = src.weight, src.bias
    missing, unexpected = m.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith("relative_position_index") for k in missing), (missing, unexpected)
    return m


def timm_encoder_twin(hf) -> torch.nn.Module:
    """The timm ViT computing the same function as ``hf_clip()`` (pre-norm, mean of the patch tokens, no final
    norm) or ``hf_siglip()`` (no class token, final norm, mean of all tokens)."""
    clip = type(hf).__name__.startswith("CLIP")
    vm = hf.vision_model
    kw = {"class_token": True, "pre_norm": True, "final_norm": False} if clip else {"class_token": False, "fc_norm": False}
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2,
        num_classes=CLASSES, global_pool="avg", **kw).eval()
    emb = vm.embeddings
    sd = {"pos_embed": emb.position_embedding.weight[None], "patch_embed.proj.weight": emb.patch_embedding.weight,
          "head.weight": hf.classifier.weight, "head.bias": hf.classifier.bias}
    if clip:
        sd["cls_token"] = emb.class_embedding[None, None]
        sd["norm_pre.weight"], sd["norm_pre.bias"] = vm.pre_layrnorm.weight, vm.pre_layrnorm.bias
    else:
        sd["patch_embed.proj.bias"] = emb.patch_embedding.bias
        sd["norm.weight"], sd["norm.bias"] = vm.post_layernorm.weight, vm.post_layernorm.bias
    for i, lyr in enumerate(vm.encoder.layers):
        a, p = lyr.self_attn, f"blocks.{i}."
        sd[p + "attn.qkv.weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[p + "attn.qkv.bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        for src, dst in ((a.out_proj, "attn.proj"), (lyr.layer_norm1, "norm1"), (lyr.layer_norm2, "norm2"),
                         (lyr.mlp.fc1, "mlp.fc1"), (lyr.mlp.fc2, "mlp.fc2")):
            sd[p + dst + ".weight"], sd[p + dst + ".bias"] = src.weight, src.bias
    m.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return m


def hf_swin(seed: int = 0):
    """A small Swin (window attention in 2 stages): the model-agnostic methods only."""
    torch.manual_seed(seed)
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                  window_size=4, num_labels=CLASSES)
    return _randomise(transformers.SwinForImageClassification(cfg).eval())


def hf_convnext(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ConvNextConfig(num_labels=CLASSES, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=4)
    return _randomise(transformers.ConvNextForImageClassification(cfg).eval())
