"""End to end: the Atlas in a real JupyterLab and headless Chromium (render, click a point, brush a
cluster's mean map, read the flip rates), and its offline export in the same browser.

Run with ``python -m pytest -q -m ui tests/widget/test_atlas_browser.py``; skips cleanly when chromium,
playwright or the built front end are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jupyter_harness import JupyterServer, browser, kernel_eval, kernel_poll, missing_requirements, open_and_run

pytestmark = [pytest.mark.ui, pytest.mark.slow]

_why = missing_requirements()
if not _why and not (Path(__file__).resolve().parents[2] / "vit_explore/widget/static/atlas.js").exists():
    _why = "the Atlas front end is not built: run `npm ci && npm run build` in js/"
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))

SETUP = """
import tempfile, torch
torch.set_num_threads(1)
import vit_explore as vx
model = vx.load_model("toy-shapes-spurious")
s = vx.survey(model, "shapes-spurious:150", method="rollout", store=tempfile.mkdtemp(), progress=False)
w = vx.Atlas(s, title="<b>atlas</b>")
w
"""


def test_atlas_in_jupyter(tmp_path) -> None:
    server = JupyterServer("lab")
    server.start()
    try:
        server.write_notebook("atlas.ipynb", [SETUP.strip()])
        with browser() as b:
            page = b.new_page(viewport={"width": 1300, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            open_and_run(page, server, "atlas.ipynb")
            page.locator(".vx-atlas-card").first.wait_for(timeout=240_000)
            assert page.locator(".vx-atlas-title").text_content() == "<b>atlas</b>"  # text, not HTML
            kc = server.kernel_client("atlas.ipynb")
            idx, k = kernel_eval(kc, "[s.indices(w.class_index).tolist(), s.n_clusters(w.class_index)]")
            assert page.locator(".vx-atlas-card").count() == k
            # 1. click a point of the scatter: Python sees the selection, the image and its map are drawn
            target = idx[len(idx) // 2]
            pt = page.evaluate(f"() => window.__vxAtlas.views[0].pointOf({target})")
            page.mouse.click(pt["x"], pt["y"])
            sel = kernel_poll(kc, "w.selected", lambda v: v >= 0, timeout=60)
            pts = page.evaluate(f"() => window.__vxAtlas.views[0].pointOf({sel})")
            assert abs(pts["x"] - pt["x"]) <= 8 and abs(pts["y"] - pt["y"]) <= 8  # the nearest point was picked
            page.wait_for_function(f"() => (document.querySelector('.vx-atlas-detail-text')?.textContent || '')"
                                   f".startsWith('image {sel}:')", timeout=60_000)
            # 2. brush three cells of the first card's mean map (top-left row): confirm runs in Python
            gh, gw = kernel_eval(kc, "list(s.grid)")
            box = page.locator(".vx-atlas-mean").first.bounding_box()
            cw, ch = box["width"] / gw, box["height"] / gh
            page.mouse.move(box["x"] + 0.5 * cw, box["y"] + 0.5 * ch)
            page.mouse.down()
            for col in (1, 2):
                page.mouse.move(box["x"] + (col + 0.5) * cw, box["y"] + 0.5 * ch, steps=3)
            page.mouse.up()
            conf = kernel_poll(kc, "w.confirmed", lambda v: bool(v) and v.get("patches") == [0, 1, 2], timeout=120)
            ref = kernel_eval(kc, "(lambda r: [r['flip_rate'], r['control_flip_rate']])"
                                  "(s.confirm(w.class_index, 0, patches=[0, 1, 2]))")
            assert conf["flip_rate"] == pytest.approx(ref[0]) and conf["control_flip_rate"] == pytest.approx(ref[1])
            # 3. the flip rates are shown: members' row, member vs control
            row = page.locator(".vx-atlas-result-row").nth(1)
            row.wait_for(timeout=30_000)
            assert row.locator(".vx-atlas-flip").text_content().startswith(f"{ref[0]:.2f}")
            assert row.locator(".vx-atlas-control").text_content().startswith(f"{ref[1]:.2f}")
            # 3b. "vs class": the cards show the contrast maps; "confirm hot patches" tests their hot patches
            page.locator(".vx-atlas-contrast input").check()
            assert kernel_poll(kc, "w.contrast", lambda v: v is True, timeout=60)
            page.wait_for_function("() => document.querySelector('.vx-atlas-mean')?.getAttribute('aria-label')"
                                   ".startsWith('contrast map')", timeout=30_000)
            kc_k = kernel_eval(kc, "next(k for k in range(s.n_clusters(w.class_index)) "
                                   "if s.hot_patches(w.class_index, k, contrast=True).any())")
            page.locator(".vx-atlas-confirm").nth(kc_k).click()
            hot = kernel_eval(kc, f"__import__('numpy').flatnonzero(s.hot_patches(w.class_index, {kc_k}, "
                                  f"contrast=True).ravel()).tolist()")
            conf = kernel_poll(kc, "w.confirmed", lambda v: bool(v) and v.get("patches") == hot, timeout=120)
            ref = kernel_eval(kc, f"s.confirm(w.class_index, {kc_k}, contrast=True)['flip_rate']")
            assert conf["flip_rate"] == pytest.approx(ref)
            page.locator(".vx-atlas").first.screenshot(path=str(tmp_path / "atlas.png"))
            # 4. the offline export renders in the same browser and a member click shows its image
            html = tmp_path / "atlas.html"
            kernel_eval(kc, f"w.to_html({str(html)!r}) and None")
            off = b.new_page(viewport={"width": 1300, "height": 1000})
            off.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
            off.goto(html.as_uri())
            off.locator(".vx-atlas-card").first.wait_for(timeout=30_000)
            assert off.locator(".vx-atlas-card").count() == k
            off.locator(".vx-atlas-member").first.click()
            off.wait_for_function("() => (document.querySelector('.vx-atlas-detail-text')?.textContent || '')"
                                  ".startsWith('image ')", timeout=10_000)
            assert not [e for e in errors if "atlas" in e.lower() or "vx" in e], errors
    except Exception:
        print(server.log())
        raise
    finally:
        server.stop()
