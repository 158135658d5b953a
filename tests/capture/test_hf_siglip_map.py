"""The attention methods on vx.zero_shot / vx.image_features over a small random-weight transformers SiglipModel
with its attention-pool (MAP) head (capture/hf_pool.py): the captured pool attention against what
nn.MultiheadAttention returns with need_weights=True, average_attn_weights=False; its gradient and every method
against a timm VisionTransformer(global_pool="map") twin with converted weights (in_proj -> AttentionPoolLatent's
q / kv); attn_lrp's pool rules against the same twin; the refusals; the model left as found."""

import pytest
import timm
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture import Needs, capture
from vit_explore.capture.hf import HFViT, as_vit
from vit_explore.errors import UnsupportedModelError
from vit_explore.targets import similarity
from vit_explore.zero_shot import image_features, zero_shot

from ..conftest import boom
from .hf_models import DEPTH, DIM, HEADS, PATCH, SIZE, _randomise, image

transformers = pytest.importorskip("transformers")

K, T = 3, 6
METHODS = ("raw_attention", "rollout", "attention_flow", "tam", "ag_cam", "attn_grad_cam", "chefer_generic", "vit_cx")


def siglip(attn: str = "eager"):
    torch.manual_seed(0)
    text = {"vocab_size": 50, "hidden_size": DIM, "intermediate_size": 2 * DIM, "num_hidden_layers": 1,
            "num_attention_heads": HEADS, "max_position_embeddings": T, "bos_token_id": 0, "eos_token_id": 49,
            "pad_token_id": 1}
    vision = {"image_size": SIZE, "patch_size": PATCH, "hidden_size": DIM, "intermediate_size": 2 * DIM,
              "num_hidden_layers": DEPTH, "num_attention_heads": HEADS, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
              "vision_use_head": True}
    m = _randomise(transformers.SiglipModel(
        transformers.SiglipConfig(text_config=text, vision_config=vision, attn_implementation=attn)))
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
        m.logit_bias.fill_(-0.5)
    return m.eval()


def ids():
    return torch.randint(2, 49, (K, T), generator=torch.Generator().manual_seed(5))


class SigHead(torch.nn.Module):
    """exp(s) · normalize(h) · Tᵀ + b, written here (``const_norm``: the norm a constant, AttnLRP's rule)."""

    def __init__(self, text, scale, bias, const_norm=False):
        super().__init__()
        self.text, self.scale, self.bias, self.const_norm = text.detach().clone(), scale, bias, const_norm

    def forward(self, h):
        n = h.norm(dim=-1, keepdim=True)
        return h / (n.detach() if self.const_norm else n) @ self.text.t() * self.scale + self.bias


def timm_twin(m, head: torch.nn.Module, num_classes: int):
    """timm's ViT with SigLIP's vision tower: no class token, final norm (post_layernorm), AttentionPoolLatent
    from the MAP head's nn.MultiheadAttention (in_proj_weight = [Wq; Wk; Wv]: q <- Wq, kv <- [Wk; Wv])."""
    tm = timm.models.vision_transformer.VisionTransformer(
        img_size=SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2, num_classes=0,
        global_pool="map", class_token=False).eval()
    vm = m.vision_model
    emb, hd = vm.embeddings, vm.head
    a = hd.attention
    sd = {"pos_embed": emb.position_embedding.weight[None], "patch_embed.proj.weight": emb.patch_embedding.weight,
          "patch_embed.proj.bias": emb.patch_embedding.bias, "norm.weight": vm.post_layernorm.weight,
          "norm.bias": vm.post_layernorm.bias, "attn_pool.latent": hd.probe,
          "attn_pool.q.weight": a.in_proj_weight[:DIM], "attn_pool.q.bias": a.in_proj_bias[:DIM],
          "attn_pool.kv.weight": a.in_proj_weight[DIM:], "attn_pool.kv.bias": a.in_proj_bias[DIM:]}
    pairs = [(f"blocks.{i}.", lyr) for i, lyr in enumerate(vm.encoder.layers)]
    for p, lyr in pairs:
        s = lyr.self_attn
        sd[p + "attn.qkv.weight"] = torch.cat([s.q_proj.weight, s.k_proj.weight, s.v_proj.weight])
        sd[p + "attn.qkv.bias"] = torch.cat([s.q_proj.bias, s.k_proj.bias, s.v_proj.bias])
        for src, dst in ((s.out_proj, "attn.proj"), (lyr.layer_norm1, "norm1"), (lyr.layer_norm2, "norm2"),
                         (lyr.mlp.fc1, "mlp.fc1"), (lyr.mlp.fc2, "mlp.fc2")):
            sd[p + dst + ".weight"], sd[p + dst + ".bias"] = src.weight, src.bias
    for src, dst in ((a.out_proj, "proj"), (hd.layernorm, "norm"), (hd.mlp.fc1, "mlp.fc1"), (hd.mlp.fc2, "mlp.fc2")):
        sd["attn_pool." + dst + ".weight"], sd["attn_pool." + dst + ".bias"] = src.weight, src.bias
    tm.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    tm.head, tm.num_classes = head, num_classes
    return tm


def zero_shot_twin(m, zs, const_norm=False):
    head = SigHead(zs.text_embeds, float(m.logit_scale.detach().exp()), float(m.logit_bias.detach()), const_norm)
    return timm_twin(m, head, K)


def close(a, b, what=""):
    scale = float(b.abs().max()) or 1.0
    torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * scale, msg=lambda s: f"{what}: {s}")
    assert float(b.abs().max()) > 0


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_pool_attention_is_what_multihead_attention_returns(impl):
    m = siglip(impl)
    zs = zero_shot(m, text_inputs=ids())
    tm = zero_shot_twin(m, zs)
    x = image(batch=2)
    vm = m.vision_model
    with torch.no_grad():
        h = vm(pixel_values=x).last_hidden_state  # post_layernorm applied
        probe = vm.head.probe.expand(2, -1, -1)
        _, want = vm.head.attention(probe, h, h, need_weights=True, average_attn_weights=False)
        want_logits = m(input_ids=ids(), pixel_values=x).logits_per_image
    assert isinstance(as_vit(zs), HFViT)
    tr = capture(zs, x, Needs(attn=True, attn_grad=True), target=[2, 0])
    assert tr.pool_attn is not None and tr.pool_attn.shape == (2, HEADS, 1, (SIZE // PATCH) ** 2)
    torch.testing.assert_close(tr.pool_attn, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tr.logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr.layout.readout_query, want.mean(1)[:, 0], rtol=1e-5, atol=1e-6)
    ref = capture(tm, x, Needs(attn=True, attn_grad=True), target=[2, 0])  # timm's pool: its own softmax's output
    assert tr.pool_attn_grad is not None and ref.pool_attn_grad is not None
    close(tr.pool_attn_grad, ref.pool_attn_grad, "pool attention gradient")
    for a, b, ga, gb in zip(tr.attn, ref.attn, tr.attn_grad, ref.attn_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        close(ga, gb, "block attention gradient")
    assert m.config._attn_implementation == impl and isinstance(vm.head.attention, torch.nn.MultiheadAttention)


def test_every_method_equals_the_timm_twin():
    m = siglip("sdpa")
    zs = zero_shot(m, ["a", "b", "c"], text_inputs=ids())
    tm = zero_shot_twin(m, zs)
    x = image(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), zs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(zs(x), m(input_ids=ids(), pixel_values=x).logits_per_image, rtol=1e-5, atol=1e-5)
    for method in METHODS:
        for target in (None, [2, 1]):
            a = vx.explain(zs, x, method, target=target)
            b = vx.explain(tm, x, method, target=target)
            close(a.patch_map, b.patch_map, method)
            assert a.target.tolist() == b.target.tolist()
    torch.testing.assert_close(vx.attention_maps(zs, x), vx.attention_maps(tm, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_attn_lrp_pool_rules_equal_the_twin(variant):
    """AttnLRP through the MAP head (probabilities detached or halved, k / v gradients halved at the head's input,
    identity rule on its MLP and LayerNorm): the twin's relevance with timm's pool rules, and the L2 norm a
    constant; not the plain gradient through the norm."""
    m = siglip()
    zs = zero_shot(m, text_inputs=ids())
    x = image(batch=2)
    a = vx.explain(zs, x, "attn_lrp", target=[1, 2], variant=variant).patch_map
    b = vx.explain(zero_shot_twin(m, zs, const_norm=True), x, "attn_lrp", target=[1, 2], variant=variant).patch_map
    close(a, b, "attn_lrp")
    plain = vx.explain(zero_shot_twin(m, zs), x, "attn_lrp", target=[1, 2], variant=variant).patch_map
    assert not torch.allclose(a, plain, rtol=1e-2, atol=1e-2 * float(b.abs().max()))


def vision_model(m):
    """A SiglipVisionModel holding ``m``'s vision tower."""
    v = transformers.SiglipVisionModel(m.config.vision_config)
    v.load_state_dict(m.vision_model.state_dict(), strict=True)
    return v.eval()


@pytest.mark.parametrize("tower", ["SiglipModel", "SiglipVisionModel"])
def test_image_features_with_a_callable_target_equal_the_twin(tower):
    """The pooled output of the MAP head (SigLIP's image embedding, no projection) with a similarity target."""
    m = siglip()
    feats = image_features(m if tower == "SiglipModel" else vision_model(m))
    assert isinstance(as_vit(feats), HFViT)
    tm = timm_twin(m, torch.nn.Identity(), 0)
    x = image(batch=2)
    e = torch.randn(DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(feats(x), tm(x), rtol=1e-5, atol=1e-5)
    for method in (*METHODS, "attn_lrp"):
        close(vx.explain(feats, x, method, target=similarity(e)).patch_map,
              vx.explain(tm, x, method, target=similarity(e)).patch_map, method)


def test_refusals_name_the_reason():
    m = siglip()
    zs = zero_shot(m, text_inputs=ids())
    x = image(batch=1)
    with pytest.raises(UnsupportedModelError, match=r"attention-pool \(MAP\) head.*attn_lrp"):
        vx.explain(zs, x, "chefer_lrp", target=0)
    with pytest.raises(UnsupportedModelError, match=r"functionally.*gamma_linear=0"):
        vx.explain(zs, x, "attn_lrp", target=0, gamma_linear=0.25)
    with pytest.raises(UnsupportedModelError, match=r"attention-pool \(MAP\)"):
        vx.head_attribution(zs, x)


def _state(m):
    return (
        [(x.training, tuple(x._forward_hooks), tuple(x._forward_pre_hooks), dict(x._modules), sorted(vars(x)))
         for x in m.modules()],
        [p.requires_grad for p in m.parameters()],
        m.config._attn_implementation, m.vision_model.config._attn_implementation,
    )


@pytest.mark.parametrize("method", ["rollout", "chefer_generic", "tam", "attn_lrp", "vit_cx"])
def test_left_as_found_also_after_an_error(method):
    m = siglip("sdpa")
    zs = zero_shot(m, text_inputs=ids())
    m.train()
    m.vision_model.head.mlp.fc1.weight.requires_grad_(False)
    before, zs_before = _state(m), sorted(vars(zs))
    x = image(batch=1)
    vx.explain(zs, x, method, target=0)
    assert _state(m) == before and sorted(vars(zs)) == zs_before
    h = m.vision_model.head.mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        vx.explain(zs, x, method, target=0)
    h.remove()
    assert _state(m) == before and sorted(vars(zs)) == zs_before
    assert type(m.vision_model.head.attention) is torch.nn.MultiheadAttention  # back in the head
    assert not as_vit(zs).attn_pool._recorders


def test_interventions_equal_the_twin():
    """Head ablation, token blocking and mode="drop" (the pool then attends over the kept tokens only)."""
    m = siglip("sdpa")
    zs = zero_shot(m, text_inputs=ids())
    tm = zero_shot_twin(m, zs)
    x = image(batch=1)
    with torch.no_grad():
        with vx.ablate_heads(zs, {0: [1, 2], -1: 0}), vx.ablate_heads(tm, {0: [1, 2], -1: 0}):
            ablated = zs(x)
            torch.testing.assert_close(ablated, tm(x), rtol=1e-4, atol=1e-4)
        with vx.block_tokens(zs, [3, 5], layers=[1]), vx.block_tokens(tm, [3, 5], layers=[1]):
            blocked = zs(x)
            torch.testing.assert_close(blocked, tm(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(ablated, zs(x)) and not torch.allclose(blocked, zs(x))
    keep = [0, 5, 6, 15]
    got = vx.intervene(zs, x, keep, mode="drop", keep=True).logits
    vm = m.vision_model
    with torch.no_grad():  # the tower's own modules on the kept tokens
        h = vm.embeddings(x)[:, keep]
        for lyr in vm.encoder.layers:
            h = lyr(h, None)
        e = vm.head(vm.post_layernorm(h))
        want = F.normalize(e, dim=-1) @ zs.text_embeds.t() * m.logit_scale.exp() + m.logit_bias
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, zs(x))
