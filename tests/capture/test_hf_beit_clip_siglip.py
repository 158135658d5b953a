"""Hugging Face BEiT (relative position bias, layer scales, mean pooling with its own layernorm), CLIP and
SigLIP classifiers (capture/hf.py, hf_parts.py): attention against the model's own ``output_attentions``,
the scores against the model's own relative position bias, every method and intervention against a timm
twin with converted weights, token drop on BEiT against the model's own layers on the kept tokens."""

import pytest
import torch

import vit_explore as vx
from vit_explore.capture import Needs, capture, inspect_vit
from vit_explore.capture.hf import HFAttentionAdapter, HFRelBiasAdapter, as_vit
from vit_explore.explainers.rollout import joint_attention

from ..conftest import boom
from .hf_models import (
    PATCH,
    SIZE,
    hf_beit,
    hf_clip,
    hf_siglip,
    image,
    timm_beit_twin,
    timm_encoder_twin,
)

MAKERS = {
    "beit": hf_beit, "beit_shared": lambda **k: hf_beit(shared=True, **k),
    "beit_cls": lambda **k: hf_beit(mean_pool=False, **k), "clip": hf_clip, "siglip": hf_siglip,
}
#: leading non-patch tokens; read-out: mean of the patch rows, or (BEiT without mean pooling) the CLS row
PREFIX = {"beit": 1, "beit_shared": 1, "beit_cls": 1, "clip": 1, "siglip": 0}
TWINS = {"beit": timm_beit_twin, "clip": timm_encoder_twin, "siglip": timm_encoder_twin}


def readout64(name: str, a: torch.Tensor) -> torch.Tensor:
    T = PREFIX[name]
    return a[..., 0, :] if name == "beit_cls" else a[..., T:, :].mean(-2)


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_and_rollout_equal_output_attentions(name, impl):
    m = MAKERS[name](attn=impl)
    ref = MAKERS[name](attn="eager")  # same weights: its output_attentions are the truth
    x = image()
    with torch.no_grad():
        out = ref(pixel_values=x, output_attentions=True)
    A = [a.double() for a in out.attentions]
    T = PREFIX[name]
    maps = vx.attention_maps(m, x)
    want = torch.stack([readout64(name, a)[..., T:] for a in A], 1).reshape(maps.shape)
    torch.testing.assert_close(maps.double(), want, rtol=1e-5, atol=1e-6)
    tr = capture(m, x, Needs(attn=True, scores=True))
    torch.testing.assert_close(tr.logits, out.logits, rtol=1e-5, atol=1e-5)
    for i, a in enumerate(A):  # the scores are what the softmax saw
        torch.testing.assert_close(tr.scores_at(i).double().softmax(-1), a, rtol=1e-5, atol=1e-6)
    roll = vx.explain(m, x, "rollout").patch_map.double()
    torch.testing.assert_close(roll, readout64(name, joint_attention(A))[..., T:].reshape(roll.shape),
                               rtol=1e-5, atol=1e-6)
    assert m.config._attn_implementation == impl


@pytest.mark.parametrize("shared", [False, True])
def test_beit_scores_hold_the_models_relative_position_bias(shared):
    """scores = (q kᵀ)·scaling + B, B from the model's own bias module (per layer or shared), float64."""
    m = hf_beit(attn="sdpa", shared=shared)
    x = image()
    names = tuple(f"blocks.{i}.attn.{n}" for i in range(2) for n in ("q_norm", "k_norm"))
    tr = capture(m, x, Needs(attn=True, scores=True, activations=names))
    win, N = (SIZE // PATCH,) * 2, (SIZE // PATCH) ** 2 + 1
    for i, lyr in enumerate(m.beit.layers):
        mod = m.beit.shared_position_bias if shared else lyr.relative_position_bias
        with torch.no_grad():
            B = mod(win, False, dim_size=N).double()  # (1, H, N, N)
        q, k = tr.activations[f"blocks.{i}.attn.q_norm"].double(), tr.activations[f"blocks.{i}.attn.k_norm"].double()
        want = q @ k.transpose(-1, -2) * lyr.attention.scaling + B
        torch.testing.assert_close(tr.scores_at(i).double(), want, rtol=1e-5, atol=1e-5)
        assert B.abs().max() > 0.1  # the bias is there, not zeros


def test_adapters_and_layouts():
    info = inspect_vit(as_vit(hf_beit()))
    assert info.adapters == (HFRelBiasAdapter,) * 2 and info.readout == "avg" and info.num_prefix == 1
    assert inspect_vit(as_vit(hf_beit(mean_pool=False))).readout == "cls"
    info = inspect_vit(as_vit(hf_clip()))
    assert info.adapters == (HFAttentionAdapter,) * 2 and info.readout == "avg" and info.num_prefix == 1
    info = inspect_vit(as_vit(hf_siglip()))
    assert info.readout == "avg" and info.num_prefix == 0 and info.patch_size == (PATCH, PATCH)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_every_method_agrees_with_the_timm_twin(name):
    hf = MAKERS[name](attn="sdpa")
    tm = TWINS[name](hf)
    x = image(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, tm(x), rtol=1e-5, atol=1e-5)
    # vit_cx (slow: one forward per cluster) on BEiT, the family whose scores differ most from timm's ViT
    methods = [m for m in vx.list_methods() if m != "vit_cx" or name == "beit"]
    for method in methods:
        a = vx.explain(hf, x, method).patch_map
        b = vx.explain(tm, x, method).patch_map
        scale = float(b.abs().max()) or 1.0
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * scale, msg=lambda s, m=method: f"{m}: {s}")


@pytest.mark.parametrize("name", sorted(TWINS))
def test_interventions_agree_with_the_timm_twin(name):
    hf = MAKERS[name]()
    tm = TWINS[name](hf)
    x = image(batch=1)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 0:2] = True
    # drop on BEiT: timm's Beit has no patch_drop (see test_drop_on_beit_keeps_the_bias_of_the_kept_tokens)
    for mode in ("blur", "mean", "zero", "noise") + (() if name == "beit" else ("drop",)):
        a, b = vx.intervene(hf, x, region, mode=mode), vx.intervene(tm, x, region, mode=mode)
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    ca, cb = vx.counterfactual(hf, x, order_by="rollout"), vx.counterfactual(tm, x, order_by="rollout")
    assert ca.patches.tolist() == cb.patches.tolist()
    with vx.ablate_heads(hf, {0: [1, 2], -1: 0}), vx.ablate_heads(tm, {0: [1, 2], -1: 0}):
        torch.testing.assert_close(hf(pixel_values=x).logits, tm(x), rtol=1e-4, atol=1e-4)
    with vx.block_tokens(hf, [3, 5], layers=[1]), vx.block_tokens(tm, [3, 5], layers=[1]):
        blocked = hf(pixel_values=x).logits
        torch.testing.assert_close(blocked, tm(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(blocked, hf(pixel_values=x).logits)


@pytest.mark.parametrize("shared", [False, True])
def test_drop_on_beit_keeps_the_bias_of_the_kept_tokens(shared):
    """The model's own function on the kept tokens: its embeddings, then each layer's own modules on the
    sub-sequence, with the rows and columns of the bias (the model's own bias module) of the kept positions."""
    m = hf_beit(shared=shared)
    x = image(batch=1)
    keep = [0, 5, 6, 15]
    got = vx.intervene(m, x, keep, mode="drop", keep=True).logits
    rows = torch.tensor([0, *(1 + k for k in keep)])
    win, N = (SIZE // PATCH,) * 2, (SIZE // PATCH) ** 2 + 1
    with torch.no_grad():
        h = m.beit.embeddings(x)[:, rows]
        for lyr in m.beit.layers:
            mod = m.beit.shared_position_bias if shared else lyr.relative_position_bias
            B = mod(win, False, dim_size=N)[:, :, rows][:, :, :, rows]
            a, _ = lyr.attention(lyr.layernorm_before(h), attention_mask=B)
            h = h + lyr.lambda_1 * a
            h = h + lyr.lambda_2 * lyr.mlp(lyr.layernorm_after(h))
        want = m.classifier(m.beit.pooler.layernorm(h[:, 1:].mean(1)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    full = vx.intervene(m, x, list(range(16)), mode="drop", keep=True).logits  # keeping all: the model's logits
    torch.testing.assert_close(full, m(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def _state(m):
    return (
        [(x.training, tuple(x._forward_hooks), tuple(x._forward_pre_hooks), dict(x._modules), sorted(vars(x)))
         for x in m.modules()],
        [p.requires_grad for p in m.parameters()],
        m.config._attn_implementation,
    )


@pytest.mark.parametrize("method", ["rollout", "chefer_lrp", "attn_lrp", "saliency"])
def test_beit_left_as_found_also_after_an_error(method):
    m = hf_beit(attn="sdpa")
    m.train()
    m.beit.layers[0].mlp.fc1.weight.requires_grad_(False)
    before = _state(m)
    x = image()
    vx.explain(m, x, method)
    assert _state(m) == before
    h = m.beit.layers[1].mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        vx.explain(m, x, method)
    h.remove()
    assert _state(m) == before
    assert all(isinstance(lyr.lambda_1, torch.nn.Parameter) for lyr in m.beit.layers)  # the scales are back


def test_logit_lens_reads_out_as_the_model():
    """The residual view's read-out (forward_head) is the classifier's own: the last entry equals the logits."""
    for mk in (hf_beit, hf_clip, hf_siglip):
        m = mk()
        x = image()
        lens = vx.logit_lens(m, x)
        torch.testing.assert_close(lens.readout[:, -1], m(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_drop_on_beit_batches_sets_as_one_at_a_time():
    m, x = hf_beit(), image(batch=1)
    sets = torch.zeros(3, 4, 4, dtype=torch.bool)
    sets[0, 0, :2] = True
    sets[1, 2:, 1] = True
    sets[2, 3, 2:] = True  # three sets of 2 patches: one batched pass
    both = vx.intervene(m, x, sets, mode="drop").logits
    for k in range(3):
        one = vx.intervene(m, x, sets[k], mode="drop").logits
        torch.testing.assert_close(both[k : k + 1], one, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both[0], both[1])
