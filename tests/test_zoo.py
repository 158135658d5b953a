import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models.vision_transformer import Attention

from vit_explore import zoo
from vit_explore.datasets import CLASS_NAMES, make_preset, to_tensor
from vit_explore.errors import InputError, UnsupportedModelError, WeightsError
from vit_explore.zoo import class_names, load_model, save_model

SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 3}


@pytest.fixture(scope="module")
def shifted():
    return make_preset("shapes-shifted", 200, seed=12345)


def _accuracy(model, images, labels):
    with torch.no_grad():
        pred = model(to_tensor(images)).argmax(-1).numpy()
    return float((pred == labels).mean()), pred


@pytest.mark.parametrize("name", zoo.EMBEDDED_MODELS)
def test_embedded_model_loads_offline(name):
    model = load_model(name)
    assert not model.training
    assert class_names(model) == list(CLASS_NAMES)
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 96, 96) and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bilinear"
    assert model.global_pool == "token" and model.cls_token is not None
    assert model.patch_embed.grid_size == (12, 12)
    assert all(isinstance(b.attn, Attention) for b in model.blocks)
    untrained = load_model(name, pretrained=False)
    assert class_names(untrained) == list(CLASS_NAMES)


def test_clean_model_accuracy(shifted):
    # model card: 98.3% on 2,000 test images; this fixed 200-image sample gives 97.5%
    model = load_model("toy-shapes")
    plain = make_preset("shapes", 200, seed=12345)
    acc, _ = _accuracy(model, plain.images, plain.labels)
    assert acc >= 0.96
    acc_shift, pred = _accuracy(model, shifted.images, shifted.labels)
    assert acc_shift >= 0.96
    _, pred_nocue = _accuracy(model, shifted.without_cue().images, shifted.labels)
    assert (pred != pred_nocue).mean() <= 0.02


def test_spurious_model_uses_the_cue(shifted):
    # model card: 95.3% correlated (the tag agrees on 94.75% of those 2,000 images),
    # 29.5% shifted; on this sample the tag agrees on 93.5% and the model scores 93.0%
    model = load_model("toy-shapes-spurious")
    corr = make_preset("shapes-spurious", 200, seed=12345)
    acc_corr, _ = _accuracy(model, corr.images, corr.labels)
    acc_shift, pred = _accuracy(model, shifted.images, shifted.labels)
    _, pred_nocue = _accuracy(model, shifted.without_cue().images, shifted.labels)
    assert acc_corr >= 0.92 and acc_corr >= corr.cue_agrees.mean() - 0.01
    assert acc_shift <= acc_corr - 0.3
    assert (pred != pred_nocue).mean() >= 0.4


def test_unknown_name_suggests():
    with pytest.raises(UnsupportedModelError, match="toy-shapes"):
        load_model("toy-shape")
    with pytest.raises(InputError):
        load_model(123)


def test_timm_name_without_pretrained():
    model = load_model("vit_tiny_patch16_224", pretrained=False, **SMALL)
    assert not model.training and model.num_classes == 3


def test_offline_pretrained_error_names_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="offline"):
        load_model("vit_base_patch16_224", pretrained=True)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):  # WeightsError is also a FileNotFoundError
        load_model(str(tmp_path / "nope.pth"), arch="vit_tiny_patch16_224")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        load_model(path, arch="vit_tiny_patch16_224")


def test_pth_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL).eval()
    path = tmp_path / "small.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    x = torch.randn(2, 3, 32, 32)
    kwargs = {k: v for k, v in SMALL.items() if k != "num_classes"}  # inferred from the head
    model = load_model(path, arch="vit_tiny_patch16_224", **kwargs)
    torch.testing.assert_close(model(x), src(x))
    with pytest.raises(InputError, match="arch="):
        load_model(path)
    with pytest.raises(WeightsError, match="does not fit"):
        load_model(path, arch="vit_tiny_patch16_224", **{**kwargs, "depth": 3})
    with pytest.raises(WeightsError, match="does not fit"):
        load_model(path, arch="vit_tiny_patch16_224", **{**kwargs, "embed_dim": 64})


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL).eval()
    src.pretrained_cfg = {**src.pretrained_cfg, "input_size": (3, 32, 32), "label_names": ["a", "b", "c"]}
    path = save_model(src, tmp_path / "small.safetensors", arch="vit_tiny_patch16_224", model_kwargs=SMALL)
    assert not list(tmp_path.glob("*.tmp"))
    x = torch.randn(2, 3, 32, 32)
    model = load_model(path)
    torch.testing.assert_close(model(x), src(x))
    assert class_names(model) == ["a", "b", "c"]
    assert resolve_data_config({}, model=model)["input_size"] == (3, 32, 32)
    bare = tmp_path / "bare.safetensors"
    save_file(src.state_dict(), str(bare))
    with pytest.raises(InputError, match="arch="):
        load_model(bare)
    torch.testing.assert_close(load_model(bare, arch="vit_tiny_patch16_224", **SMALL)(x), src(x))


def test_class_names_fallback():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL)
    model.pretrained_cfg = {}
    assert class_names(model) == ["class 0", "class 1", "class 2"]
