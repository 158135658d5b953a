"""``vit-explore survey``: writes the store (equal to vx.survey's), a summary and the offline atlas."""

from __future__ import annotations

import json

import numpy as np

import vit_explore as vx
from vit_explore.cli import main
from vit_explore.survey import Survey
from vit_explore.widget._atlas import STATIC


def test_survey_command(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["survey", "shapes-spurious:60", "--model", "toy-shapes-spurious", "--method", "rollout",
            "--out", str(out), "--no-progress", "--batch-size", "25"]
    if not (STATIC / "atlas.js").exists():
        argv.append("--no-html")
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    s = Survey.load(summary["store"])
    model = vx.load_model("toy-shapes-spurious")
    ref = vx.survey(model, "shapes-spurious:60", method="rollout", store=tmp_path / "ref", progress=False)
    np.testing.assert_array_equal(np.asarray(s.store.maps), np.asarray(ref.store.maps))
    for row in summary["classes"]:
        c = row["class"]
        assert row["n"] == len(ref.indices(c)) and row["k"] == ref.n_clusters(c)
        assert row["sizes"] == [len(ref.members(c, k)) for k in range(ref.n_clusters(c))]
    if "--no-html" not in argv:
        assert (out / "atlas.html").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


def test_survey_command_errors(tmp_path, capsys):
    assert main(["survey", "nowhere-preset", "--model", "toy-shapes", "--method", "rollout",
                 "--out", str(tmp_path)]) == 2
    assert "neither a folder nor a preset" in capsys.readouterr().err


def test_survey_command_norm(tmp_path):
    """``--norm`` reaches SpRAy: the clusters equal vx.survey's with the same ``norm``."""
    out = tmp_path / "run"
    assert main(["survey", "shapes-spurious:60", "--model", "toy-shapes-spurious", "--method", "rollout",
                 "--out", str(out), "--no-progress", "--no-html", "--norm", "sum"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["norm"] == "sum"
    model = vx.load_model("toy-shapes-spurious")
    ref = vx.survey(model, "shapes-spurious:60", method="rollout", store=tmp_path / "ref", progress=False, norm="sum")
    for row in summary["classes"]:
        c = row["class"]
        assert row["sizes"] == [len(ref.members(c, k)) for k in range(ref.n_clusters(c))]
        np.testing.assert_allclose(ref.analysis(c).features.sum(axis=1), 1.0)  # rollout's maps are >= 0
