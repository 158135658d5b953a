"""vx.zero_shot on small random-weight CLIPModel / SiglipModel (no tokenizer: token ids made here):
the wrapper's logits are the model's own logits_per_image; a method on the wrapper equals the same
method on the image tower (vx.image_features) with the equivalent callable target."""

import numpy as np
import pytest
import torch

import vit_explore as vx
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.targets import similarity
from vit_explore.zero_shot import image_features, zero_shot

transformers = pytest.importorskip("transformers")

SIZE, PATCH, K, T = 32, 8, 3, 6


def _model(kind: str):
    torch.manual_seed(0)
    text = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": T, "bos_token_id": 0, "eos_token_id": 49,
            "pad_token_id": 1}
    vision = {"image_size": SIZE, "patch_size": PATCH, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4}
    if kind == "clip":
        cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        m = transformers.CLIPModel(cfg)
    else:
        cfg = transformers.SiglipConfig(text_config=text, vision_config=vision)
        m = transformers.SiglipModel(cfg)
        with torch.no_grad():
            m.logit_bias.fill_(-1.5)
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    return m.eval()


def _ids(kind: str):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, 49, (K, T), generator=g)
    ids[:, -1] = 49  # the end-of-text token, where CLIP's text tower pools
    return ids


def _x(b: int = 2):
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=["clip", "siglip"])
def kind(request):
    return request.param


def test_logits_equal_the_models_logits_per_image(kind):
    m, ids, x = _model(kind), _ids(kind), _x()
    zs = zero_shot(m, ["a", "b", "c"], text_inputs=ids)
    with torch.no_grad():
        want = m(input_ids=ids, pixel_values=x).logits_per_image
        got = zs(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert vx.class_names(zs) == ["a", "b", "c"]
    # the same from the text embeddings
    with torch.no_grad():
        emb = m.get_text_features(input_ids=ids)
    emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
    torch.testing.assert_close(zero_shot(m, text_embeddings=emb)(x).detach(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, params", [
    ("saliency", {}), ("integrated_gradients", {"steps": 3}), ("occlusion", {"score": "logit"}), ("grad_cam", {}),
    ("rise", {"n_masks": 8, "s": 2, "batch_size": 8}),
])
def test_method_on_the_wrapper_equals_the_tower_with_a_callable(kind, method, params):
    m, ids, x = _model(kind), _ids(kind), _x()
    zs = zero_shot(m, text_inputs=ids)
    c = 1
    scale = float(m.logit_scale.detach().exp())
    bias = float(m.logit_bias.detach()) if kind == "siglip" else 0.0
    sim = similarity(zs.text_embeds[c])
    a = vx.explain(zs, x, method, target=c, **params)
    if method == "rise":  # RISE weighs masks by the class probability: the softmax over the labels' logits
        text = zs.text_embeds

        def fn(e):
            return ((e / e.norm(dim=-1, keepdim=True)) @ text.T * scale + bias).softmax(-1)[:, c]
    else:
        def fn(e):
            return sim(e) * scale + bias
    b = vx.explain(image_features(m), x, method, target=fn, **params)
    torch.testing.assert_close(b.patch_map, a.patch_map, rtol=1e-4, atol=1e-5)
    want = a.logits.softmax(-1)[:, c] if method == "rise" else a.logits[:, c]
    torch.testing.assert_close(b.extras["target_score"], want, rtol=1e-5, atol=1e-5)
    assert a.layout.grid == (SIZE // PATCH, SIZE // PATCH)


def test_interventions_run_on_the_wrapper(kind):
    m, ids, x = _model(kind), _ids(kind), _x(1)
    zs = zero_shot(m, text_inputs=ids)
    iv = vx.intervene(zs, x, [0, 1, 2], mode="zero", target=0)
    fed = x.clone()
    fed[..., :PATCH, : 3 * PATCH] = 0  # patches 0, 1, 2 of the 4x4 analysis grid
    with torch.no_grad():
        want = m(input_ids=ids, pixel_values=fed).logits_per_image.softmax(-1)
    torch.testing.assert_close(iv.probs, want, rtol=1e-5, atol=1e-6)


def test_model_left_as_found_and_errors():
    m = _model("clip").train()
    zs = zero_shot(m, text_inputs=_ids("clip"))
    assert all(mod.training for mod in m.modules())  # the text pass put the training flags back
    assert all(p.requires_grad for p in m.parameters())
    m.eval()
    vx.explain(zs, _x(1), "saliency", target=0)
    assert all(p.requires_grad for p in m.parameters()) and not m.training
    with pytest.raises(InputError, match="exactly one text source"):
        zero_shot(m, ["a"])
    with pytest.raises(InputError, match="2 labels for 3 texts"):
        zero_shot(m, ["a", "b"], text_inputs=_ids("clip"))
    with pytest.raises(InputError, match="input_ids"):
        zero_shot(m, text_inputs=torch.zeros(3, 4))
    with pytest.raises(UnsupportedModelError, match="CLIPModel or SiglipModel"):
        zero_shot(torch.nn.Linear(2, 2), text_inputs=_ids("clip"))
    with pytest.raises(UnsupportedModelError, match="num_classes=0.*callable"):
        vx.explain(image_features(m), _x(1), "saliency")


def test_labels_go_through_the_processor(kind):
    """labels + processor: the processor tokenises the labels (SigLIP padded to max_length)."""
    m, ids = _model(kind), _ids(kind)
    seen = {}

    def processor(text, return_tensors, padding):
        seen.update(text=text, padding=padding)
        return {"input_ids": ids}

    zs = zero_shot(m, ["x", "y", "z"], processor=processor)
    assert seen == {"text": ["x", "y", "z"], "padding": "max_length" if kind == "siglip" else True}
    torch.testing.assert_close(zs.text_embeds, zero_shot(m, text_inputs=ids).text_embeds)


def test_pil_images_use_the_processor_statistics_and_squash_for_siglip(kind):
    """A PIL image of another aspect ratio: CLIP resizes the short side and centre-crops, SigLIP
    resizes to the input size; both normalise with the model type's mean and std (restated here)."""
    from PIL import Image

    zs = zero_shot(_model(kind), text_inputs=_ids(kind))
    g = torch.Generator().manual_seed(7)
    arr = (torch.rand(40, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    x = vx.preprocess(zs, Image.fromarray(arr))
    img = Image.fromarray(arr)
    if kind == "clip":
        img = img.resize((51, 32), Image.BICUBIC).crop((10, 0, 42, 32))  # short side 32, then the centre
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    else:
        img = img.resize((32, 32), Image.BICUBIC)
        mean, std = (0.5,) * 3, (0.5,) * 3
    want = (torch.tensor(np.asarray(img), dtype=torch.float64) / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(x[0].double(), want.permute(2, 0, 1), rtol=0, atol=1e-5)


def test_image_features_of_a_vision_model_without_a_head():
    """A Dinov2Model's pooled output (its normed CLS) as the embedding; saliency of the similarity
    equals the input gradient of cos(pooler_output, e) computed here by autograd."""
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(image_size=SIZE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, mlp_ratio=2)
    m = transformers.Dinov2Model(cfg).eval()
    x = _x(1)
    e = torch.randn(32, generator=torch.Generator().manual_seed(3))
    ex = vx.explain(image_features(m), x, "saliency", target=similarity(e))
    xin = x.clone().requires_grad_(True)
    s = torch.nn.functional.cosine_similarity(m(pixel_values=xin).pooler_output, e[None], dim=-1)
    (g,) = torch.autograd.grad(s.sum(), xin)
    torch.testing.assert_close(ex.extras["pixel_map"], g.abs().amax(1), rtol=1e-4, atol=1e-7)
    assert ex.layout.grid == (SIZE // PATCH, SIZE // PATCH)


@pytest.mark.parametrize("siglip", [False, True])
def test_open_clip_model(siglip):
    """A small random open_clip CLIP (and one with SigLIP's logit bias): the wrapper's logits are
    open_clip's own ``logit_scale.exp() * img @ txt.T (+ logit_bias)`` from its forward; a method
    on it equals the image tower with the callable target."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    m = open_clip.CLIP(
        embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=PATCH, image_size=SIZE),
        text_cfg=CLIPTextCfg(context_length=T, vocab_size=50, width=32, heads=2, layers=2),
        init_logit_bias=-2.0 if siglip else None,
    ).eval()
    ids, x = _ids("clip"), _x()
    zs = zero_shot(m, ["a", "b", "c"], processor=lambda texts: ids)
    with torch.no_grad():
        img, txt, scale = m(x, ids)[:3]
        want = scale * img @ txt.T + (m.logit_bias if siglip else 0.0)
        torch.testing.assert_close(zs(x), want, rtol=1e-5, atol=1e-5)
    assert zs.features.pretrained_cfg["crop_mode"] == ("squash" if siglip else "center")
    sim = similarity(zs.text_embeds[1])
    s, b = float(m.logit_scale.detach().exp()), float(m.logit_bias.detach()) if siglip else 0.0
    a = vx.explain(zs, x, "saliency", target=1)
    t = vx.explain(image_features(m), x, "saliency", target=lambda e: sim(e) * s + b)
    torch.testing.assert_close(t.patch_map, a.patch_map, rtol=1e-4, atol=1e-5)
    assert a.layout.grid == (SIZE // PATCH, SIZE // PATCH)
    with pytest.raises(UnsupportedModelError, match="vision tower of a transformers CLIPModel.*open_clip"):
        vx.explain(zs, x, "rollout")  # the attention methods read transformers' CLIP only (capture/hf_zero_shot.py)
