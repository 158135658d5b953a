"""Callable targets (vit_explore.targets): a callable equal to the class score gives the class
target's map for every method; ``similarity`` against a float64 restatement; clear errors."""

import pytest
import timm
import torch

import vit_explore as vx
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.targets import ScoreTarget, resolve_target, similarity, target_score

C = 2  # the class explained
B = 2


def _vit(num_classes: int = 5):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=num_classes,
    ).eval()


def _x():
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def logit_c(out):
    return out[:, C]


def prob_c(out):
    return out.softmax(-1)[:, C]


# method -> (params, the callable equal to the score the method uses for target=C)
CASES = {
    "saliency": ({}, logit_c),
    "integrated_gradients": ({"steps": 3}, logit_c),
    "occlusion": ({"score": "logit"}, logit_c),
    "rise": ({"n_masks": 8, "s": 4, "batch_size": 8}, prob_c),
    "grad_cam": ({}, logit_c),
    "tam": ({"steps": 3}, logit_c),
    "ag_cam": ({}, logit_c),
    "attn_grad_cam": ({}, logit_c),
    "chefer_generic": ({}, logit_c),
    "vit_cx": ({}, prob_c),
    "attn_lrp": ({}, logit_c),
    "rollout": ({}, logit_c),  # the class-agnostic maps do not depend on the target at all
    "raw_attention": ({}, logit_c),
    "attention_flow": ({}, logit_c),
}
NEEDS_CLASS = {"chefer_lrp"}  # says so (test_methods_that_need_a_class_say_so)


def test_every_method_is_covered():
    assert set(vx.list_methods()) == set(CASES) | NEEDS_CLASS


@pytest.mark.parametrize("method", sorted(CASES))
def test_callable_equal_to_the_class_score_gives_the_class_map(method):
    model, x = _vit(), _x()
    params, fn = CASES[method]
    a = vx.explain(model, x, method, target=C, **params)
    b = vx.explain(model, x, method, target=fn, **params)
    # the same operations on the same numbers: bit-equal
    assert torch.equal(b.patch_map, a.patch_map)
    if "pixel_map" in a.extras:
        assert torch.equal(b.extras["pixel_map"], a.extras["pixel_map"])
    assert b.target.tolist() == [-1] * B and a.target.tolist() == [C] * B
    with torch.no_grad():
        want = fn(model(x))
    torch.testing.assert_close(b.extras["target_score"], want)


def test_per_image_rows_follow_the_images():
    """A callable with one reference per image (``rows``) is re-batched with the images."""
    model, x = _vit(num_classes=0), _x()
    with torch.no_grad():
        e = model(x).flip(0)  # image 0 is compared with image 1's embedding and vice versa
    ex = vx.explain(model, x, "occlusion", target=similarity(e), score="logit")
    for b in range(B):
        one = vx.explain(model, x[b : b + 1], "occlusion", target=similarity(e[b]), score="logit")
        torch.testing.assert_close(ex.patch_map[b], one.patch_map[0], rtol=1e-5, atol=1e-6)
    ig = vx.explain(model, x, "integrated_gradients", target=similarity(e), steps=3, internal_batch_size=4)
    one = vx.explain(model, x[1:], "integrated_gradients", target=similarity(e[1]), steps=3)
    torch.testing.assert_close(ig.patch_map[1], one.patch_map[0], rtol=1e-5, atol=1e-6)


def test_similarity_equals_a_float64_restatement():
    g = torch.Generator().manual_seed(2)
    out, ref = torch.randn(4, 7, generator=g), torch.randn(7, generator=g)
    o, r = out.double(), ref.double()
    want = [sum(o[i, j] * r[j] for j in range(7)) / (o[i].pow(2).sum().sqrt() * r.pow(2).sum().sqrt()) for i in range(4)]
    torch.testing.assert_close(similarity(ref)(out).double(), torch.stack(want), rtol=1e-6, atol=1e-7)
    refs = torch.randn(4, 7, generator=g)
    got = similarity(refs)(out)
    for i in range(4):
        torch.testing.assert_close(got[i], similarity(refs[i])(out[i : i + 1])[0])
    assert torch.allclose(similarity(out[1])(out[1:2]), torch.ones(1))  # itself: 1


def test_headless_backbone_saliency_is_the_gradient_of_the_similarity():
    """Saliency of a num_classes=0 ViT for similarity(e): the input gradient of cos(model(x), e),
    computed here by autograd on the model itself."""
    model, x = _vit(num_classes=0), _x()[:1]
    e = torch.randn(model.num_features, generator=torch.Generator().manual_seed(3))
    ex = vx.explain(model, x, "saliency", target=similarity(e))
    xin = x.clone().requires_grad_(True)
    s = torch.nn.functional.cosine_similarity(model(xin), e[None], dim=-1)
    (g,) = torch.autograd.grad(s.sum(), xin)
    torch.testing.assert_close(ex.extras["pixel_map"], g.abs().amax(1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(ex.extras["target_score"], s.detach(), rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # left as found


def test_headless_model_still_refuses_a_class_target():
    with pytest.raises(UnsupportedModelError, match=r"num_classes=0.*similarity"):
        vx.explain(_vit(num_classes=0), _x(), "saliency")


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda out: out[:, C : C + 1], r"one score per image, shape \(2,\), got \(2, 1\)"),
        (lambda out: out.argmax(-1), r"floating-point scores, got dtype torch.int64"),
        (lambda out: out.tolist(), r"must return a tensor of one score per image"),
        (lambda out: out[0], r"one score per image, shape \(2,\), got \(5,\)"),
        (lambda out: out[:, C] / 0.0 * torch.tensor([0.0, 1.0]), r"NaN or inf for row\(s\) \[0, 1\]"),
    ],
)
def test_wrong_callable_output_is_a_clear_error(fn, match):
    with pytest.raises(InputError, match=match):
        vx.explain(_vit(), _x(), "saliency", target=fn)


def test_methods_that_need_a_class_say_so():
    model, x = _vit(), _x()
    with pytest.raises(InputError, match=r"chefer_lrp.*one-hot.*chefer_generic"):
        vx.explain(model, x, "chefer_lrp", target=logit_c)
    with pytest.raises(InputError, match=r"vx.intervene.*class probabilities"):
        vx.intervene(model, x, [0], target=logit_c)
    with pytest.raises(InputError, match=r"score 'prob' is a softmax.*score='logit'"):
        vx.explain(model, x, "occlusion", target=logit_c)  # occlusion's default score is the probability
    with pytest.raises(InputError, match=r"score 'prob' is a softmax.*target_score='logit'"):
        vx.explain(model, x, "tam", target=logit_c, target_score="prob", steps=2)
    with pytest.raises(InputError, match=r"causal_score.*class probabilities"):
        vx.causal_score(model, x, [0], target=logit_c)


def test_similarity_input_errors():
    with pytest.raises(InputError, match="zero vector"):
        similarity(torch.zeros(4))
    with pytest.raises(InputError, match="floating-point"):
        similarity(torch.arange(4))
    with pytest.raises(InputError, match=r"\(D,\) or \(B, D\)"):
        similarity(torch.ones(2, 2, 2))
    with pytest.raises(InputError, match="dimensions"):
        similarity(torch.ones(3))(torch.ones(2, 4))
    with pytest.raises(InputError, match="image embedding"):
        similarity(torch.ones(3))(torch.ones(2, 4, 3))


def test_target_score_class_path_is_unchanged():
    g = torch.Generator().manual_seed(4)
    lg = torch.randn(3, 5, generator=g)
    t = resolve_target([1, 4, 0], lg)
    assert torch.equal(target_score(lg, t), lg[[0, 1, 2], [1, 4, 0]])
    assert torch.equal(target_score(lg, t, "prob", rows=torch.tensor([2, 2])), lg.softmax(-1)[[0, 1], [0, 0]])
    st = resolve_target(lambda o: o[:, 1] * 2, lg)
    assert isinstance(st, ScoreTarget) and torch.equal(st.values, lg[:, 1] * 2)
    assert torch.equal(st[torch.tensor([2])].values, lg[2:, 1] * 2)


@pytest.mark.parametrize("method", ["saliency", "attn_grad_cam", "attn_lrp", "occlusion"])
def test_callable_on_a_hugging_face_classifier(method):
    """The callable sees the Hugging Face model's logits (its ``.logits``), as a class target does."""
    pytest.importorskip("transformers")
    from .capture.hf_models import SIZE, hf_vit

    model = hf_vit()
    x = torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    kw = {"score": "logit"} if method == "occlusion" else {}
    a = vx.explain(model, x, method, target=C, **kw)
    b = vx.explain(model, x, method, target=logit_c, **kw)
    assert torch.equal(b.patch_map, a.patch_map)
    with torch.no_grad():
        torch.testing.assert_close(b.extras["target_score"], model(pixel_values=x).logits[:, C])
