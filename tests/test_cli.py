"""The vit-explore command line end to end on a tiny checkpoint and a few synthetic images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vit_explore.cli import main
from vit_explore.datasets.synthetic import CLASS_NAMES
from vit_explore.zoo import _set_cfg, save_model

KW = {"img_size": 96, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": len(CLASS_NAMES)}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KW)
    _set_cfg(m, "vit_tiny_patch16_224", "tiny", {"input_size": (3, 96, 96), "mean": (0.5,) * 3, "std": (0.5,) * 3},
             list(CLASS_NAMES))
    return str(save_model(m, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", arch="vit_tiny_patch16_224",
                          model_kwargs=KW))


@pytest.mark.parametrize("cmd", [[], ["bench"], ["explain"], ["lab"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: vit-explore" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["bench", "--dataset", "nope", "--model", "x", "--out", "o"], "invalid choice"),
    (["bench", "--dataset", "shapes", "--out", "o"], "--model"),
    (["bench", "--dataset", "shapes", "--model", "x", "--out", "o", "--limit", "0"], "positive integer"),
    (["frobnicate"], "invalid choice"),
])
def test_argparse_errors_exit_2(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_user_errors_are_clear(tmp_path, tiny_ckpt, capsys):
    assert main(["bench", "--dataset", "voc", "--model", tiny_ckpt, "--out", str(tmp_path)]) == 2
    assert "--voc-root" in capsys.readouterr().err
    assert main(["bench", "--dataset", "shapes", "--model", tiny_ckpt, "--methods", "rolout",
                 "--out", str(tmp_path)]) == 2
    assert "did you mean 'rollout'" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing.png"), "--model", tiny_ckpt, "--method", "rollout",
                 "-o", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "--dataset", "shapes", "--model", str(tmp_path / "no.safetensors"),
                 "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_explain_folder_writes_overlays_and_maps(tmp_path, tiny_ckpt, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50 + i, 70, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["explain", str(src), "--model", tiny_ckpt, "--method", "rollout", "--target", "square",
                 "-o", str(out), "--param", "start_layer=0", "--no-progress"]) == 0
    for i in range(3):
        assert Image.open(out / f"im{i}_rollout.png").size == (96, 96)
        m = np.load(out / f"im{i}_rollout.npy")
        assert m.shape == (6, 6) and m.dtype == np.float32
    # the raw map is exactly what the API computes for the preprocessed image
    import vit_explore as vx
    from vit_explore.zoo import load_model

    model = load_model(tiny_ckpt)
    x = vx.preprocess(model, Image.open(src / "im1.png").convert("RGB"))
    ref = vx.explain(model, x, "rollout", target=1, start_layer=0).patch_map[0].numpy()
    np.testing.assert_allclose(np.load(out / "im1_rollout.npy"), ref, rtol=1e-5, atol=1e-6)
    assert main(["explain", str(src / "im0.png"), "--model", tiny_ckpt, "--method", "rollout", "--target", "7",
                 "-o", str(out)]) == 2
    assert "outside" in capsys.readouterr().err


def test_bench_end_to_end(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "--dataset", "shapes-spurious", "--model", tiny_ckpt, "--methods", "rollout,grad_cam",
               "--limit", "4", "--batch-size", "2", "--out", str(out), "--no-progress",
               "--metrics", "del_tam,chefer_pos,pointing,jaccard,mass,spurious"])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("rollout", "grad_cam", "baseline:random", "baseline:centre", "baseline:edge", "spurious"):
        assert name in text
    rows = list(csv.DictReader((out / "results.csv").open()))
    data = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == data["methods"]
    for r in rows:
        for m in data["metrics"]:
            v = data["table"][r["method"]][m]
            assert (r[m] == "" and v is None) or float(r[m]) == pytest.approx(v)
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower() and len(html) > 1_000_000  # plotly.js inlined: works offline
    assert data["meta"]["n_images"] == 4 and data["curves"]["rollout"]["del_tam"]["y"]


def test_lab_dry_run(tmp_path, capsys):
    nb = tmp_path / "t.ipynb"
    nb.write_text("{}")
    assert main(["lab", "--notebook", str(nb), "--dry-run"]) == 0
    assert "jupyter lab" in capsys.readouterr().out
    assert main(["lab", "--notebook", str(tmp_path / "missing.ipynb")]) == 2
