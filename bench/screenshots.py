"""Screenshots of the Explorer for the README: ``docs/explorer.png`` (JupyterLab Light) and
``docs/explorer_dark.png`` (JupyterLab Dark), each kept under ~300 KB.

    python bench/screenshots.py [--out docs]

Runs JupyterLab 4 headless with Debian's Chromium on the embedded model (or its seeded
stand-in), brushes a few patches, computes the deletion/insertion curves and opens the
compare grid, then shoots the widget in both themes. Needs chromium and the built front end.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.widget.jupyter_harness import (
    JupyterServer,
    browser,
    explorer_cells,
    kernel_eval,
    kernel_poll,
    missing_requirements,
    open_and_run,
)

LIMIT = 300 * 1024


def shrink(png: bytes, limit: int = LIMIT) -> bytes:
    """The PNG as is when under ``limit``, else palette-quantised (256, then fewer colours)."""
    if len(png) <= limit:
        return png
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (256, 128, 64):
        buf = io.BytesIO()
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True)
        if buf.tell() <= limit:
            return buf.getvalue()
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    why = missing_requirements()
    if why:
        print(f"skipped: {why}")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = JupyterServer("lab")
    server.start()
    try:
        server.write_notebook("shots.ipynb", explorer_cells(["raw_attention", "rollout", "chefer_lrp", "vit_cx"]))
        with browser() as b:
            page = b.new_page(viewport={"width": 1280, "height": 1500}, device_scale_factor=1)
            open_and_run(page, server, "shots.ipynb")
            root = page.locator("[data-testid=vx-root]")
            root.wait_for(timeout=300_000)
            kc = server.kernel_client("shots.ipynb")
            try:
                gh, gw = kernel_eval(kc, "w.grid")
                r0 = gh // 2
                kernel_eval(kc, f"setattr(w, 'method', 'chefer_lrp') or setattr(w, 'brushed', "
                                f"[{r0 * gw + gw // 2 - 1}, {r0 * gw + gw // 2}]) or w.wait(120)", timeout=180)
                kernel_eval(kc, "w.compute_curves(block=True) or setattr(w, 'compare', True) or w.wait(300)", timeout=400)
                kernel_poll(kc, "w.intervention.get('causal_score') is not None", bool, timeout=120)
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('.vx-tile')).every(t => t.dataset.state === 'ready')"
                    " && document.querySelector('[data-testid=vx-curve-deletion]')",
                    timeout=120_000,
                )
                page.wait_for_timeout(500)
                (out / "explorer.png").write_bytes(shrink(root.screenshot()))
                page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
                page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=60_000)
                page.wait_for_timeout(1000)
                (out / "explorer_dark.png").write_bytes(shrink(root.screenshot()))
            finally:
                kc.stop_channels()
    finally:
        server.stop()
    for name in ("explorer.png", "explorer_dark.png"):
        print(f"{out / name}: {(out / name).stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
