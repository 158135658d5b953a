"""The front end's own unit tests (colormaps, binary decoding, brush geometry), run with node's test runner."""

import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[2] / "js"


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_unit_tests_pass():
    if not (JS / "node_modules").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True)
    proc = subprocess.run(["npm", "test"], cwd=JS, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "# fail 0" in proc.stdout
