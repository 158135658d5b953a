"""The vit-explore command line end to end on a tiny checkpoint and a few synthetic images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

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
        assert Image.open(out / f"im{i}_rollout.png").size == (70, 50 + i)  # the image's own size
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


def test_explain_help_lists_models_methods_and_devices(capsys):
    import vit_explore as vx
    from vit_explore.zoo import EMBEDDED_MODELS

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in (*EMBEDDED_MODELS, *vx.list_methods(), "cuda", "cpu"):
        assert name in text, name


def test_crop_box_follows_timm_resize_and_centre_crop():
    cfg = {"input_size": (3, 96, 96), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "crop_pct": 1.0, "crop_mode": "center"}
    from vit_explore.cli import crop_box

    # 200x150 -> short side 96: 128x96, crop 96 at left 16 -> x 16 * 200/128 = 25 .. 175
    assert crop_box(cfg, 200, 150) == pytest.approx((25.0, 0.0, 175.0, 150.0))
    # crop_pct 0.75: short side 128 -> 170x128, crop 96 at (37, 16) in that image
    got = crop_box({**cfg, "crop_pct": 0.75}, 200, 150)
    assert got == pytest.approx((37 * 200 / 170, 16 * 150 / 128, 133 * 200 / 170, 112 * 150 / 128))
    assert crop_box({**cfg, "crop_mode": "squash"}, 200, 150) == pytest.approx((0.0, 0.0, 200.0, 150.0))


def test_explain_overlays_at_image_size_and_prints_every_class(tmp_path, tiny_ckpt, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(1)
    pics = [rng.integers(0, 255, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pics):
        Image.fromarray(p).save(src / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["explain", str(src), "--model", tiny_ckpt, "--method", "rollout", "-o", str(out)]) == 0  # with a bar
    text = capsys.readouterr().out
    import vit_explore as vx
    from vit_explore.zoo import load_model

    model = load_model(tiny_ckpt)
    tops = model(vx.preprocess(model, [Image.fromarray(p) for p in pics])).argmax(-1).tolist()
    for i, t in enumerate(tops):
        assert f"im{i}.png: class {t} (" in text
        got = np.asarray(Image.open(out / f"im{i}_rollout.png"))
        assert got.shape == (50, 70, 3)
        # 70x50 -> 134x96, crop 96 at left 19: the model saw x in [19*70/134, 115*70/134] = [9.9, 60.1]
        np.testing.assert_array_equal(got[:, :10], pics[i][:, :10])
        np.testing.assert_array_equal(got[:, 60:], pics[i][:, 60:])
        assert np.abs(got[:, 10:60].astype(int) - pics[i][:, 10:60]).mean() > 5


def test_unknown_model_suggests_vit_names_first(tmp_path, capsys):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["explain", str(tmp_path / "a.png"), "--model", "vit_tiny", "--method", "rollout",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'vit_tiny_patch16_" in err and "gcvit" not in err


def test_bench_without_out_prints_the_table_and_writes_nothing(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["bench", "--dataset", "shapes", "--model", tiny_ckpt, "--methods", "rollout", "--limit", "2",
               "--batch-size", "2", "--no-progress", "--metrics", "pointing", "--baselines", "none"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "rollout" in text and "pointing" in text and "wrote" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lab_command_opens_the_tour_quietly_and_strips_outputs_on_save(tmp_path, capsys):
    import nbformat

    from vit_explore._lab import strip_outputs

    nb_path = Path(__file__).resolve().parents[1] / "notebooks" / "01_tour.ipynb"
    assert main(["lab", "--dry-run", "--no-browser", "--port=8899"]) == 0
    cmd = capsys.readouterr().out
    assert f"--ServerApp.root_dir={nb_path.parent}" in cmd and "--LabApp.default_url=/lab/tree/01_tour.ipynb" in cmd
    assert "--ContentsManager.pre_save_hook=vit_explore._lab.strip_outputs" in cmd
    assert " --no-browser --port=8899" in cmd  # jupyter's own options pass through
    # what Lab saves after a run (outputs, counts, the kernel's language_info) comes out byte-identical
    committed = nb_path.read_text(encoding="utf-8")
    nb = nbformat.reads(committed, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i + 1
            cell.outputs = [nbformat.v4.new_output("stream", text="x" * 1000)]
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.2", "codemirror_mode": {"name": "ipython"}}

    class CM:
        def _get_os_path(self, path):
            return str(nb_path.parent / path)

    model = {"type": "notebook", "content": nb}
    strip_outputs(model=model, path="01_tour.ipynb", contents_manager=CM())
    assert nbformat.writes(model["content"]) + "\n" == committed
    # an edited cell is the user's: kept
    nb.cells[1].source += "\n# mine"
    strip_outputs(model=model, path="01_tour.ipynb", contents_manager=CM())
    assert "# mine" in nbformat.writes(model["content"])
