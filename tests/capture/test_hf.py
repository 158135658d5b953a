"""Hugging Face ViT / DeiT / DINOv2 classifiers (capture/hf.py): attention against the model's own
``output_attentions``, every method against a timm twin with converted weights, interventions,
hygiene. Random weights, small configs; nothing is downloaded."""

import subprocess
import sys

import pytest
import torch

import vit_explore as vx
from vit_explore.capture import Needs, capture, inspect_vit
from vit_explore.capture.hf import HFAttentionAdapter, as_vit
from vit_explore.errors import InputError, UnsupportedModelError
from vit_explore.explainers.rollout import joint_attention

from ..conftest import boom
from .hf_models import hf_deit, hf_dinov2, hf_vit, image, timm_twin, transformers

MAKERS = {
    "vit": hf_vit, "deit": lambda **k: hf_deit(False, **k), "deit_teacher": hf_deit, "dinov2": hf_dinov2,
}


def readout64(name: str, a: torch.Tensor, T: int) -> torch.Tensor:
    """Read-out row of (..., N, N), float64, restated: CLS; CLS+dist mean; DINOv2: 0.5 CLS + 0.5 mean patches."""
    if name == "deit_teacher":
        return 0.5 * (a[..., 0, :] + a[..., 1, :])
    if name == "dinov2":
        return 0.5 * (a[..., 0, :] + a[..., T:, :].mean(-2))
    return a[..., 0, :]


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_and_rollout_equal_output_attentions(name, impl):
    m = MAKERS[name](attn=impl)
    ref = MAKERS[name](attn="eager")  # same weights (same seeds): its output_attentions are the truth
    x = image()
    with torch.no_grad():
        out = ref(pixel_values=x, output_attentions=True)
    A = [a.double() for a in out.attentions]
    T = 2 if name.startswith("deit") else 1
    maps = vx.attention_maps(m, x)  # (B, L, H, gh, gw)
    want = torch.stack([readout64(name, a, T)[..., T:] for a in A], 1).reshape(maps.shape)
    torch.testing.assert_close(maps.double(), want, rtol=1e-5, atol=1e-6)
    tr = capture(m, x, Needs(attn=True))
    torch.testing.assert_close(tr.logits, out.logits, rtol=1e-5, atol=1e-5)
    roll = vx.explain(m, x, "rollout").patch_map.double()
    J = joint_attention(A)
    torch.testing.assert_close(roll, readout64(name, J, T)[..., T:].reshape(roll.shape), rtol=1e-5, atol=1e-6)
    assert m.config._attn_implementation == impl  # the model's setting is untouched


def test_adapter_and_layout():
    v = as_vit(hf_deit())
    info = inspect_vit(v)
    assert info.adapters == (HFAttentionAdapter,) * 2 and info.readout == "cls_dist" and info.num_prefix == 2
    assert inspect_vit(as_vit(hf_dinov2())).readout == "cls_avg"
    assert inspect_vit(as_vit(hf_vit())).patch_size == (8, 8)


@pytest.mark.parametrize("name", ["vit", "deit_teacher"])
def test_every_method_agrees_with_the_timm_twin(name):
    hf = MAKERS[name](attn="sdpa")
    tm = timm_twin(hf)
    x = image(batch=2)
    for method in vx.list_methods():
        a = vx.explain(hf, x, method).patch_map
        b = vx.explain(tm, x, method).patch_map
        scale = float(b.abs().max()) or 1.0
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * scale, msg=lambda s, m=method: f"{m}: {s}")


@pytest.mark.parametrize("name", ["vit", "deit_teacher"])
def test_interventions_agree_with_the_timm_twin(name):
    hf = MAKERS[name]()
    tm = timm_twin(hf)
    x = image(batch=1)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 0:2] = True
    for mode in ("blur", "mean", "zero", "noise", "drop"):
        a, b = vx.intervene(hf, x, region, mode=mode), vx.intervene(tm, x, region, mode=mode)
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.causal_score, b.causal_score, rtol=1e-4, atol=1e-5)
    ca, cb = vx.counterfactual(hf, x, order_by="rollout"), vx.counterfactual(tm, x, order_by="rollout")
    assert ca.patches.tolist() == cb.patches.tolist()
    # the context managers act on the Hugging Face model's own forward
    with vx.ablate_heads(hf, {0: [1, 2], -1: 0}), vx.ablate_heads(tm, {0: [1, 2], -1: 0}):
        torch.testing.assert_close(hf(pixel_values=x).logits, tm(x), rtol=1e-4, atol=1e-4)
    with vx.block_tokens(hf, [3, 5], layers=[1]), vx.block_tokens(tm, [3, 5], layers=[1]):
        blocked = hf(pixel_values=x).logits
        torch.testing.assert_close(blocked, tm(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(blocked, hf(pixel_values=x).logits)


def test_drop_on_dinov2_averages_the_kept_patches():
    m = hf_dinov2()
    x = image(batch=1)
    keep = [0, 5, 6, 15]
    got = vx.intervene(m, x, keep, mode="drop", keep=True).logits
    # the model's own function on the kept tokens: embeddings, then the encoder on the sub-sequence
    with torch.no_grad():
        emb = m.dinov2.embeddings(x)
        h = torch.cat([emb[:, :1], emb[:, [1 + k for k in keep]]], 1)
        for lyr in m.dinov2.encoder.layer:
            h = lyr(h)
        h = m.dinov2.layernorm(h)
        want = m.classifier(torch.cat([h[:, 0], h[:, 1:].mean(1)], 1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _state(m):
    return (
        [(x.training, tuple(x._forward_hooks), tuple(x._forward_pre_hooks), dict(x._modules)) for x in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [lyr.attention.__dict__.get("config") for lyr in m.vit.layers],
        m.config._attn_implementation,
    )


@pytest.mark.parametrize("method", ["rollout", "ag_cam", "attn_lrp", "chefer_lrp", "tam", "saliency"])
def test_model_left_as_found_also_after_an_error(method):
    m = hf_vit(attn="sdpa")
    m.train()
    m.vit.layers[0].mlp.fc1.weight.requires_grad_(False)
    before = _state(m)
    x = image()
    vx.explain(m, x, method)
    assert _state(m) == before
    h = m.vit.layers[1].attention.q_proj.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        vx.explain(m, x, method)
    h.remove()
    assert _state(m) == before
    assert all(lyr.attention.config is m.config for lyr in m.vit.layers)


def test_dinov2_every_method_or_the_specific_error():
    m = hf_dinov2(attn="sdpa")
    x = image()
    for method in vx.list_methods():
        if method == "chefer_lrp":
            with pytest.raises(UnsupportedModelError, match="concat.*attn_lrp or chefer_generic"):
                vx.explain(m, x, method)
            continue
        pm = vx.explain(m, x, method).patch_map
        assert pm.shape == (2, 4, 4) and bool(torch.isfinite(pm).all()), method


def test_unsupported_hf_model_says_what_applies():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(num_labels=3, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    with pytest.raises(UnsupportedModelError, match="saliency"):
        vx.explain(transformers.ConvNextForImageClassification(cfg), torch.randn(1, 3, 32, 32), "rollout")


def test_class_names_from_id2label():
    m = hf_vit()
    m.config.id2label = {i: f"label {i}" for i in range(5)}
    assert vx.class_names(m) == [f"label {i}" for i in range(5)]
    assert vx.class_names(as_vit(m)) == [f"label {i}" for i in range(5)]


def test_core_import_does_not_import_transformers():
    code = "import sys, vit_explore; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preprocess_from_config_and_processor_defaults():
    import numpy as np
    from PIL import Image

    m = hf_vit()
    im = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    got = vx.preprocess(m, im)
    # ViTImageProcessor's defaults, restated: bilinear resize to config.image_size, /255, mean 0.5, std 0.5
    ref = np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR), dtype=np.float64) / 255.0
    want = torch.from_numpy((ref - 0.5) / 0.5).permute(2, 0, 1)[None]
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    ex = vx.explain(m, im, "rollout")
    assert ex.extras["preprocessing"] == "defaults of ViTImageProcessorPil sized from config.image_size"
    torch.testing.assert_close(ex.patch_map, vx.explain(m, got, "rollout").patch_map)
    assert "preprocessing" not in vx.explain(m, got, "rollout").extras


def test_preprocess_with_a_processor():
    import numpy as np
    from PIL import Image

    transformers = pytest.importorskip("transformers")
    m = hf_vit()
    proc = transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.2, 0.3, 0.4],
                                             image_std=[0.5, 0.6, 0.7])
    im = np.random.default_rng(1).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    x = vx.preprocess(m, im, processor=proc)
    ref = np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR), dtype=np.float64) / 255.0
    want = (ref - [0.2, 0.3, 0.4]) / [0.5, 0.6, 0.7]
    torch.testing.assert_close(x.double(), torch.from_numpy(want).permute(2, 0, 1)[None], rtol=0, atol=1e-5)
    assert vx.explain(m, im, "rollout", processor=proc).extras["preprocessing"] == "processor: ViTImageProcessorPil"
    with pytest.raises(InputError, match="Hugging Face models only"):
        vx.preprocess(vx.load_model("toy-shapes"), im, processor=proc)


def test_load_model_from_a_save_pretrained_folder(tmp_path):
    m = hf_deit()
    m.config.id2label = {i: f"kind {i}" for i in range(5)}
    m.config.label2id = {v: k for k, v in m.config.id2label.items()}
    m.save_pretrained(tmp_path / "saved")
    for spec in (str(tmp_path / "saved"), "hf:" + str(tmp_path / "saved")):
        got = vx.load_model(spec)
        assert type(got).__name__ == "DeiTForImageClassificationWithTeacher" and not got.training
        x = image()
        torch.testing.assert_close(got(pixel_values=x).logits, m(pixel_values=x).logits)
        assert vx.class_names(got) == [f"kind {i}" for i in range(5)]


def test_load_model_offline_names_the_cache(tmp_path):
    code = (
        "import vit_explore as vx\nfrom vit_explore.errors import WeightsError\n"
        "try:\n    vx.load_model('hf:someone/not-cached-vit')\n"
        "except WeightsError as e:\n    print(str(e))\nelse:\n    raise SystemExit('no error')\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert str(tmp_path / "hub") in out and "someone/not-cached-vit" in out and "HF_HUB_OFFLINE=1" in out


def test_block_parts_are_called_as_in_timm():
    """``blocks.i.mlp``, ``attn.q_norm`` / ``k_norm`` and ``ls1`` / ``ls2`` run in an unfused pass (Chefer
    LRP records them): the MLP's output is the layer's own ``mlp`` of ``norm2``'s output, q and k are
    the layer's ``q_proj`` / ``k_proj`` of ``norm1``'s output, split into heads."""
    m = hf_vit(attn="sdpa")
    names = ("blocks.1.norm1", "blocks.1.norm2", "blocks.1.mlp", "blocks.1.attn.q_norm", "blocks.1.attn.k_norm",
             "blocks.1.ls1", "blocks.1.ls2")
    tr = capture(m, image(), Needs(attn=True, activations=names))
    a, lyr = tr.activations, m.vit.layers[1]
    heads = m.config.num_attention_heads
    with torch.no_grad():
        torch.testing.assert_close(a["blocks.1.mlp"], lyr.mlp(a["blocks.1.norm2"]))
        torch.testing.assert_close(a["blocks.1.ls2"], a["blocks.1.mlp"])
        for proj, name in ((lyr.attention.q_proj, "q_norm"), (lyr.attention.k_proj, "k_norm")):
            y = proj(a["blocks.1.norm1"])
            want = y.reshape(*y.shape[:2], heads, -1).transpose(1, 2)
            torch.testing.assert_close(a[f"blocks.1.attn.{name}"], want)
        assert a["blocks.1.ls1"].shape == a["blocks.1.mlp"].shape
    assert type(lyr.mlp).__name__ == "ViTMLP"  # the model's own module is back


def test_a_swiglu_dinov2_gets_a_clear_error():
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, num_labels=3, use_swiglu_ffn=True)
    model = transformers.Dinov2ForImageClassification(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="SwiGLU"):
        vx.explain(model, torch.randn(1, 3, 16, 16), "rollout")
