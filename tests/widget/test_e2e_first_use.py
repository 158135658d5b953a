"""End to end, as a first-time user meets it (issue 21): the main command's printed URL, a clean
checkout after running the tour, a quiet Lab, and the Explorer's class pinning, attention-only
controls, layout at 1280 px, counterfactual message, PNG export and ViT-CX mask strip.

Run with ``python -m pytest -q -m ui tests/widget/test_e2e_first_use.py``; skips like
test_e2e_browser.py when chromium, playwright or the built front end are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .jupyter_harness import (
    JupyterServer,
    browser,
    explorer_cells,
    free_port,
    kernel_eval,
    kernel_poll,
    missing_requirements,
    open_and_run,
)
from .test_e2e_browser import wait_map_ready

pytestmark = [pytest.mark.ui, pytest.mark.slow]
_why = missing_requirements()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))

REPO = Path(__file__).resolve().parents[2]
METHODS = ["raw_attention", "rollout", "grad_cam", "vit_cx"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def test_printed_url_opens_the_tour_quietly_and_running_it_keeps_the_checkout_clean(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "01_tour.ipynb", repo / "notebooks")
    shutil.copy(REPO / ".gitignore", repo)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "clone")
    saved_before = (repo / "notebooks" / "01_tour.ipynb").stat().st_mtime_ns
    base = Path(tempfile.mkdtemp(prefix="vx-lab-"))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTER_PLATFORM_DIRS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("JUPYTER_TOKEN", None)
    port = free_port()
    log = open(base / "lab.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vit_explore.cli", "lab", "--notebook", str(repo / "notebooks" / "01_tour.ipynb"),
         "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--ServerApp.port_retries=0",
         "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repo, start_new_session=True)
    try:
        url = None
        end = time.monotonic() + 120
        while url is None and time.monotonic() < end:
            assert proc.poll() is None, (base / "lab.log").read_text()
            m = re.search(rf"(http://127\.0\.0\.1:{port}/\S*\?token=\w+)", (base / "lab.log").read_text())
            url = m.group(1) if m else None
            time.sleep(0.3)
        assert url, (base / "lab.log").read_text()
        assert "/lab/tree/01_tour.ipynb?token=" in url  # what the terminal shows
        with browser() as b:
            page = b.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.context"
                " && window.jupyterapp.shell.currentWidget.context.path === '01_tour.ipynb'",
                timeout=120_000)
            # a quiet Lab: the news question is answered "never", no update check
            notif = page.evaluate("""async () => {
                const r = await window.jupyterapp.serviceManager.settings.fetch(
                    '@jupyterlab/apputils-extension:notification');
                const p = r.schema.properties;
                return { fetchNews: p.fetchNews.default, checkForUpdates: p.checkForUpdates.default }; }""")
            assert notif == {"fetchNews": "false", "checkForUpdates": False}, notif
            # widget comms on the main shell, not on subshells that drop messages now and then
            comms = page.evaluate("""async () => {
                const r = await window.jupyterapp.serviceManager.settings.fetch(
                    '@jupyterlab/apputils-extension:kernels-settings');
                return r.schema.properties.commsOverSubshells.default; }""")
            assert comms == "disabled", comms
            page.evaluate("""async () => { const w = window.jupyterapp.shell.currentWidget;
                await w.sessionContext.ready; await w.context.ready;
                await window.jupyterapp.commands.execute('notebook:run-all-cells'); }""")
            page.wait_for_function(
                """() => { const w = window.jupyterapp.shell.currentWidget;
                    const k = w.sessionContext.session && w.sessionContext.session.kernel;
                    const cells = w.content.widgets.filter(c => c.model.type === 'code');
                    return k && k.status === 'idle' && cells.every(c => c.model.executionCount !== null); }""",
                timeout=420_000, polling=1000)
            assert page.locator("[data-testid=vx-root]").count() >= 1  # the tour ran and shows the Explorer
            assert not page.locator(".jp-Notification-Toast, .Toastify__toast").filter(has_text="news").count()
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=60_000)
        assert (repo / "notebooks" / "01_tour.ipynb").stat().st_mtime_ns > saved_before  # it was written
        assert _git(repo, "status", "--porcelain") == ""
    finally:  # the server and its kernel, by the process group this test started
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _visible(page, testid: str) -> bool:
    return page.locator(f"[data-testid={testid}]").is_visible()


def check_layout_1280(page) -> None:
    """At 1280 px the widget fits the cell: no horizontal overflow, canvas and side panel side by
    side, every head thumbnail inside; the keyboard help opens under its button, one line per key."""
    root = page.locator("[data-testid=vx-root]")
    rb = root.bounding_box()
    assert rb["x"] + rb["width"] <= 1280
    assert root.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    cb = page.locator("[data-testid=vx-canvas]").bounding_box()
    sb = page.locator("[data-testid=vx-classes]").bounding_box()
    assert sb["x"] >= cb["x"] + cb["width"] and sb["y"] < cb["y"] + cb["height"], (cb, sb)  # side by side
    for t in page.locator("[data-testid=vx-heads] [data-head]").all():
        tb = t.bounding_box()
        assert tb["x"] >= rb["x"] and tb["x"] + tb["width"] <= rb["x"] + rb["width"]
    page.locator("[data-testid=vx-help-btn]").click()
    hb = page.locator("[data-testid=vx-help]").bounding_box()
    qb = page.locator("[data-testid=vx-help-btn]").bounding_box()
    assert 0 <= hb["y"] - (qb["y"] + qb["height"]) < 40 and hb["x"] + hb["width"] >= qb["x"], (hb, qb)
    # each key ("[ / ]", ", / .", "Delete / Esc", …) on one line: its text has one line box
    lines = page.locator("[data-testid=vx-help] dt").evaluate_all(
        """ds => ds.map(d => { const r = document.createRange(); r.selectNodeContents(d);
                               return new Set(Array.from(r.getClientRects()).map(b => Math.round(b.top))).size; })""")
    assert lines == [1] * 8, lines
    page.locator("[data-testid=vx-help-btn]").click()


def check_pinning(page, kc) -> None:
    """Each image is explained for its own top-1; a clicked class is pinned visibly, with a way back."""
    tops = kernel_eval(kc, "[int(w._ensure_image(i)['top']) for i in range(w.num_images)]")
    assert kernel_eval(kc, "[w.target, w.pinned]") == [tops[0], False]
    assert not _visible(page, "vx-pin")
    j = next(i for i in range(1, len(tops)) if tops[i] != tops[0])
    pick = next(c for c in range(len(kernel_eval(kc, "w.class_names"))) if c not in (tops[0], tops[j]))
    name = kernel_eval(kc, f"w.class_names[{pick}]")
    page.locator(f"[data-testid=vx-class-{pick}]").click()
    kernel_poll(kc, "[w.target, w.pinned]", lambda v: v == [pick, True])
    page.locator("[data-testid=vx-pin]").wait_for(state="visible")
    assert name in page.locator("[data-testid=vx-pin]").inner_text()
    for _ in range(j):
        page.locator("[data-testid=vx-next-image]").click()
    kernel_poll(kc, "w.image_index", lambda v: v == j)
    page.wait_for_timeout(500)
    assert kernel_eval(kc, "[w.target, w.pinned]") == [pick, True]  # pinned: it stays, and says so
    assert _visible(page, "vx-pin")
    page.locator("[data-testid=vx-unpin]").click()
    kernel_poll(kc, "[w.target, w.pinned]", lambda v: v == [tops[j], False])
    page.locator("[data-testid=vx-pin]").wait_for(state="hidden")
    page.wait_for_function(f"() => document.querySelector('[data-testid=vx-class-{tops[j]}]')"
                           "?.getAttribute('aria-checked') === 'true'")


def check_attention_controls(page, kc) -> None:
    """Layer and head apply to raw attention only: hidden elsewhere, and "]" never switches the method."""
    assert _visible(page, "vx-field-layer") and _visible(page, "vx-heads")
    page.locator("[data-testid=vx-method-rollout]").click()
    wait_map_ready(page, "Rollout")
    assert not _visible(page, "vx-field-layer") and not _visible(page, "vx-field-head")
    assert not _visible(page, "vx-heads")
    layer = kernel_eval(kc, "w.layer")
    page.locator("[data-testid=vx-canvas]").focus()
    page.keyboard.press("[")
    page.wait_for_timeout(400)
    assert kernel_eval(kc, "[w.method, w.layer]") == ["rollout", layer]
    assert page.locator("[data-testid=vx-method-rollout]").get_attribute("aria-pressed") == "true"
    about = page.locator("[data-testid=vx-about]").inner_text()
    assert about == kernel_eval(kc, "w.method_info['rollout']['about']")


def check_counterfactual_message(page, kc) -> None:
    page.locator("[data-testid=vx-counterfactual]").click()
    cf = kernel_poll(kc, "w.counterfactual", lambda v: bool(v), timeout=120)
    msg = page.locator("[data-testid=vx-cf]")
    msg.wait_for(state="visible", timeout=60_000)
    text = msg.inner_text()
    if cf["found"]:
        n = len(cf["patches"])
        assert f"removing these {n} patch" in text and f"“{cf['new_name']}”" in text, text
        assert f"{cf['new_prob']:.3f}" in text
        assert kernel_poll(kc, "w.brushed", lambda v: v == cf["patches"]) == cf["patches"]
    else:
        assert f"No counterfactual: removing up to {cf['tried']} patches" in text, text
    page.locator("[data-testid=vx-clear]").click()


def check_png_export(page, kc, tmp: Path) -> None:
    from PIL import Image

    page.locator("[data-testid=vx-method-grad_cam]").click()
    wait_map_ready(page, "Grad-CAM")
    i, t = kernel_eval(kc, "[w.image_index, w.class_names[w.target]]")
    with page.expect_download() as dl:
        page.locator("[data-testid=vx-png]").click()
    d = dl.value
    assert d.suggested_filename == f"vit-explore_image{i + 1}_grad_cam_{t}.png"
    path = tmp / d.suggested_filename
    d.save_as(str(path))
    cw, ch = page.locator("[data-testid=vx-canvas]").evaluate("c => [c.width, c.height]")
    w, h = Image.open(path).size
    assert w == cw and h > ch + 20, (w, h, cw, ch)  # the view at its pixel size, plus caption and colour scale


def check_mask_strip(page, kc) -> None:
    page.locator("[data-testid=vx-method-vit_cx]").click()
    wait_map_ready(page, "ViT-CX")
    page.locator("[data-testid=vx-masks]").wait_for(state="visible", timeout=60_000)
    K = kernel_eval(kc, "w.cx_masks['K']")
    box = page.locator("[data-testid=vx-masks]").bounding_box()
    thumbs = page.locator("[data-testid=vx-masks] [data-mask]").all()
    assert len(thumbs) == K
    for th in thumbs:  # every mask fully shown, none clipped to a sliver
        b = th.bounding_box()
        assert b["x"] >= box["x"] - 0.5 and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5, (b, box)
    assert "-0.000" not in page.locator("[data-testid=vx-masks]").inner_text()


def check_narrow(page) -> None:
    """A narrow cell: the canvas shrinks to fit and the side panel goes below it, nothing overflows."""
    page.set_viewport_size({"width": 640, "height": 800})
    page.wait_for_timeout(600)
    root = page.locator("[data-testid=vx-root]")
    rb = root.bounding_box()
    cb = page.locator("[data-testid=vx-canvas]").bounding_box()
    sb = page.locator("[data-testid=vx-classes]").bounding_box()
    wide = root.evaluate("""e => { const r = e.getBoundingClientRect().right;
        return Array.from(e.querySelectorAll('*')).filter(c => c.getBoundingClientRect().right > r + 1 && c.getClientRects().length)
                    .map(c => `${c.tagName}.${c.className} ${Math.round(c.getBoundingClientRect().right - r)}px`).slice(0, 8); }""")
    assert not wide, (rb, wide)
    assert cb["x"] + cb["width"] <= rb["x"] + rb["width"] and sb["y"] >= cb["y"] + cb["height"], (rb, cb, sb)
    page.set_viewport_size({"width": 1280, "height": 800})


def test_explorer_first_use_at_1280(tmp_path):
    server = JupyterServer("lab")
    server.start()
    try:
        server.write_notebook("explorer.ipynb", explorer_cells(METHODS))
        with browser() as b:
            ctx = b.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            open_and_run(page, server, "explorer.ipynb")
            page.locator("[data-testid=vx-root]").wait_for(timeout=180_000)
            kc = server.kernel_client("explorer.ipynb")
            try:
                wait_map_ready(page, "attention")
                check_layout_1280(page)
                check_pinning(page, kc)
                check_attention_controls(page, kc)
                check_counterfactual_message(page, kc)
                check_png_export(page, kc, tmp_path)
                check_mask_strip(page, kc)
                check_narrow(page)
            finally:
                kc.stop_channels()
            assert not [e for e in errors if "vx" in e or "widget" in e.lower()], errors
    except Exception:
        print(server.log())
        raise
    finally:
        server.stop()
