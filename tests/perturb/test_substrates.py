"""The substrates against float64 numpy restatements; the two blurs differ where they say."""

import numpy as np
import pytest
import torch

from vit_explore.errors import InputError
from vit_explore.perturb import (
    PIXEL_MODES,
    black_substrate,
    gaussian_blur_reflect,
    rise_blur_zero_pad,
    rise_gkern,
    seeded_noise,
    substrate,
)


def _conv2d_same(img: np.ndarray, k2: np.ndarray, pad_mode: str) -> np.ndarray:
    """(C, H, W) correlated with a (k, k) kernel after padding k//2 with ``pad_mode`` (float64)."""
    r = k2.shape[0] // 2
    C, H, W = img.shape
    p = np.pad(img, ((0, 0), (r, r), (r, r)), mode=pad_mode)
    out = np.zeros((C, H, W))
    for i in range(k2.shape[0]):
        for j in range(k2.shape[1]):
            out += k2[i, j] * p[:, i : i + H, j : j + W]
    return out


def _x(seed=0, shape=(2, 3, 13, 17)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_reflect_blur_is_a_normalised_gaussian_with_reflect_padding():
    x = _x()
    t = np.arange(7) - 3
    k = np.exp(-(t**2) / (2 * 2.0**2))
    k /= k.sum()
    want = np.stack([_conv2d_same(img, np.outer(k, k), "reflect") for img in x.numpy()])
    np.testing.assert_allclose(gaussian_blur_reflect(x, 7, 2.0).numpy(), want, rtol=1e-12, atol=1e-12)


def test_rise_blur_is_rise_kernel_with_zero_padding():
    x = _x(1)
    k2 = rise_gkern(11, 5.0).double().numpy()
    want = np.stack([_conv2d_same(img, k2, "constant") for img in x.numpy()])
    np.testing.assert_allclose(rise_blur_zero_pad(x).numpy(), want, rtol=1e-12, atol=1e-12)


def test_the_two_blurs_differ_at_the_border_only_by_padding():
    """On a constant image the reflect blur returns the constant everywhere; the zero-padded
    one darkens the border (the kernel reaches past it) and keeps the interior."""
    x = torch.full((1, 1, 32, 32), 2.0, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur_reflect(x, 11, 5.0), x, rtol=0, atol=1e-12)
    z = rise_blur_zero_pad(x)
    k_sum = float(rise_gkern(11, 5.0).double().sum())
    assert abs(float(z[0, 0, 16, 16]) - 2.0 * k_sum) < 1e-6
    assert float(z[0, 0, 0, 0]) < float(z[0, 0, 16, 16]) - 0.5


def test_blur_arguments_are_checked():
    with pytest.raises(InputError, match="odd"):
        gaussian_blur_reflect(_x(), 4, 1.0)
    with pytest.raises(InputError, match="> 0"):
        gaussian_blur_reflect(_x(), 5, 0.0)


def test_pixel_substrates():
    x = _x(2).float()
    torch.testing.assert_close(substrate(x, "zero"), torch.zeros_like(x))
    m = substrate(x, "mean")
    torch.testing.assert_close(m[:, :, 5, 7], x.double().mean(dim=(2, 3)).float())
    eps = substrate(x, "noise", seed=3, sigma=0.2)
    assert torch.equal(eps, torch.randn(x.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    assert torch.equal(eps, seeded_noise(x.shape, 3, 0.2, x))
    torch.testing.assert_close(substrate(x, "blur", blur_size=5, blur_sigma=1.5), gaussian_blur_reflect(x, 5, 1.5))
    assert PIXEL_MODES == ("blur", "mean", "zero", "noise")
    with pytest.raises(InputError, match="drop"):
        substrate(x, "drop")


def test_black_is_zero_in_unit_space():
    x = _x(3).float()
    mean = torch.tensor([0.5, 0.4, 0.3]).reshape(3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.5]).reshape(3, 1, 1)
    b = black_substrate(x, mean, std)
    torch.testing.assert_close(b * std + mean, torch.zeros_like(x))
