"""The attention methods on vx.zero_shot / vx.image_features over a small random-weight transformers CLIPModel
(capture/hf_zero_shot.py): attention and rollout against the vision tower's own ``output_attentions``, every
gradient method and the interventions (drop, head ablation, token blocking) against a timm VisionTransformer twin
with converted weights and a head computing the same function, attn_lrp's normalisation rule against a twin whose
norm is a constant, the refusals (chefer_lrp's head, SigLIP without its attention-pool head), the model left as found."""

import pytest
import timm
import torch
import torch.nn.functional as F

import vit_explore as vx
from vit_explore.capture import Needs, capture
from vit_explore.capture.hf import HFViT, as_vit
from vit_explore.errors import UnsupportedModelError
from vit_explore.explainers.rollout import joint_attention
from vit_explore.targets import similarity
from vit_explore.zero_shot import image_features, zero_shot

from ..conftest import boom
from .hf_models import DEPTH, DIM, HEADS, PATCH, SIZE, _randomise, image

transformers = pytest.importorskip("transformers")

K, T, PROJ = 3, 6, 16
#: the methods that need only autograd through the head (and the model-agnostic ones)
GRADIENT = ("raw_attention", "rollout", "attention_flow", "tam", "ag_cam", "attn_grad_cam", "chefer_generic", "vit_cx",
            "saliency", "integrated_gradients", "grad_cam", "occlusion", "rise")
EXACT = {"rise": {"n_masks": 8, "s": 2, "batch_size": 8}, "integrated_gradients": {"steps": 4}}


def _configs():
    text = {"vocab_size": 50, "hidden_size": DIM, "intermediate_size": 2 * DIM, "num_hidden_layers": 1,
            "num_attention_heads": HEADS, "max_position_embeddings": T, "bos_token_id": 0, "eos_token_id": 49,
            "pad_token_id": 1}
    vision = {"image_size": SIZE, "patch_size": PATCH, "hidden_size": DIM, "intermediate_size": 2 * DIM,
              "num_hidden_layers": DEPTH, "num_attention_heads": HEADS, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
    return text, vision


def clip(attn: str = "eager"):
    torch.manual_seed(0)
    text, vision = _configs()
    m = _randomise(transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJ, attn_implementation=attn)))
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    return m.eval()


def ids():
    t = torch.randint(2, 49, (K, T), generator=torch.Generator().manual_seed(5))
    t[:, -1] = 49  # the end-of-text token, where CLIP's text tower pools
    return t


class TwinHead(torch.nn.Module):
    """exp(s) · normalize(P h) · Tᵀ on the CLS token, written here (``const_norm``: the norm a constant)."""

    def __init__(self, P, text, scale, const_norm=False):
        super().__init__()
        self.P, self.text, self.scale, self.const_norm = P.detach().clone(), text.detach().clone(), scale, const_norm

    def forward(self, h):
        e = F.linear(h, self.P)
        n = e.norm(dim=-1, keepdim=True)
        return e / (n.detach() if self.const_norm else n) @ self.text.t() * self.scale


def timm_twin(m, head: torch.nn.Module | None, num_classes: int):
    """timm's ViT with CLIP's vision tower: class token, norm_pre, final norm (post_layernorm), CLS read-out."""
    tm = timm.models.vision_transformer.VisionTransformer(
        img_size=SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2, num_classes=0,
        global_pool="token", class_token=True, pre_norm=True, final_norm=True).eval()
    vm = m.vision_model
    emb = vm.embeddings
    sd = {"pos_embed": emb.position_embedding.weight[None], "patch_embed.proj.weight": emb.patch_embedding.weight,
          "cls_token": emb.class_embedding[None, None], "norm_pre.weight": vm.pre_layrnorm.weight,
          "norm_pre.bias": vm.pre_layrnorm.bias, "norm.weight": vm.post_layernorm.weight,
          "norm.bias": vm.post_layernorm.bias}
    for i, lyr in enumerate(vm.encoder.layers):
        a, p = lyr.self_attn, f"blocks.{i}."
        sd[p + "attn.qkv.weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[p + "attn.qkv.bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        for src, dst in ((a.out_proj, "attn.proj"), (lyr.layer_norm1, "norm1"), (lyr.layer_norm2, "norm2"),
                         (lyr.mlp.fc1, "mlp.fc1"), (lyr.mlp.fc2, "mlp.fc2")):
            sd[p + dst + ".weight"], sd[p + dst + ".bias"] = src.weight, src.bias
    tm.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    tm.head, tm.num_classes = head, num_classes
    return tm


def zero_shot_twin(m, zs, const_norm=False):
    head = TwinHead(m.visual_projection.weight, zs.text_embeds, float(m.logit_scale.detach().exp()), const_norm)
    return timm_twin(m, head, K)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_and_rollout_equal_output_attentions(impl):
    m, ref = clip(impl), clip("eager")  # same weights: the eager tower's output_attentions are the truth
    zs = zero_shot(m, text_inputs=ids())
    x = image()
    with torch.no_grad():
        A = [a.double() for a in ref.vision_model(pixel_values=x, output_attentions=True).attentions]
        want_logits = ref(input_ids=ids(), pixel_values=x).logits_per_image
    assert isinstance(as_vit(zs), HFViT)
    maps = vx.attention_maps(zs, x)
    torch.testing.assert_close(maps.double(), torch.stack([a[..., 0, 1:] for a in A], 1).reshape(maps.shape),
                               rtol=1e-5, atol=1e-6)
    raw = vx.explain(zs, x, "raw_attention").patch_map.double()
    torch.testing.assert_close(raw, A[-1][..., 0, 1:].mean(1).reshape(raw.shape), rtol=1e-5, atol=1e-6)
    roll = vx.explain(zs, x, "rollout").patch_map.double()
    torch.testing.assert_close(roll, joint_attention(A)[..., 0, 1:].reshape(roll.shape), rtol=1e-5, atol=1e-6)
    tr = capture(zs, x, Needs(attn=True))
    torch.testing.assert_close(tr.logits, want_logits, rtol=1e-5, atol=1e-5)
    assert m.config._attn_implementation == impl and m.vision_model.config._attn_implementation == impl


def test_every_gradient_method_equals_the_timm_twin():
    m = clip("sdpa")
    zs = zero_shot(m, ["a", "b", "c"], text_inputs=ids())
    tm = zero_shot_twin(m, zs)
    x = image(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), zs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(zs(x), m(input_ids=ids(), pixel_values=x).logits_per_image, rtol=1e-5, atol=1e-5)
    for method in GRADIENT:
        for target in (None, [2, 1]):
            a = vx.explain(zs, x, method, target=target, **EXACT.get(method, {}))
            b = vx.explain(tm, x, method, target=target, **EXACT.get(method, {}))
            scale = float(b.patch_map.abs().max()) or 1.0
            torch.testing.assert_close(a.patch_map, b.patch_map, rtol=2e-3, atol=2e-4 * scale,
                                       msg=lambda s, m=method: f"{m}: {s}")
            assert a.target.tolist() == b.target.tolist()
            assert float(a.patch_map.abs().max()) > 0


def vision_with_projection(m):
    """A CLIPVisionModelWithProjection holding ``m``'s vision tower and projection."""
    _, vision = _configs()
    v = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**vision, projection_dim=PROJ))
    sd = {k: t for k, t in m.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    v.load_state_dict(sd, strict=True)
    return v.eval()


@pytest.mark.parametrize("tower", ["CLIPModel", "CLIPVisionModelWithProjection"])
def test_image_features_with_a_callable_target_equal_the_twin(tower):
    """The embedding head (visual_projection on the normed CLS) with a similarity target."""
    m = clip()
    feats = image_features(m if tower == "CLIPModel" else vision_with_projection(m))
    assert isinstance(as_vit(feats), HFViT)
    proj = torch.nn.Linear(DIM, PROJ, bias=False)
    proj.weight.data.copy_(m.visual_projection.weight.detach())
    tm = timm_twin(m, proj, 0)
    x = image(batch=2)
    e = torch.randn(PROJ, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(feats(x), tm(x), rtol=1e-5, atol=1e-5)
    for method in ("chefer_generic", "tam", "attn_grad_cam", "ag_cam", "attn_lrp", "saliency"):
        a = vx.explain(feats, x, method, target=similarity(e)).patch_map
        b = vx.explain(tm, x, method, target=similarity(e)).patch_map
        scale = float(b.abs().max()) or 1.0
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * scale, msg=lambda s, m=method: f"{m}: {s}")


@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_attn_lrp_holds_the_normalisation_constant(variant):
    """AttnLRP's identity rule on CLIP's L2 normalisation: the same relevance as a twin whose head divides by a
    constant norm (same values), not the plain gradient through the norm."""
    m = clip()
    zs = zero_shot(m, text_inputs=ids())
    x = image(batch=2)
    a = vx.explain(zs, x, "attn_lrp", target=1, variant=variant).patch_map
    b = vx.explain(zero_shot_twin(m, zs, const_norm=True), x, "attn_lrp", target=1, variant=variant).patch_map
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * scale)
    plain = vx.explain(zero_shot_twin(m, zs), x, "attn_lrp", target=1, variant=variant).patch_map
    assert not torch.allclose(a, plain, rtol=1e-2, atol=1e-2 * scale)


def test_refusals_name_the_reason_and_what_applies():
    m = clip()
    zs = zero_shot(m, text_inputs=ids())
    x = image(batch=1)
    with pytest.raises(UnsupportedModelError, match=r"L2-normalises.*chefer_generic"):
        vx.explain(zs, x, "chefer_lrp", target=0)
    with pytest.raises(UnsupportedModelError, match=r"ZeroShotHead, not a Linear.*ablate_heads"):
        vx.head_attribution(zs, x)
    # SigLIP without its attention-pool (MAP) head has no pooled image embedding: no read-out (test_hf_siglip_map.py
    # covers the head)
    text, vision = _configs()
    torch.manual_seed(0)
    sm = transformers.SiglipModel(transformers.SiglipConfig(
        text_config=text, vision_config={**vision, "vision_use_head": False})).eval()
    sz = image_features(sm)
    assert as_vit(sz) is sz
    with pytest.raises(UnsupportedModelError, match=r"attention-pool \(MAP\) head.*has none"):
        vx.explain(sz, x, "rollout", target=similarity(torch.ones(DIM)))


def test_logit_lens_reads_out_as_the_wrapper():
    m = clip()
    zs = zero_shot(m, text_inputs=ids())
    x = image()
    lens = vx.logit_lens(zs, x)
    torch.testing.assert_close(lens.readout[:, -1], zs(x), rtol=1e-4, atol=1e-4)


def test_drop_equals_the_tower_on_the_kept_tokens():
    """mode="drop": the tower's own modules on the kept tokens (CLS + kept patches), then the wrapper's read-out."""
    m = clip()
    zs = zero_shot(m, text_inputs=ids())
    x = image(batch=1)
    keep = [0, 5, 6, 15]
    got = vx.intervene(zs, x, keep, mode="drop", keep=True).logits
    vm = m.vision_model
    with torch.no_grad():
        h = vm.pre_layrnorm(vm.embeddings(x))[:, [0, *(1 + k for k in keep)]]
        for lyr in vm.encoder.layers:
            h = lyr(h, None)
        e = m.visual_projection(vm.post_layernorm(h[:, 0]))
        want = F.normalize(e, dim=-1) @ zs.text_embeds.t() * m.logit_scale.exp()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, zs(x))


def test_head_ablation_and_token_blocking_equal_the_twin():
    m = clip("sdpa")
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


def _state(m):
    return (
        [(x.training, tuple(x._forward_hooks), tuple(x._forward_pre_hooks), dict(x._modules), sorted(vars(x)))
         for x in m.modules()],
        [p.requires_grad for p in m.parameters()],
        m.config._attn_implementation, m.vision_model.config._attn_implementation,
    )


@pytest.mark.parametrize("method", ["rollout", "chefer_generic", "tam", "attn_lrp", "vit_cx"])
def test_left_as_found_also_after_an_error(method):
    m = clip("sdpa")
    zs = zero_shot(m, text_inputs=ids())
    m.train()
    m.vision_model.encoder.layers[0].mlp.fc1.weight.requires_grad_(False)
    before, zs_before = _state(m), sorted(vars(zs))
    x = image(batch=1)
    vx.explain(zs, x, method, target=0)
    assert _state(m) == before and sorted(vars(zs)) == zs_before
    h = m.vision_model.encoder.layers[1].mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        vx.explain(zs, x, method, target=0)
    h.remove()
    assert _state(m) == before and sorted(vars(zs)) == zs_before
    assert isinstance(m.vision_model.post_layernorm, torch.nn.LayerNorm)  # back in the tower's pooler
