"""Drive the Explorer in the other hosts it supports, Voilà and marimo, with Debian's Chromium.

Used by tests/widget/test_e2e_hosts.py. Like jupyter_harness: nothing is
downloaded, each server runs from this Python environment on a free localhost port with a random
token, in a temporary directory, and is stopped by its PID. What the page shows is read from the
DOM and compared with the same computation run here, in the test process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .jupyter_harness import chromium_path, free_port, notebook_json

#: The model and images of the Explorer in every host (the same as jupyter_harness's EXPLORER_SETUP).
MODEL_SETUP = """
import torch
import vit_explore as vx
from vit_explore.datasets import CLASS_NAMES, make_shapes
from vit_explore.widget import Explorer
try:
    from vit_explore.zoo import load_model
    model = load_model("toy-shapes")
    names = None
except Exception:  # the embedded weights are not built yet: a seeded toy of the same shape
    from vit_explore.testing import tiny_vit
    model = tiny_vit(img_size=96, num_classes=len(CLASS_NAMES), depth=4, embed_dim=48, num_heads=4)
    names = list(CLASS_NAMES)
data = make_shapes(3, seed=3)
x = vx.preprocess(model, list(data.images))
"""
EXPLORER = 'Explorer(model, x, methods=["raw_attention", "rollout"], class_names=names, title="toy shapes")'
#: Three patches brushed in one stroke: row 5, columns 4..6.
ROW, COLS = 5, (4, 5, 6)


def missing(module: str, extra: str) -> str | None:
    """Why a host test cannot run here (the browser, playwright, the front end, the host's extra), or None."""
    if chromium_path() is None:
        return "chromium is not installed (apt-get install chromium, or set VX_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the python package playwright is not installed"
    static = Path(__file__).resolve().parents[2] / "vit_explore" / "widget" / "static" / "widget.js"
    if not static.exists():
        return f"the front end is not built ({static} missing): run `npm ci && npm run build` in js/"
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install -e '.[{extra}]')"
    return None


def expected() -> dict[str, Any]:
    """What the page must show, computed here: grid, layers, the top class and its probability after
    the three patches are replaced by noise (``vx.intervene``, the Explorer's defaults)."""
    ns: dict[str, Any] = {}
    exec(MODEL_SETUP, ns)  # noqa: S102 - the setup the hosts run, run here too
    model, x, vx, torch = ns["model"], ns["x"], ns["vx"], ns["torch"]
    gh, gw = (int(v) for v in model.patch_embed.grid_size)
    with torch.no_grad():
        p = model(x[:1]).softmax(-1)[0]
    top = int(p.argmax())
    cells = [ROW * gw + c for c in COLS]
    res = vx.intervene(model, x[:1], cells, mode="noise", target=top, topk=5)
    return {"grid": (gh, gw), "layers": len(model.blocks), "top": top, "p_before": float(p[top]),
            "p_after": float(res.probs[0, top]), "cells": cells}


class HostServer:
    """A server process (Voilà or marimo) on a free port, in a temporary directory."""

    def __init__(self, name: str):
        self.name = name
        self._tmp = tempfile.TemporaryDirectory(prefix=f"vx-{name}-")
        self.root = Path(self._tmp.name)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", HOME=str(self.root / "home"),
                        XDG_CONFIG_HOME=str(self.root / "home" / ".config"),
                        JUPYTER_CONFIG_DIR=str(self.root / "jupyter-config"),
                        JUPYTER_RUNTIME_DIR=str(self.root / "jupyter-runtime"), JUPYTER_PLATFORM_DIRS="1")
        (self.root / "home" / ".config").mkdir(parents=True)

    def start(self, cmd: list[str], ready_url: str | None, timeout: float = 90.0) -> None:
        """Run ``cmd``; ready once ``ready_url`` answers 200 (None: once the port accepts connections,
        for Voilà, whose every page request runs the notebook)."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (open while the server runs; closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                if ready_url is None:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                        return
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.3)
        raise TimeoutError(f"{self.name} did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        self._tmp.cleanup()


def voila_server() -> tuple[HostServer, str]:
    """Voilà serving a notebook whose one cell shows the Explorer; returns (server, page URL)."""
    s = HostServer("voila")
    nb = s.root / "explorer.ipynb"
    nb.write_text(json.dumps(notebook_json([(MODEL_SETUP + f"w = {EXPLORER}\nw\n").strip()])))
    url = f"http://127.0.0.1:{s.port}/?token={s.token}"
    s.start([sys.executable, "-m", "voila", str(nb), "--no-browser", f"--port={s.port}", "--Voila.ip=127.0.0.1",
             f"--token={s.token}", "--show_tracebacks=True", "--Voila.port_retries=0"], None)
    return s, url


MARIMO_APP = '''import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo
{setup}
    w = mo.ui.anywidget({explorer})
    w
    return


if __name__ == "__main__":
    app.run()
'''


def marimo_server() -> tuple[HostServer, str]:
    """``marimo run`` (an app, read-only) of a file whose one cell shows ``mo.ui.anywidget(Explorer(...))``."""
    s = HostServer("marimo")
    setup = "\n".join(("    " + line) if line else "" for line in MODEL_SETUP.strip().splitlines())
    app = s.root / "explorer_app.py"
    app.write_text(MARIMO_APP.format(setup=setup, explorer=EXPLORER))
    url = f"http://127.0.0.1:{s.port}/?access_token={s.token}"
    s.start([sys.executable, "-m", "marimo", "run", str(app), "--headless", f"--port={s.port}", "--host=127.0.0.1",
             f"--token-password={s.token}", "--no-sandbox", "--no-skew-protection"],
            f"http://127.0.0.1:{s.port}/health")
    return s, url


def _map_label(page) -> str:
    return page.locator("[data-testid=vx-canvas]").get_attribute("data-map") or ""


def wait_for(what: str, pred, timeout: float = 60.0, every: float = 0.1) -> Any:
    """Poll ``pred()`` (locator reads pierce the shadow roots some hosts render widgets in)."""
    end = time.monotonic() + timeout
    v = None
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last value {v!r}")


def map_ready(page, prefix: str, timeout: float = 60.0) -> None:
    note = page.locator("[data-testid=vx-mapnote]")
    wait_for(f"the map {prefix!r}", lambda: _map_label(page).startswith(prefix) and note.is_hidden(), timeout)


def drive(page, url: str, exp: dict[str, Any]) -> dict[str, str]:
    """Open ``url``; the Explorer renders, the layer slider moves the map, a brush of three patches
    shows the probability computed in ``exp``. Returns what the panels read, for the report."""
    page.goto(url, timeout=120_000)
    canvas = page.locator("[data-testid=vx-canvas]")
    canvas.wait_for(timeout=180_000)
    nl = exp["layers"]
    map_ready(page, f"attention · layer {nl - 1}", timeout=120)  # the attention arrived over the comm
    png = canvas.evaluate("c => c.toDataURL()")

    slider = page.locator("[data-testid=vx-layer]")
    slider.focus()
    page.keyboard.press("ArrowLeft")
    wait_for("the slider at the layer before the last", lambda: slider.input_value() == str(nl - 2))
    map_ready(page, f"attention · layer {nl - 2}")
    assert canvas.evaluate("c => c.toDataURL()") != png, "moving the layer slider did not change the canvas"

    canvas.scroll_into_view_if_needed()
    gh, gw = exp["grid"]
    box = canvas.bounding_box()

    def center(i: int) -> tuple[float, float]:
        r, c = divmod(i, gw)
        return box["x"] + (c + 0.5) * box["width"] / gw, box["y"] + (r + 0.5) * box["height"] / gh

    cells = exp["cells"]
    page.mouse.move(*center(cells[0]))
    page.mouse.down()
    for c in cells[1:]:
        page.mouse.move(*center(c), steps=3)
    page.mouse.up()
    page.locator("[data-testid=vx-summary]").wait_for(timeout=60_000)
    summary = page.locator("[data-testid=vx-summary]")

    def near(text: str, want: float) -> bool:  # the first number printed (3 decimals; 6e-4: a last-bit difference)
        m = re.search(r"\d\.\d{3}", text)
        return m is not None and abs(float(m.group()) - want) <= 6e-4

    def shown() -> bool:  # "Target “ring”: p_before → p_after (Δ …)": the top class before and after
        t = summary.inner_text()
        return "→" in t and near(t.split("”")[-1], exp["p_before"]) and near(t.split("→")[1], exp["p_after"])

    wait_for(f"p(top) {exp['p_before']:.3f} -> {exp['p_after']:.3f} in the result panel", shown)
    result = page.locator("[data-testid=vx-result]")
    assert f"{len(cells)} patches" in result.inner_text()
    return {"result": result.inner_text(), "probs": page.locator("[data-testid=vx-probs]").inner_text()}


def browser_errors(errors: list[str]) -> list[str]:
    """The page errors that concern the Explorer (hosts log their own, unrelated ones)."""
    return [e for e in errors if "vx" in e or "widget" in e.lower()]
