"""Drive a real JupyterLab 4 / Notebook 7 server with Debian's Chromium (docs/frontend.md §2.3).

Used by tests/widget/test_e2e_browser.py and bench/bench_explorer.py. Nothing is downloaded:
the browser is the system chromium, the server runs from this Python environment on a free
localhost port with a random token, and it is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """The system Chromium binary, or None (the tests then skip)."""
    env = os.environ.get("VX_CHROMIUM")
    for p in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if p and Path(p).exists():
            return p
    return None


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if chromium_path() is None:
        return "chromium is not installed (apt-get install chromium, or set VX_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the python package playwright is not installed"
    try:
        import jupyter_client  # noqa: F401
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed"
    static = Path(__file__).resolve().parents[2] / "vit_explore" / "widget" / "static" / "widget.js"
    if not static.exists():
        return f"the front end is not built ({static} missing): run `npm ci && npm run build` in js/"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_json(cells: list[str]) -> dict[str, Any]:
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


class JupyterServer:
    """A headless JupyterLab or Notebook 7 server in a temporary root directory."""

    def __init__(self, app: str = "lab", root: Path | None = None):
        if app not in ("lab", "notebook"):
            raise ValueError("app must be 'lab' or 'notebook'")
        self.app = app
        self._tmp = tempfile.TemporaryDirectory(prefix="vx-jupyter-")
        base = Path(self._tmp.name)
        self.root = root or base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.runtime_dir = base / "runtime"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.proc: subprocess.Popen | None = None
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(base / "config"),
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("JUPYTER_TOKEN", None)
        # no "get Jupyter news?" toast over the widget in screenshots
        labconfig = base / "config" / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
        )
        # comm messages over kernel subshells (JupyterLab >= 4.4 with ipykernel 7) lose widget
        # updates now and then ("Unknown subshell_id" in the kernel log): comms go to the main shell
        user_settings = base / "user-settings"
        kernels = user_settings / "@jupyterlab" / "apputils-extension" / "kernels-settings.jupyterlab-settings"
        kernels.parent.mkdir(parents=True, exist_ok=True)
        kernels.write_text(json.dumps({"commsOverSubshells": "disabled"}))
        env["JUPYTERLAB_SETTINGS_DIR"] = str(user_settings)
        self.env = env

    def start(self, timeout: float = 90.0) -> None:
        cls = "LabApp" if self.app == "lab" else "JupyterNotebookApp"
        cmd = [
            sys.executable, "-m", "jupyter", self.app, "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}", f"--{cls}.expose_app_in_browser=True",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.open_browser=False",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (open while the server runs; closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter {self.app} exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"jupyter {self.app} did not answer within {timeout}s:\n{self.log()}")

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

    def write_notebook(self, name: str, cells: list[str]) -> Path:
        p = self.root / name
        p.write_text(json.dumps(notebook_json(cells)))
        return p

    def notebook_url(self, name: str) -> str:
        path = f"lab/tree/{name}" if self.app == "lab" else f"notebooks/{name}"
        return f"{self.url}/{path}?token={self.token}"

    def kernel_client(self, notebook: str, timeout: float = 60.0):
        """A BlockingKernelClient attached to the kernel of ``notebook``'s session."""
        from jupyter_client import BlockingKernelClient

        end = time.monotonic() + timeout
        kid = None
        while time.monotonic() < end and kid is None:
            with urllib.request.urlopen(f"{self.url}/api/sessions?token={self.token}", timeout=5) as r:
                for s in json.load(r):
                    if s.get("path", "").endswith(notebook) and s.get("kernel"):
                        kid = s["kernel"]["id"]
            if kid is None:
                time.sleep(0.3)
        if kid is None:
            raise TimeoutError(f"no kernel session for {notebook}")
        cf = self.runtime_dir / f"kernel-{kid}.json"
        while not cf.exists() and time.monotonic() < end:
            time.sleep(0.2)
        kc = BlockingKernelClient(connection_file=str(cf))
        kc.load_connection_file()
        kc.start_channels()
        kc.wait_for_ready(timeout=timeout)
        return kc


def kernel_eval(kc, expr: str, timeout: float = 30.0) -> Any:
    """Evaluate ``expr`` in the kernel and return its value (JSON round trip)."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("ERROR " + "\n".join(msg["content"]["traceback"]))

    code = f"import json as __j\nprint('@@' + __j.dumps({expr}))"
    kc.execute_interactive(code, output_hook=hook, timeout=timeout, store_history=False)
    text = "".join(out)
    for line in text.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"kernel evaluation of {expr!r} failed:\n{text}")


def kernel_poll(kc, expr: str, pred, timeout: float = 30.0, every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    v = None
    while time.monotonic() < end:
        v = kernel_eval(kc, expr)
        if pred(v):
            return v
        time.sleep(every)
    raise AssertionError(f"{expr} never satisfied the condition; last value {v!r}")


@contextmanager
def browser(headless: bool = True) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=headless, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_and_run(page, server: JupyterServer, name: str, timeout_ms: int = 120_000) -> None:
    """Open a notebook, wait until its kernel session is really ready, and run every cell."""
    page.goto(server.notebook_url(name))
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext",
        timeout=timeout_ms,
    )
    page.evaluate(
        """async () => {
            const w = window.jupyterapp.shell.currentWidget;
            await w.sessionContext.ready;
            await w.context.ready;
            await window.jupyterapp.commands.execute('notebook:run-all-cells');
        }"""
    )


EXPLORER_SETUP = """
import torch
import vit_explore as vx
from vit_explore.datasets import CLASS_NAMES, make_shapes, to_tensor
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
w = Explorer(model, x, methods=METHODS, class_names=names, title="toy shapes")
w
"""


def explorer_cells(methods: list[str] | None = None) -> list[str]:
    return [EXPLORER_SETUP.replace("METHODS", repr(methods)).strip()]


def which_python() -> str:
    return shutil.which("python") or sys.executable
