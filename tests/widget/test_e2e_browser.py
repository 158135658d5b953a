"""End to end: the Explorer in a real JupyterLab 4 / Notebook 7 and headless Chromium.

Run with ``python -m pytest -q -m ui tests/widget/test_e2e_browser.py``. Screenshots go to
``$VX_SCREENSHOT_DIR`` (default: a temporary directory, printed). Skips cleanly when
chromium, playwright or the built front end are missing.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from .jupyter_harness import (
    JupyterServer,
    browser,
    explorer_cells,
    kernel_eval,
    kernel_poll,
    missing_requirements,
    open_and_run,
)

pytestmark = [pytest.mark.ui, pytest.mark.slow]

_why = missing_requirements()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))

METHODS = ["raw_attention", "rollout", "grad_cam"]


@pytest.fixture(scope="module")
def shots() -> Path:
    d = Path(os.environ.get("VX_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="vx-shots-"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {d}")
    return d


def canvas_png(page) -> str:
    return page.locator("[data-testid=vx-canvas]").evaluate("c => c.toDataURL()")


def wait_map_ready(page, label_prefix: str, timeout: int = 60_000) -> None:
    page.wait_for_function(
        """(p) => { const c = document.querySelector('[data-testid=vx-canvas]');
                    const n = document.querySelector('[data-testid=vx-mapnote]');
                    return c && n && n.hidden && (c.getAttribute('data-map') || '').startsWith(p); }""",
        arg=label_prefix,
        timeout=timeout,
    )


def cell_center(page, index: int, gh: int, gw: int) -> tuple[float, float]:
    box = page.locator("[data-testid=vx-canvas]").bounding_box()
    r, c = divmod(index, gw)
    return box["x"] + (c + 0.5) * box["width"] / gw, box["y"] + (r + 0.5) * box["height"] / gh


def drive_explorer(page, server: JupyterServer, nb: str, shots: Path, tag: str) -> None:
    open_and_run(page, server, nb)
    root = page.locator("[data-testid=vx-root]")
    root.wait_for(timeout=180_000)
    kc = server.kernel_client(nb)
    try:
        nl, nh, (gh, gw) = kernel_eval(kc, "[w.num_layers, w.num_heads, w.grid]")
        # the attention of the current layer arrives first and is drawn from the front-end cache
        wait_map_ready(page, "attention")
        before = canvas_png(page)

        # 1. layer slider: the canvas changes, Python sees the new layer
        slider = page.locator("[data-testid=vx-layer]")
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("() => document.querySelector('[data-testid=vx-layer]').value === String(%d)" % (nl - 2))
        wait_map_ready(page, f"attention · layer {nl - 2}")
        after_layer = canvas_png(page)
        assert after_layer != before, "moving the layer slider did not change the canvas"
        kernel_poll(kc, "w.layer", lambda v: v == nl - 2)

        # 2. a head thumbnail: selected, drawn, and in Python
        page.locator("[data-testid=vx-head-1]").click()
        page.wait_for_function("() => document.querySelector('[data-testid=vx-head-1]').getAttribute('aria-pressed') === 'true'")
        wait_map_ready(page, f"attention · layer {nl - 2} · head 1")
        assert canvas_png(page) != after_layer
        kernel_poll(kc, "w.head", lambda v: v == 1)

        # 3. toggle a method: the kernel computes rollout, the canvas shows it
        att = canvas_png(page)
        page.locator("[data-testid=vx-method-rollout]").click()
        wait_map_ready(page, "Rollout")
        assert canvas_png(page) != att
        assert kernel_eval(kc, "w.method") == "rollout"
        assert page.locator("[data-testid=vx-method-rollout]").get_attribute("aria-pressed") == "true"

        # 4. brush three patches in one stroke (row 5, columns 4..6)
        hint = page.locator("[data-testid=vx-result]").inner_text()
        cells = [5 * gw + 4, 5 * gw + 5, 5 * gw + 6]
        x0, y0 = cell_center(page, cells[0], gh, gw)
        page.mouse.move(x0, y0)
        page.mouse.down()
        for c in cells[1:]:
            x, y = cell_center(page, c, gh, gw)
            page.mouse.move(x, y, steps=3)
        page.mouse.up()
        assert kernel_poll(kc, "w.brushed", lambda v: v == cells) == cells
        page.locator("[data-testid=vx-summary]").wait_for(timeout=60_000)
        panel = page.locator("[data-testid=vx-result]").inner_text()
        assert panel != hint
        res = kernel_poll(kc, "w.intervention", lambda v: bool(v) and v.get("patches") == cells)
        # the panel shows what Python computed: the target's probability after the intervention
        assert f"{res['target_after']:.3f}" in panel, panel
        assert re.search(r"before\s+after", page.locator("[data-testid=vx-probs]").inner_text())
        page.wait_for_timeout(300)
        root.screenshot(path=str(shots / f"explorer-{tag}.png"))

        # 5. an explainer failure is shown in the widget, which stays usable
        kernel_eval(kc, "w.set_params('rollout', start_layer=999) or 0")
        err = page.locator("[data-testid=vx-error]")
        err.wait_for(state="visible", timeout=60_000)
        assert "Rollout" in err.inner_text()
        kernel_eval(kc, "w.set_params('rollout') or 0")
        wait_map_ready(page, "Rollout")
        page.locator("[data-testid=vx-method-raw_attention]").click()
        wait_map_ready(page, "attention")

        # 6. standalone export, opened with no server and every request blocked
        html_path = shots / f"explorer-{tag}.html"
        kernel_eval(kc, f"len(w.to_html({str(html_path)!r}))")
        check_standalone(page.context.browser, html_path, shots / f"explorer-{tag}-standalone.png")
    finally:
        kc.stop_channels()


def check_standalone(b, html_path: Path, shot: Path) -> None:
    ctx = b.new_context(viewport={"width": 1100, "height": 900})
    blocked: list[str] = []

    def block(route):
        url = route.request.url
        if url.startswith(("file:", "blob:", "data:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    ctx.route("**/*", block)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html_path.as_uri())
    page.locator("[data-testid=vx-canvas]").wait_for(timeout=30_000)
    wait_map_ready(page, "attention")
    a = canvas_png(page)
    page.locator("[data-testid=vx-method-rollout]").click()  # computed in the session: embedded
    wait_map_ready(page, "Rollout")
    assert canvas_png(page) != a
    page.locator("[data-testid=vx-root]").screenshot(path=str(shot))
    assert not errors, errors
    assert not blocked, blocked
    ctx.close()


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_explorer_in_jupyter(app: str, shots: Path) -> None:
    server = JupyterServer(app)
    server.start()
    try:
        server.write_notebook("explorer.ipynb", explorer_cells(METHODS))
        with browser() as b:
            page = b.new_page(viewport={"width": 1300, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            drive_explorer(page, server, "explorer.ipynb", shots, app)
            assert not [e for e in errors if "vx" in e or "widget" in e.lower()], errors
    except Exception:
        print(server.log())
        raise
    finally:
        server.stop()
