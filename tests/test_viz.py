import numpy as np
import pytest

from vit_explore import viz
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit


def test_colormap_endpoints_and_signed_centre():
    lut = viz.colormap_lut("gray")
    assert lut[0].tolist() == [0, 0, 0] and lut[255].tolist() == [255, 255, 255] and lut[128].tolist() == [128] * 3
    out = viz.apply_colormap(np.array([[-2.0, 0.0, 2.0]]), "RdBu", signed=True)
    assert out[0, 1].tolist() == viz.colormap_lut("RdBu")[128].tolist()  # zero maps to the centre (white)
    assert out[0, 0, 2] > out[0, 0, 0] and out[0, 2, 0] > out[0, 2, 2]  # negative blue, positive red
    with pytest.raises(InputError, match="unknown colormap 'jet'"):
        viz.colormap_lut("jet")


def test_overlay_blends_by_hand():
    img = np.full((1, 2, 3), 100, dtype=np.uint8)
    heat = np.array([[0.0, 1.0]])
    out = viz.overlay(img, heat, "gray", alpha=0.5)
    assert out[0, 0].tolist() == [50, 50, 50] and out[0, 1].tolist() == [178, 178, 178]  # (100+255)/2 = 177.5


def test_uint8_roundtrip_through_preprocess():
    m = tiny_vit()
    arr = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    import timm.data
    from PIL import Image

    from vit_explore.inputs import data_config

    cfg = {**data_config(m), "crop_pct": 1.0}
    x = timm.data.create_transform(**cfg)(Image.fromarray(arr))
    back = viz.to_uint8_image(m, x)
    assert np.abs(back.astype(int) - arr.astype(int)).max() <= 1
    assert viz.grid([back, back], ["a", "b"]).shape == (2 * 32 + 14, 2 * 2 * 32, 3)
