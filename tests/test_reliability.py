"""Issue 20, items 4-8: gradient modes, stale caches, non-finite outputs, meta models, clear errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit_explore as vx
from vit_explore import cli, zoo
from vit_explore.errors import InputError, NonFiniteOutputError, UnsupportedModelError, WeightsError
from vit_explore.testing import tiny_vit

from .conftest import input_for

GRAD_METHODS = ["grad_cam", "attn_grad_cam", "chefer_lrp", "chefer_generic", "ag_cam", "tam", "saliency",
                "integrated_gradients", "attn_lrp"]


@pytest.fixture(scope="module")
def toy():
    return vx.load_model("toy-shapes")


@pytest.fixture(scope="module")
def tx(toy):
    return input_for(toy, batch=2, seed=3)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_gradient_methods_work_inside_no_grad_and_inference_mode(toy, tx, mode):
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    for m in GRAD_METHODS:
        ref = vx.explain(toy, tx, m)
        with ctx():
            got = vx.explain(toy, tx, m)
            assert not torch.is_grad_enabled()  # the caller's mode is back
            assert torch.is_inference_mode_enabled() == (mode == "inference_mode")
        torch.testing.assert_close(got.patch_map, ref.patch_map, msg=m)
    assert all(not p.requires_grad or p.requires_grad for p in toy.parameters())


def test_intervention_cache_sees_writes_through_data():
    model = tiny_vit("vanilla", seed=1)
    x = input_for(model, batch=1, seed=2)
    patches = [0, 1]
    before = vx.intervene(model, x, patches, "zero")
    torch.testing.assert_close(before.base_logits, model(x))
    model.head.weight.data.mul_(-1)  # .data: the parameter's version counter does not move
    after = vx.intervene(model, x, patches, "zero")
    torch.testing.assert_close(after.base_logits, model(x))  # the model's own numbers now
    assert not torch.allclose(after.base_logits, before.base_logits)


def _nan_model():
    model = tiny_vit("vanilla", seed=1)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("entry", ["explain:rollout", "explain:grad_cam", "explain:occlusion", "explain:rise",
                                   "explain:attn_lrp", "explain:vit_cx", "attention_maps", "intervene",
                                   "causal_score", "counterfactual", "capture"])
def test_non_finite_model_output_is_reported_everywhere(entry):
    model = _nan_model()
    x = input_for(model, batch=1, seed=0)
    calls = {
        "attention_maps": lambda: vx.attention_maps(model, x),
        "intervene": lambda: vx.intervene(model, x, [0], "zero"),
        "causal_score": lambda: vx.causal_score(model, x, [0]),
        "counterfactual": lambda: vx.counterfactual(model, x, order_by=torch.rand(4, 4)),
        "capture": lambda: vx.capture(model, x, vx.Needs(attn=True)),
    }
    fn = calls.get(entry) or (lambda: vx.explain(model, x, entry.split(":")[1], **(
        {"n_masks": 8} if "rise" in entry else {})))
    with pytest.raises(NonFiniteOutputError, match="output is not finite"):
        fn()


def test_huge_but_finite_pixels_give_the_output_error(toy):
    x = torch.full((1, 3, 96, 96), 3e38)
    with pytest.raises(NonFiniteOutputError):
        vx.explain(toy, x, "grad_cam")


def test_meta_device_model_is_refused():
    with torch.device("meta"):
        model = tiny_vit("vanilla")
    x = torch.randn(1, 3, *model.patch_embed.img_size)
    for fn in (lambda: vx.explain(model, x), lambda: vx.intervene(model, x, [0]), lambda: vx.attention_maps(model, x)):
        with pytest.raises(UnsupportedModelError, match="meta device"):
            fn()


def test_one_meta_weight_deep_in_the_model_is_refused():
    model = tiny_vit("vanilla")
    fc2 = model.blocks[-1].mlp.fc2
    fc2.weight = torch.nn.Parameter(torch.empty(fc2.weight.shape, device="meta"))
    x = torch.randn(1, 3, *model.patch_embed.img_size)
    with pytest.raises(UnsupportedModelError, match="meta device"):
        vx.explain(model, x)


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"layer": "2"}, "'layer' must be int"), ({"layer": 1.5}, "'layer' must be int"),
    ({"head": True}, "'head' must be int or None"),
])
def test_method_parameter_types(toy, tx, kw, pattern):
    with pytest.raises(InputError, match=pattern):
        vx.explain(toy, tx, "raw_attention", **kw)


@pytest.mark.parametrize("seed", ["abc", 2**70, 1.5, -1, True])
def test_seeds_must_be_ints_in_range(toy, tx, seed):
    with pytest.raises(InputError, match="seed"):
        vx.explain(toy, tx, "rise", n_masks=8, seed=seed)
    with pytest.raises(InputError, match="seed"):
        vx.intervene(toy, tx, [0], seed=seed)


def test_target_by_class_name(toy, tx):
    names = vx.class_names(toy)
    ex = vx.explain(toy, tx, "rollout", target=names[2])
    assert ex.target.tolist() == [2, 2]
    assert vx.intervene(toy, tx[:1], [0], target=names[1]).target.tolist() == [1]
    with pytest.raises(InputError, match=f"did you mean {names[2]!r}"):
        vx.explain(toy, tx, "rollout", target=names[2] + "x")
    bare = tiny_vit("vanilla")
    with pytest.raises(InputError, match="carries no class names"):
        vx.explain(bare, input_for(bare, 1), "rollout", target="circle")


def test_small_clear_errors(toy, tx):
    with pytest.raises(InputError, match="empty"):
        vx.preprocess(toy, Image.new("RGB", (0, 0)))
    with pytest.raises(InputError, match="flat list of 2 bools"):
        vx.intervene(toy, tx[:1], [True, False])
    with pytest.raises(InputError, match="keep must be True or False"):
        vx.intervene(toy, tx[:1], [0], keep="False")
    with pytest.raises(InputError, match="order_by map has NaN"):
        vx.counterfactual(toy, tx[:1], order_by=torch.full((12, 12), float("nan")))
    for k in (0, -2):
        with pytest.raises(InputError, match="topk must be in"):
            vx.intervene(toy, tx[:1], [0], topk=k)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_checkpoint_is_named_as_such(tmp_path):
    f = tmp_path / "w.pth"
    os.mkfifo(f)
    with pytest.raises(WeightsError, match="not a regular file"):
        vx.load_model(str(f), arch="vit_tiny_patch16_224")


def test_metadata_with_pretrained_is_a_weights_error(tmp_path):
    from safetensors.torch import load_file, save_file

    src = zoo.WEIGHTS_DIR / "toy-shapes.safetensors"
    meta = {k: v for k, v in zoo._safetensors_metadata(src).items()}
    kw = json.loads(meta["model_kwargs"])
    kw["pretrained"] = True
    meta["model_kwargs"] = json.dumps(kw)
    out = tmp_path / "m.safetensors"
    save_file(load_file(src), out, metadata=meta)
    with pytest.raises(WeightsError, match="pretrained"):
        vx.load_model(str(out))


# --------------------------------------------------------------------------- CLI


def _png(tmp_path: Path) -> Path:
    p = tmp_path / "im.png"
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(p)
    return p


def test_cli_os_errors_are_one_line(tmp_path, capsys):
    img = _png(tmp_path)
    existing = tmp_path / "afile"
    existing.write_text("x")
    rc = cli.main(["explain", str(img), "--model", "toy-shapes", "--method", "rollout", "-o", str(existing)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "error:" in err and "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_cli_read_only_output(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = cli.main(["bench", "--dataset", "shapes", "--model", "toy-shapes", "--limit", "2", "--out", str(ro)])
    finally:
        ro.chmod(0o700)
    assert rc == 1 and "Permission denied" in capsys.readouterr().err


def test_bench_checks_its_output_before_the_run(tmp_path, capsys, monkeypatch):
    from vit_explore import evaluation

    ran = []
    monkeypatch.setattr(evaluation, "run_benchmark", lambda *a, **k: ran.append(1))

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_writable_folder", full)
    rc = cli.main(["bench", "--dataset", "shapes", "--model", "toy-shapes", "--limit", "2", "--out",
                   str(tmp_path / "o")])
    assert rc == 1 and not ran and "No space left" in capsys.readouterr().err


def test_cli_loads_a_bare_pth_with_arch(tmp_path, capsys):
    import timm

    arch = "vit_tiny_patch16_224"
    ref = timm.create_model(arch, pretrained=False, num_classes=3).eval()
    ckpt = tmp_path / "w.pth"
    torch.save(ref.state_dict(), ckpt)
    img = tmp_path / "im.png"
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(img)
    assert cli.main(["explain", str(img), "--model", str(ckpt), "--method", "rollout", "-o", str(tmp_path / "a")]) == 2
    assert "arch=" in capsys.readouterr().err
    rc = cli.main(["explain", str(img), "--model", str(ckpt), "--arch", arch, "--method", "rollout",
                   "-o", str(tmp_path / "out")])
    assert rc == 0
    got = np.load(tmp_path / "out" / "im_rollout.npy")
    x = vx.preprocess(ref, Image.open(img))
    np.testing.assert_allclose(got, vx.explain(ref, x, "rollout").patch_map[0].numpy(), rtol=1e-5, atol=1e-6)
    assert "--arch" in cli.build_parser().format_help() or "bare checkpoint" in _sub_help("explain")


def _sub_help(name: str) -> str:
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    return sub.choices[name].format_help()


def test_non_finite_output_of_a_cnn_and_of_the_logit_lens_is_reported():
    import timm

    from vit_explore.errors import NonFiniteOutputError

    cnn = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        cnn.fc.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError):
        vx.explain(cnn, torch.randn(1, 3, 32, 32), "saliency")
    with pytest.raises(NonFiniteOutputError):
        vx.intervene(cnn, torch.randn(1, 3, 32, 32), [0], mode="blur")
    vit = vx.load_model("toy-shapes")
    with torch.no_grad():
        vit.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError):
        vx.logit_lens(vit, torch.randn(1, 3, 96, 96))
