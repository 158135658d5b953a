"""capture/chunks.py: images per forward pass of the many-image explainers on the CPU."""

import pytest
import timm
import torch

import vit_explore as vx
from vit_explore.capture.adapters import inspect_vit
from vit_explore.capture.chunks import CPU_BUDGET_BYTES, check_batch_size, cpu_batch_size, model_batch_size, token_width
from vit_explore.capture.classifier import inspect_classifier
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit

from ..conftest import input_for

CPU, META = torch.device("cpu"), torch.device("meta")


def test_pass_size_from_the_mlp_activations():
    # ViT-B/16 at 224: 197 tokens x 3072 hidden x 4 bytes = 2.42 MB an image -> 6 in 16 MiB
    assert cpu_batch_size(197, 768, 4, CPU, 50) == CPU_BUDGET_BYTES // (197 * 3072 * 4) == 6
    assert cpu_batch_size(197, 384, 4, CPU, 50) == 13  # ViT-S/16
    assert cpu_batch_size(197, 768, 8, CPU, 50) == 3  # float64 doubles the bytes
    assert cpu_batch_size(5, 8, 4, CPU, 50) == 50  # a toy model: the explainer's default caps it
    assert cpu_batch_size(4097, 4096, 4, CPU, 50) == 1  # never below one image
    assert cpu_batch_size(197, 768, 4, META, 50) == 50  # not the CPU: the default
    assert cpu_batch_size(197, None, 4, CPU, 64) == 64  # width unknown: the default


def test_token_width_of_timm_vits_and_none_without_attention():
    for arch, width in (("vit_tiny_patch16_224", 192), ("deit_small_patch16_224", 384)):
        model = timm.create_model(arch, pretrained=False, depth=1)
        assert token_width(inspect_vit(model).attns) == width
    assert token_width(()) is None


def test_occlusion_default_pass_size_changes_nothing():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=2, seed=4)
    auto = vx.explain(model, x, "occlusion", target=1, score="logit").patch_map
    for bs in (1, 64):
        torch.testing.assert_close(
            auto, vx.explain(model, x, "occlusion", target=1, score="logit", batch_size=bs).patch_map,
            rtol=1e-5, atol=1e-5,
        )


def test_model_batch_size_and_the_check():
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1)
    x = torch.zeros(1, 3, 224, 224)
    assert model_batch_size(inspect_vit(vit), (14, 14), x, 50) == cpu_batch_size(197, 384, 4, CPU, 50) == 13
    cnn = timm.create_model("resnet18", pretrained=False)
    assert model_batch_size(inspect_classifier(cnn), (7, 7), x, 64) == 64  # no tokens known: the default
    for bad in (0, -1, True, 2.5, "8"):
        with pytest.raises(InputError, match="batch_size must be a positive int or None"):
            check_batch_size(bad)
    check_batch_size(None)
    check_batch_size(3)


def test_rise_default_pass_size_is_the_cpu_rule():
    """RISE with batch_size=None runs its masked images in passes of the CPU rule (ViT-S/16: 13,
    a pass of one image's masks per chunk), and gives the map of the reference's 100 up to rounding."""
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1).eval()
    x = input_for(vit, batch=1, seed=2)
    sizes: list[int] = []
    handle = vit.patch_embed.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    try:
        auto = vx.explain(vit, x, "rise", target=3, n_masks=30, seed=1)
    finally:
        handle.remove()
    assert sizes == [1, 13, 13, 4]  # the unmasked forward, then 30 masks in passes of 13
    ref = vx.explain(vit, x, "rise", target=3, n_masks=30, seed=1, batch_size=100)
    torch.testing.assert_close(auto.extras["pixel_map"], ref.extras["pixel_map"], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="batch_size must be a positive int or None"):
        vx.explain(vit, x, "rise", target=3, n_masks=30, batch_size=0)
