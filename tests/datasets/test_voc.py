"""The VOC loader on a tiny VOC-layout fixture written here (no download)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vit_explore.datasets import voc
from vit_explore.errors import InputError

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]


def write_voc(root, masks: dict[str, np.ndarray], split="val"):
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    for name, m in masks.items():
        h, w = m.shape
        rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(base / "JPEGImages" / f"{name}.jpg")
        p = Image.fromarray(m.astype(np.uint8), mode="P")
        p.putpalette(PALETTE)
        p.save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(masks) + "\n")
    return root


def fixture_masks():
    a = np.zeros((20, 30), np.uint8)
    a[5:15, 5:12] = 12  # dog
    a[4, 4:13] = 255  # void border
    a[2:4, 20:24] = 15  # person (fewer pixels)
    b = np.zeros((24, 16), np.uint8)
    b[:, :] = 0
    b[10:20, 2:14] = 1  # aeroplane
    b[9, :] = 255
    return {"2007_000001": a, "2007_000002": b}


def test_loader_reads_indices_labels_and_main_class(tmp_path):
    write_voc(tmp_path, fixture_masks())
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = voc.VOCSegmentation(root, "val")
        assert len(ds) == 2
    s = ds[0]
    assert s.id == "2007_000001" and s.image.size == (30, 20) and s.mask.shape == (20, 30)
    np.testing.assert_array_equal(s.mask, fixture_masks()["2007_000001"])  # palette indices, not colours
    assert np.flatnonzero(s.labels).tolist() == [11, 14]  # dog, person (0-based), 255 and 0 ignored
    assert voc.VOC_CLASSES[s.main_class] == "dog"
    assert ds[1].main_class == 0 and (ds[1].mask == 255).sum() == 16


def test_class_mask_and_resize():
    m = fixture_masks()["2007_000001"]
    cm = voc.class_mask(m)
    assert set(np.unique(cm)) == {0, 1, 255}
    assert (cm == 1).sum() == 70 + 8 and (cm == 255).sum() == 9
    dog = voc.class_mask(m, 11)
    assert (dog == 1).sum() == 70
    r = voc.resize_mask(m, (40, 60))
    assert r.shape == (40, 60) and set(np.unique(r)) <= {0, 12, 15, 255}


def test_seed_report_preset():
    assert voc.SEED_REPORT.split == "val" and voc.SEED_REPORT.min_prob == 0.85


def test_clear_errors(tmp_path):
    with pytest.raises(InputError, match="VOCdevkit"):
        voc.VOCSegmentation(tmp_path)
    write_voc(tmp_path, fixture_masks())
    with pytest.raises(InputError, match="available splits"):
        voc.VOCSegmentation(tmp_path, "train")
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg").unlink()
    ds = voc.VOCSegmentation(tmp_path)
    with pytest.raises(InputError, match="missing"):
        ds[1]


def test_voc_bench_applies_the_protocol(tmp_path):
    """The benchmark harness on the fixture: masks scored at original resolution, 255 ignored."""
    import torch

    from vit_explore.evaluation import make_dataset, run_benchmark
    from vit_explore.testing import tiny_vit

    write_voc(tmp_path, fixture_masks())
    model = tiny_vit("vanilla", depth=1)
    ds = make_dataset("voc", model, None, voc_root=tmp_path)
    items = ds.load([0, 1])
    assert items[0].x.shape == (3, 32, 32) and items[0].gt.shape == (20, 30)
    res = run_benchmark(model, ds, ["raw_attention"], metrics=("pointing", "jaccard", "mass", "chefer_pos"),
                        baselines=("centre",), batch_size=2, min_prob=0.0)
    assert res.meta["n_images"] == 2
    assert np.isnan(res.table["raw_attention"]["chefer_pos"])  # no labels in the model's class space
    assert 0 <= res.table["baseline:centre"]["mass"] <= 1
    with pytest.warns(UserWarning, match="no image passed min_prob=0.999"):
        res2 = run_benchmark(model, ds, ["raw_attention"], metrics=("pointing",), baselines=(), min_prob=0.999)
    assert res2.meta["n_skipped"] == 2 and res2.meta["n_images"] == 0
    del torch
