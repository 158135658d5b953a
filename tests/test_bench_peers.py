"""Smoke test of bench/bench_peers.py --quick on the embedded toy model (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_peers_quick_runs_and_prints_the_markdown_table():
    pytest.importorskip("captum")
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("lxt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "bench" / "bench_peers.py"), "--quick", "--batches", "1", "--attention", "peaky",
           "--methods", "saliency,grad_cam,chefer_lrp,attn_lrp", "--markdown", "--threads", "1"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| peaky | 1 |")]
    assert [r.split("|")[3].strip() for r in rows] == ["saliency", "grad_cam", "chefer_lrp", "attn_lrp"]
    assert "captum Saliency" in rows[0] and "pytorch-grad-cam GradCAM" in rows[1] and "official" in rows[2]
    assert "LXT cp_LRP" in rows[3]
    # peak memory at the largest batch, from a fresh --memory-only process: ours / the peer, both > 0
    for r in rows:
        ours_mb, peer_mb = (float(v) for v in r.split("|")[10].split("/"))
        assert ours_mb > 0 and peer_mb > 0, r
    assert "CPU:" in out.stdout and "toy-shapes" in out.stdout


def test_readme_flag_replaces_only_the_marked_block(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_peers_t", ROOT / "bench" / "bench_peers.py")
    bp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bp)
    m = bp.README_MARKER
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{m}\nold table\n{m}\nrest\n")
    bp.write_readme("| new | table |", readme)
    assert readme.read_text() == f"intro\n{m}\n| new | table |\n{m}\nrest\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="exactly two"):
        bp.write_readme("| t |", readme)
    assert readme.read_text() == "no markers\n"
    assert (ROOT / "README.md").read_text().count(m) == 2
