import numpy as np
import pytest
from scipy.stats import chi2_contingency

from vit_explore.datasets import (
    CLASS_NAMES,
    CUE_COLORS,
    ShapesConfig,
    ShapesDataset,
    make_preset,
    make_shapes,
    patch_fraction,
)
from vit_explore.errors import InputError

K = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def sample():
    return make_shapes(300, seed=7, cue_rate=0.95)


def test_shapes_and_types(sample):
    n, s = 300, 96
    assert sample.images.shape == (n, s, s, 3) and sample.images.dtype == np.uint8
    assert sample.labels.shape == (n,) and set(np.unique(sample.labels)) == set(range(K))
    for m in (sample.object_mask, sample.cue_mask, sample.distractor_mask):
        assert m.shape == (n, s, s) and m.dtype == bool
    assert sample.class_names == CLASS_NAMES
    assert sample.patch_fraction("object").shape == (n, 12, 12)


def test_deterministic_and_prefix_stable():
    a = make_shapes(40, seed=3, cue_rate=0.9)
    b = make_shapes(40, seed=3, cue_rate=0.9)
    c = make_shapes(300, seed=3, cue_rate=0.9)
    d = make_shapes(40, seed=4, cue_rate=0.9)
    for key in ("images", "labels", "object_mask", "cue_mask", "distractor_mask", "cue_labels"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        np.testing.assert_array_equal(getattr(a, key), getattr(c, key)[:40])
    assert not np.array_equal(a.images, d.images)


def test_cue_rate_changes_only_the_tag():
    plain = make_shapes(64, seed=5, cue_rate=None)
    tagged = make_shapes(64, seed=5, cue_rate=0.95)
    np.testing.assert_array_equal(plain.labels, tagged.labels)
    np.testing.assert_array_equal(plain.object_mask, tagged.object_mask)
    outside = ~tagged.cue_mask
    np.testing.assert_array_equal(plain.images[outside], tagged.images[outside])
    assert not plain.cue_mask.any() and (plain.cue_labels == -1).all()
    np.testing.assert_array_equal(tagged.without_cue().images, plain.images)


def test_tag_pixels_carry_the_cue_colour(sample):
    rows, cols = sample.config.cue_box
    tags = sample.images[:, rows, cols]
    np.testing.assert_array_equal(tags, np.broadcast_to(CUE_COLORS[sample.cue_labels][:, None, None], tags.shape))
    assert sample.cue_mask.sum(axis=(1, 2)).tolist() == [sample.config.cue_size**2] * len(sample)
    recoloured = sample.with_cue((sample.labels + 1) % K)
    assert (recoloured.cue_labels != recoloured.labels).all()


def test_masks_are_disjoint(sample):
    assert not (sample.object_mask & sample.cue_mask).any()
    assert not (sample.object_mask & sample.distractor_mask).any()
    assert not (sample.cue_mask & sample.distractor_mask).any()


def test_object_area_matches_geometry():
    data = make_shapes(400, seed=11, config=ShapesConfig(max_distractors=0))
    area = data.object_mask.sum(axis=(1, 2))
    r = data.radii.astype(np.float64)
    factor = {
        "circle": np.pi,
        "square": 1.64**2,
        "triangle": 3 * np.sqrt(3) * 0.55**2,
        "plus": 2 * 2 * 0.64 - 0.64**2,
        "ring": np.pi * (1 - 0.5**2),
    }
    for k, name in enumerate(CLASS_NAMES):
        sel = data.labels == k
        expected = factor[name] * r[sel] ** 2
        np.testing.assert_allclose(area[sel], expected, rtol=0.05, err_msg=name)
    circles = data.labels == CLASS_NAMES.index("circle")
    assert np.abs(area[circles] / (np.pi * r[circles] ** 2) - 1).mean() < 0.01
    assert not data.distractor_mask.any()


def test_class_object_dominates_distractors(sample):
    obj_area = sample.object_mask.sum(axis=(1, 2))
    dis_area = sample.distractor_mask.sum(axis=(1, 2))
    per_distractor = dis_area / np.maximum(sample.n_distractors, 1)
    assert obj_area.min() > 3 * per_distractor.max()
    assert (sample.n_distractors > 0).mean() > 0.5


def test_patch_grid_consistent_with_pixels(sample):
    p = sample.config.patch_size
    for which in ("object", "cue", "distractors"):
        frac = sample.patch_fraction(which)
        np.testing.assert_allclose(frac.sum(axis=(1, 2)) * p * p, sample.mask(which).sum(axis=(1, 2)))
        np.testing.assert_array_equal(sample.patch_mask(which), frac >= 0.5)
        np.testing.assert_array_equal(sample.patch_mask(which, threshold=0), frac > 0)
    # a 16-pixel grid is the sum of 2x2 blocks of the 8-pixel one
    f8, f16 = sample.patch_fraction("object"), sample.patch_fraction("object", 16)
    np.testing.assert_allclose(f16, f8.reshape(-1, 6, 2, 6, 2).mean(axis=(2, 4)), atol=1e-6)
    # the tag (8x8 at offset 2) covers four patches
    cue = sample.patch_fraction("cue")[0]
    np.testing.assert_allclose(cue[:2, :2], [[36 / 64, 12 / 64], [12 / 64, 4 / 64]])
    with pytest.raises(InputError):
        patch_fraction(sample.object_mask, 7)


def test_cue_agreement_rate_matches_request():
    data = make_shapes(3000, seed=21, cue_rate=0.9)
    assert abs(data.cue_agrees.mean() - 0.9) < 0.02
    wrong = data.cue_labels[~data.cue_agrees]
    assert len(np.unique(wrong)) == K


def test_shifted_set_is_independent():
    data = make_preset("shapes-shifted", 3000, seed=22)
    assert abs(data.cue_agrees.mean() - 1 / K) < 0.03
    table = np.zeros((K, K))
    np.add.at(table, (data.labels, data.cue_labels), 1)
    assert chi2_contingency(table).pvalue > 0.01
    assert make_preset("shapes", 10).has_cue.sum() == 0


def test_bad_arguments():
    with pytest.raises(InputError):
        make_shapes(4, cue_rate=1.5)
    with pytest.raises(InputError):
        ShapesConfig(image_size=100, patch_size=8)
    with pytest.raises(InputError):
        make_preset("nope")


def test_torch_dataset(sample):
    ds = ShapesDataset(sample.subset(slice(0, 5)))
    x, y = ds[2]
    assert tuple(x.shape) == (3, 96, 96) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int(y) == sample.labels[2] and len(ds) == 5
