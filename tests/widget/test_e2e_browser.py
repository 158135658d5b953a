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

METHODS = ["raw_attention", "rollout", "grad_cam", "vit_cx"]


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
        nl, _nh, (gh, gw) = kernel_eval(kc, "[w.num_layers, w.num_heads, w.grid]")
        # the attention of the current layer arrives first and is drawn from the front-end cache
        wait_map_ready(page, "attention")
        before = canvas_png(page)

        # 1. layer slider: the canvas changes, Python sees the new layer
        slider = page.locator("[data-testid=vx-layer]")
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"() => document.querySelector('[data-testid=vx-layer]').value === String({nl - 2})")
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

        check_keyboard_brushing(page, kc, gh, gw)
        check_recompute(page, kc)
        check_curves(page, kc)
        check_compare(page, kc)
        check_vit_cx_masks(page, kc)

        # 5. an explainer failure is shown in the widget, which stays usable
        kernel_eval(kc, "w.set_params('rollout', start_layer=999) or 0")
        err = page.locator("[data-testid=vx-error]")
        err.wait_for(state="visible", timeout=60_000)
        assert "Rollout" in err.inner_text()
        kernel_eval(kc, "w.set_params('rollout') or 0")
        wait_map_ready(page, "Rollout")
        page.locator("[data-testid=vx-method-raw_attention]").click()
        wait_map_ready(page, "attention")
        if tag == "lab":
            check_dark_theme(page, shots / f"explorer-{tag}-dark.png")

        # 6. standalone export, opened with no server and every request blocked
        html_path = shots / f"explorer-{tag}.html"
        kernel_eval(kc, f"len(w.to_html({str(html_path)!r}))")
        check_standalone(page.context.browser, html_path, shots / f"explorer-{tag}-standalone.png")
    finally:
        kc.stop_channels()


def check_keyboard_brushing(page, kc, gh: int, gw: int) -> None:
    """Arrows move the patch cursor, Space marks, Enter runs; the result is announced (aria-live)."""
    page.locator("[data-testid=vx-clear]").click()
    kernel_poll(kc, "w.brushed", lambda v: v == [])
    canvas = page.locator("[data-testid=vx-canvas]")
    canvas.focus()
    live = page.locator("[data-testid=vx-live]")
    assert live.get_attribute("aria-live") == "polite"
    for _ in range(gh):
        page.keyboard.press("ArrowUp")
    page.keyboard.press("Home")
    assert "patch 0 (row 0, col 0)" in live.text_content()
    page.keyboard.press("Space")
    assert "marked; 1 marked" in live.text_content()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    assert kernel_eval(kc, "w.brushed") == []  # nothing is sent before Enter
    page.keyboard.press("Enter")
    want = [0, gw + 1]
    assert kernel_poll(kc, "w.brushed", lambda v: v == want) == want
    res = kernel_poll(kc, "w.intervention", lambda v: bool(v) and v.get("patches") == want)
    page.wait_for_function(
        "() => (document.querySelector('[data-testid=vx-live]').textContent || '').startsWith('After perturbing 2 patches')",
        timeout=60_000,
    )
    text = live.text_content()
    assert f"{res['target_after']:.2f}" in text, text
    # the notebook did not take the keys: still one cell, the widget's canvas still focused
    assert page.evaluate("document.activeElement && document.activeElement.dataset.testid") == "vx-canvas"


def check_recompute(page, kc) -> None:
    """With the checkbox on, the current method is rerun on the intervened image and drawn."""
    page.locator("[data-testid=vx-recompute]").check()
    kernel_poll(kc, "w.recompute", lambda v: v is True)
    page.locator("[data-testid=vx-imap-box]").wait_for(state="visible", timeout=60_000)
    im = kernel_poll(kc, "{k: v for k, v in w.intervened_map.items() if k in ('key', 'patches', 'label')}",
                     lambda v: bool(v) and v.get("patches") == kernel_eval(kc, "w.brushed"))
    assert page.locator("[data-testid=vx-imap]").get_attribute("data-map") == im["label"]
    assert "intervened image" in page.locator("[data-testid=vx-imap-box]").inner_text()
    page.locator("[data-testid=vx-recompute]").uncheck()
    page.locator("[data-testid=vx-imap-box]").wait_for(state="hidden", timeout=30_000)


def check_curves(page, kc) -> None:
    """Deletion/insertion curves on demand, drawn as SVG with the AUCs Python computed."""
    page.locator("[data-testid=vx-curves-btn]").click()
    page.locator("[data-testid=vx-curve-deletion]").wait_for(timeout=120_000)
    cv = kernel_poll(kc, "{k: w.curves.get(k) for k in ('x', 'auc_deletion', 'auc_insertion')}",
                     lambda v: v.get("x") is not None)
    for kind in ("deletion", "insertion"):
        pts = page.locator(f"[data-testid=vx-curve-{kind}]").get_attribute("points").split()
        assert len(pts) == len(cv["x"])
    text = page.locator("[data-testid=vx-curves]").inner_text()
    assert f"AUC {cv['auc_deletion']:.3f}" in text and f"AUC {cv['auc_insertion']:.3f}" in text, text
    assert page.locator("[data-testid=vx-curves-btn]").is_disabled()


def check_compare(page, kc) -> None:
    """The grid computes every method on demand; clicking a tile switches the main view to it."""
    page.locator("[data-testid=vx-compare-toggle]").click()
    kernel_poll(kc, "w.compare", lambda v: v is True)
    page.wait_for_function(
        """(ms) => ms.every(m => { const t = document.querySelector(`[data-testid=vx-tile-${m}]`);
                                   return t && t.dataset.state === 'ready'; })""",
        arg=METHODS,
        timeout=180_000,
    )
    page.locator("[data-testid=vx-tile-grad_cam]").click()
    wait_map_ready(page, "Grad-CAM")
    # the tile's map is drawn from the browser's copy at once; the method reaches the kernel over
    # the comm, which may come after this test's own request (a race the first CI run of f811808 lost)
    kernel_poll(kc, "w.method", lambda v: v == "grad_cam")
    assert page.locator("[data-testid=vx-tile-grad_cam]").get_attribute("aria-pressed") == "true"
    assert kernel_eval(kc, "w.stats['explain:grad_cam']") == 1  # the tile's map, not a second run


def check_vit_cx_masks(page, kc) -> None:
    """ViT-CX's masks are listed by causal score; clicking one overlays it."""
    page.locator("[data-testid=vx-method-vit_cx]").click()
    wait_map_ready(page, "ViT-CX")
    masks = page.locator("[data-testid=vx-masks]")
    masks.wait_for(state="visible", timeout=60_000)
    K, scores = kernel_eval(kc, "[w.cx_masks['K'], w.cx_masks['scores']]")
    thumbs = masks.locator("[data-mask]")
    assert thumbs.count() == K
    best = max(range(K), key=lambda k: (scores[k], -k))
    assert thumbs.first.get_attribute("data-mask") == str(best)  # highest causal score first
    before = canvas_png(page)
    thumbs.first.click()
    kernel_poll(kc, "w.cx_mask", lambda v: v == best)
    page.wait_for_function(
        "(p) => (document.querySelector('[data-testid=vx-canvas]').getAttribute('data-map') || '').startsWith(p)",
        arg=f"ViT-CX mask {best}",
    )
    assert canvas_png(page) != before
    thumbs.first.click()  # again: back to the saliency map
    kernel_poll(kc, "w.cx_mask", lambda v: v == -1)
    page.locator("[data-testid=vx-compare-toggle]").click()
    kernel_poll(kc, "w.compare", lambda v: v is False)
    page.locator("[data-testid=vx-method-rollout]").click()
    wait_map_ready(page, "Rollout")


def check_dark_theme(page, shot: Path) -> None:
    """JupyterLab Dark: every text element of the widget keeps a readable contrast."""
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=60_000)
    page.wait_for_timeout(800)
    worst = page.evaluate(CONTRAST_JS)
    page.locator("[data-testid=vx-root]").screenshot(path=str(shot))
    bad = [w for w in worst if w["ratio"] < w["need"]]
    assert not bad, bad
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'", timeout=60_000)


# The WCAG contrast of each visible text element of the widget against its effective background
# (the first ancestor with an opaque background colour); 4.5 for text, 3 for disabled controls' peers.
CONTRAST_JS = r"""() => {
  const rgb = (s) => { const m = s.match(/rgba?\(([^)]+)\)/); if (!m) return null;
                        const p = m[1].split(',').map(Number); return { c: p.slice(0, 3), a: p.length > 3 ? p[3] : 1 }; };
  const lum = (c) => { const l = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                       return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const bg = (el) => { for (let e = el; e; e = e.parentElement) { const b = rgb(getComputedStyle(e).backgroundColor);
                         if (b && b.a > 0.5) return b.c; } return [255, 255, 255]; };
  const root = document.querySelector('[data-testid=vx-root]');
  const out = [];
  for (const el of root.querySelectorAll('*')) {
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length || el.closest('[hidden]') || el.closest('.vx-sr')) continue;
    const cs = getComputedStyle(el);
    if (el.closest(':disabled') || el.closest('svg')) continue;
    const fg = rgb(cs.color); if (!fg) continue;
    const op = Number(cs.opacity);
    out.push({ text: el.textContent.trim().slice(0, 40), cls: el.className && el.className.baseVal === undefined ? el.className : '',
               ratio: Math.round(ratio(fg.c, bg(el)) * 100) / 100, need: 4.5 });
  }
  // the SVG chart's text and lines
  for (const el of root.querySelectorAll('svg text')) {
    const fill = rgb(getComputedStyle(el).fill); if (!fill) continue;
    out.push({ text: el.textContent, cls: 'svg', ratio: Math.round(ratio(fill.c, bg(el.closest('div'))) * 100) / 100, need: 4.5 });
  }
  for (const el of root.querySelectorAll('.vx-del, .vx-ins')) {
    const st = rgb(getComputedStyle(el).stroke); if (!st) continue;
    out.push({ text: el.getAttribute('class'), cls: 'line', ratio: Math.round(ratio(st.c, bg(el.closest('div'))) * 100) / 100, need: 3 });
  }
  return out.sort((a, b) => a.ratio - b.ratio).slice(0, 12);
}"""


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
    check_host_themes(page, shot)
    assert not errors, errors
    assert not blocked, blocked
    ctx.close()


# The theme hooks of the hosts we cannot run here (VS Code's notebook webview and Colab), as those
# hosts set them: VS Code puts a theme class on <body> and --vscode-* colour variables; Colab sets
# theme="dark" on <html>. The standalone page (no JupyterLab variables) stands in for their iframes.
HOST_THEMES = {
    "vscode-dark": """() => { document.body.classList.add('vscode-dark');
        document.body.style.setProperty('--vscode-editor-foreground', '#cccccc');
        document.body.style.setProperty('--vscode-editor-background', '#1f1f1f'); }""",
    "vscode-light": """() => { document.body.classList.add('vscode-light');
        document.body.style.setProperty('--vscode-editor-foreground', '#3b3b3b');
        document.body.style.setProperty('--vscode-editor-background', '#ffffff'); }""",
    "colab-dark": """() => { document.documentElement.setAttribute('theme', 'dark'); }""",
}
UNDO_THEME = """() => { document.body.classList.remove('vscode-dark', 'vscode-light');
    for (const v of ['--vscode-editor-foreground', '--vscode-editor-background']) document.body.style.removeProperty(v);
    document.documentElement.removeAttribute('theme'); }"""


def check_host_themes(page, shot: Path) -> None:
    """Under each host's theme hook the widget takes that host's colours (the editor background,
    through the variable where the host gives one) and every text keeps a readable contrast."""
    expect_bg = {"vscode-dark": "rgb(31, 31, 31)", "vscode-light": "rgb(255, 255, 255)", "colab-dark": "rgb(30, 30, 30)"}
    for name, apply in HOST_THEMES.items():
        page.evaluate(apply)
        page.wait_for_timeout(100)
        bg = page.locator("[data-testid=vx-root]").evaluate("e => getComputedStyle(e).backgroundColor")
        assert bg == expect_bg[name], (name, bg)
        worst = page.evaluate(CONTRAST_JS)
        page.locator("[data-testid=vx-root]").screenshot(path=str(shot.with_name(f"{shot.stem}-{name}.png")))
        bad = [w for w in worst if w["ratio"] < w["need"]]
        assert not bad, (name, bad)
        page.evaluate(UNDO_THEME)


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


# ------------------------------------------------------------------ teaching views (issue 15)


ABLATED_PROB = """
def __vx_ablated(heads, t):
    import torch
    with vx.ablate_heads(model, heads), torch.no_grad():
        return f"{float(model(x[:1]).softmax(-1)[0, t]):.3f}"
"""


def teaching_click(page, testid: str, index: int, gh: int, gw: int) -> None:
    page.locator(f"[data-testid={testid}]").scroll_into_view_if_needed()
    box = page.locator(f"[data-testid={testid}]").bounding_box()
    r, c = divmod(index, gw)
    page.mouse.click(box["x"] + (c + 0.5) * box["width"] / gw, box["y"] + (r + 0.5) * box["height"] / gh)


def test_teaching_views_in_lab(shots: Path) -> None:
    """Each new control once: lens chart (a click picks the block, redrawn with no kernel message),
    the Similarity tool on the main canvas, the head grid coloured by attribution (direct, then ablation
    with two heads off and reset), patching, and the tour (buttons and the n key)."""
    cells = [explorer_cells(METHODS)[0].replace('title="toy shapes")', 'title="toy shapes", tour="default")')]
    server = JupyterServer("lab")
    server.start()
    try:
        server.write_notebook("teach.ipynb", cells)
        with browser() as b:
            page = b.new_page(viewport={"width": 1300, "height": 1400})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            open_and_run(page, server, "teach.ipynb")
            page.locator("[data-testid=vx-teach]").wait_for(timeout=180_000)
            kc = server.kernel_client("teach.ipynb")
            try:
                nl, nh, (gh, gw) = kernel_eval(kc, "[w.num_layers, w.num_heads, w.grid]")
                # 1. logit lens: chart and map arrive once; clicking the chart's left end picks block 0
                page.locator("[data-testid=vx-lens-chart]").wait_for(timeout=120_000)
                top = kernel_eval(kc, "w.class_names[int(vx.logit_lens(model, x[:1]).readout[0, -1].argmax())]")
                assert top in page.locator("[data-testid=vx-lens-legend]").inner_text()
                page.locator("[data-testid=vx-lens-chart]").scroll_into_view_if_needed()
                chart = page.locator("[data-testid=vx-lens-chart]").bounding_box()
                page.mouse.click(chart["x"] + 24, chart["y"] + chart["height"] / 2)
                kernel_poll(kc, "w.layer", lambda v: v == 0)
                page.wait_for_function("() => document.querySelector('[data-testid=vx-lens-map]').dataset.layer === '0'")
                assert page.evaluate("window.__vx.views[0].debug.teaching.lensMessages") == 1

                # 2. the "Similarity" tool beside "Pick query patch": a click on patch 5 of the main canvas
                #    shows its similarity map at the current block; the value under the pointer is Python's
                page.locator("[data-testid=vx-tool-similarity]").click()
                teaching_click(page, "vx-canvas", 5, gh, gw)
                page.wait_for_function("() => document.querySelector('[data-testid=vx-canvas]').dataset.sim === '0|0|5'",
                                       timeout=60_000)
                assert "similarity to patch 5 after block 0" in page.locator("[data-testid=vx-canvas]").get_attribute("data-map")
                want = kernel_eval(kc, "float(vx.token_similarity(model, x[:1], 0, 5)[0].flatten()[6])")
                box = page.locator("[data-testid=vx-canvas]").bounding_box()
                page.mouse.move(box["x"] + 6.5 * box["width"] / gw, box["y"] + 0.5 * box["height"] / gh)
                got = page.locator("[data-testid=vx-readout]").inner_text().split(":")[-1]
                assert abs(float(got) - want) < 1e-3, (got, want)
                page.locator("[data-testid=vx-tool-brush]").click()
                page.wait_for_function("() => document.querySelector('[data-testid=vx-canvas]').dataset.sim === ''")

                # 3. the head grid coloured by attribution: direct values are Python's; ablation mode, two
                #    heads off (in two layers), the probabilities Python computes; reset
                page.locator("[data-testid=vx-attr-direct]").click()
                page.locator("[data-testid=vx-head-1][data-attr-value]").wait_for(timeout=120_000)
                assert page.locator("[data-testid=vx-heads] [data-attr-value]").count() == nh  # every head, not the mean
                want = kernel_eval(kc, "float(vx.head_attribution(model, x[:1], w.target).direct[0, 0, 1])")
                got = float(page.locator("[data-testid=vx-head-1]").get_attribute("data-attr-value"))
                assert abs(got - want) < 1e-4 * max(1.0, abs(want)), (got, want)
                page.locator("[data-testid=vx-attr-ablation]").click()
                page.locator("[data-testid=vx-head-1]").click()
                page.get_by_text("with 1 head switched off").wait_for(timeout=60_000)
                kc.execute_interactive(f"w.layer = {nl - 1}", timeout=60, store_history=False)
                page.wait_for_function(f"() => document.querySelector('[data-testid=vx-layer]').value === '{nl - 1}'")
                page.locator("[data-testid=vx-head-0]").click()
                page.get_by_text("with 2 heads switched off").wait_for(timeout=60_000)
                assert page.locator("[data-testid=vx-head-0]").get_attribute("aria-pressed") == "true"
                kc.execute_interactive(ABLATED_PROB, timeout=60, store_history=False)
                want = kernel_eval(kc, f"__vx_ablated({{0: [1], {nl - 1}: [0]}}, w.target)")
                assert want in page.locator("[data-testid=vx-attr-result]").inner_text()
                page.locator("[data-testid=vx-attr-reset]").click()
                assert page.locator("[data-testid=vx-attr-result]").inner_text().strip() == ""
                assert page.locator("[data-testid=vx-head-0]").get_attribute("aria-pressed") == "false"
                kc.execute_interactive("w.layer = 0", timeout=60, store_history=False)
                page.wait_for_function("() => document.querySelector('[data-testid=vx-layer]').value === '0'")

                # 4. patching: patch 0 and 1 from image 2 at block 0
                page.locator("[data-testid=vx-tab-patching]").click()
                teaching_click(page, "vx-patch-map", 0, gh, gw)
                teaching_click(page, "vx-patch-map", 1, gh, gw)
                page.get_by_text("patches 0,1 from image 2").wait_for(timeout=60_000)
                want = kernel_eval(kc, "f'{float(vx.patch_activations(model, x[1:2], x[:1], 0, [0, 1])[0, w.target]):.3f}'")
                assert want in page.locator("[data-testid=vx-patch-result]").inner_text()

                # 5. tour: Next, the n key, Back; each step sets the views
                page.locator("[data-testid=vx-tour-next]").click()
                kernel_poll(kc, "w.tour_step", lambda v: v == 0)
                assert page.locator("[data-testid=vx-tour-title]").inner_text() == "Patches"
                page.locator("[data-testid=vx-tour-next]").focus()
                page.keyboard.press("n")
                kernel_poll(kc, "w.tour_step", lambda v: v == 1)
                assert page.locator("[data-testid=vx-tool-similarity]").get_attribute("aria-checked") == "true"
                page.locator("[data-testid=vx-tour-next]").click()
                kernel_poll(kc, "[w.tour_step, w.layer, w.method]", lambda v: v == [2, 0, "raw_attention"])
                assert page.locator("[data-testid=vx-attr-direct]").get_attribute("aria-checked") == "true"
                page.locator("[data-testid=vx-tour-back]").click()
                kernel_poll(kc, "w.tour_step", lambda v: v == 1)
                page.locator("[data-testid=vx-teach]").screenshot(path=str(shots / "teaching-lab.png"))
            finally:
                kc.stop_channels()
            assert not [e for e in errors if "vx" in e or "widget" in e.lower()], errors
    except Exception:
        print(server.log())
        raise
    finally:
        server.stop()
