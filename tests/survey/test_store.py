"""The survey's explanation pass and its on-disk store: maps equal ``vx.explain``'s, every accepted
kind of data gives the same maps, an interrupted pass resumes where it stopped, a finished one is reused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vit_explore as vx
from tests.conftest import model_state
from vit_explore.errors import InputError
from vit_explore.survey import MapStore, survey, weights_fingerprint
from vit_explore.testing import tiny_vit


def _model():
    return tiny_vit("vanilla", depth=2, num_classes=3)


def _x(n=10, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_maps_targets_and_probs_equal_explain(tmp_path):
    model, x = _model(), _x()
    before = model_state(model)
    s = survey(model, x, method="rollout", batch_size=4, store=tmp_path, progress=False)
    assert model_state(model) == before
    ex = vx.explain(model, x, "rollout")
    np.testing.assert_allclose(np.asarray(s.store.maps), ex.patch_map.numpy(), rtol=1e-5, atol=1e-6)
    probs = model(x).softmax(-1).detach()
    np.testing.assert_array_equal(s.predictions, probs.argmax(-1).numpy())
    np.testing.assert_array_equal(s.targets, probs.argmax(-1).numpy())
    np.testing.assert_allclose(np.asarray(s.store.arrays["prob"]), probs.max(-1).values.numpy(), rtol=1e-5)
    for c in s.classes:
        np.testing.assert_array_equal(s.indices(c), np.flatnonzero(probs.argmax(-1).numpy() == c))


def test_labels_choose_the_explained_class(tmp_path):
    model, x = _model(), _x()
    lab = np.arange(10) % 3
    s = survey(model, x, method="saliency", labels=lab, batch_size=4, store=tmp_path, progress=False)
    ex = vx.explain(model, x, "saliency", target=torch.as_tensor(lab))
    np.testing.assert_allclose(np.asarray(s.store.maps), ex.patch_map.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(s.targets, lab)
    with pytest.raises(InputError, match="labels must"):
        survey(model, x, method="saliency", labels=lab[:5], store=tmp_path, progress=False)


def test_every_kind_of_data_gives_the_same_maps(tmp_path):
    from PIL import Image

    model = _model()
    imgs = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    # the model's own normalisation, restated: timm's default config for this model
    cfg = vx.inputs.data_config(model)
    mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["std"], np.float32)[:, None, None]
    x = torch.from_numpy((imgs.transpose(0, 3, 1, 2) / np.float32(255.0) - mean) / std).float()
    ref = vx.explain(model, x, "rollout").patch_map.numpy()

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return x[i], 0

    folder = tmp_path / "imgs"
    for i, im in enumerate(imgs):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"c{i % 2}" / f"{i}.png")
    order = sorted(range(6), key=lambda i: (f"c{i % 2}", f"{i}.png"))
    # a folder goes through the model's own timm transform (resize + centre crop), like vx.preprocess
    ref_folder = vx.explain(model, vx.preprocess(model, [imgs[i] for i in order]), "rollout").patch_map.numpy()
    for data, expect in ((x, ref), (imgs, ref), (list(x), ref), (DS(), ref), (str(folder), ref_folder)):
        s = survey(model, data, method="rollout", batch_size=4, store=tmp_path / "s", progress=False)
        np.testing.assert_allclose(np.asarray(s.store.maps), expect, rtol=1e-4, atol=1e-5)


def test_interrupted_pass_resumes_and_equals_an_uninterrupted_one(tmp_path):
    model, x = _model(), _x(11)
    done: list[int] = []

    def stop_after_two(k):
        done.append(k)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        survey(model, x, method="rollout", batch_size=3, store=tmp_path / "a", progress=stop_after_two)
    (folder,) = [p for p in (tmp_path / "a").iterdir()]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary folder left
    st = MapStore.open(folder)
    assert int(np.asarray(st.arrays["done"]).sum()) == 6 and not st.complete()
    resumed: list[int] = []
    s = survey(model, x, method="rollout", batch_size=3, store=tmp_path / "a", progress=resumed.append)
    assert sum(resumed) == 5  # only the 5 missing images were explained
    whole = survey(model, x, method="rollout", batch_size=3, store=tmp_path / "b", progress=False)
    for k in ("maps", "target", "prob", "pred", "done"):
        np.testing.assert_array_equal(np.asarray(s.store.arrays[k]), np.asarray(whole.store.arrays[k]))
    again: list[int] = []
    survey(model, x, method="rollout", batch_size=3, store=tmp_path / "a", progress=again.append)
    assert again == []  # reused, nothing recomputed


def test_store_key_separates_models_methods_params_and_data(tmp_path):
    model, x = _model(), _x(4)
    paths = set()
    for kw in ({"method": "rollout"}, {"method": "rollout", "start_layer": 1}, {"method": "saliency"}):
        paths.add(survey(model, x, store=tmp_path, progress=False, **kw).store.path)
    paths.add(survey(model, _x(4, seed=1), method="rollout", store=tmp_path, progress=False).store.path)
    fp = weights_fingerprint(model)
    with torch.no_grad():
        model.head.bias[0] += 1.0
    assert weights_fingerprint(model) != fp
    paths.add(survey(model, x, method="rollout", store=tmp_path, progress=False).store.path)
    assert len(paths) == 5
    assert weights_fingerprint(_model()) == fp  # the same weights in a new object: the same key


def test_bad_input_is_named(tmp_path):
    model = _model()
    with pytest.raises(InputError, match="cannot survey"):
        survey(model, 3.5, method="rollout", store=tmp_path)
    with pytest.raises(InputError, match="batch_size"):
        survey(model, _x(2), method="rollout", batch_size=0, store=tmp_path)
    with pytest.raises(InputError, match="preset"):
        survey(model, "shapes-spurious:abc", method="rollout", store=tmp_path)
    with pytest.raises(InputError, match="uint8"):
        survey(model, np.zeros((2, 32, 32, 3), np.float32), method="rollout", store=tmp_path)


def test_survey_is_the_package_and_the_call():
    """``vx.survey`` is the subpackage (its modules import by name) and calling it is ``survey.dataset.survey``."""
    import inspect
    import subprocess
    import sys

    import vit_explore as vx
    import vit_explore.survey.dataset as sv
    import vit_explore.survey.store as st

    assert vx.survey.store is st and callable(vx.survey)
    assert inspect.signature(vx.survey) == inspect.signature(sv.survey)
    code = "import vit_explore.survey.store as s\nimport vit_explore as vx\nassert callable(vx.survey) and vx.survey.store is s\n"
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_occlusion_survey_keeps_probability_drops_in_its_mean_maps(tmp_path):
    """``norm="auto"`` on occlusion's probability drops: the mean map is the plain mean of the stored maps."""
    model, x = _model(), _x(8)
    s = survey(model, x, method="occlusion", window=2, stride=2, store=tmp_path, progress=False)
    assert s.norm == "none"
    for c in s.classes:
        k = 0
        ref = np.mean([s.map(i).astype(np.float64) for i in s.members(c, k)], axis=0)
        np.testing.assert_allclose(s.mean_map(c, k), ref, rtol=1e-6, atol=1e-9)
    r = survey(model, x, method="rollout", store=tmp_path, progress=False)
    assert r.norm == "max"
    c = int(r.classes[0])
    maps = np.stack([r.map(i).astype(np.float64) for i in r.indices(c)])
    np.testing.assert_allclose(r.class_mean_map(c), (maps / np.abs(maps).max(axis=(1, 2), keepdims=True)).mean(0),
                               rtol=1e-6, atol=1e-9)
    with pytest.raises(InputError, match="normalisation"):
        survey(model, x, method="rollout", store=tmp_path, progress=False, norm="l2")
