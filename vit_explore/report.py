"""Write a benchmark's results: CSV (one row per method), JSON (everything) and a
self-contained HTML report with plotly figures (plotly.js inlined, so it opens offline)."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from ._files import write_bytes_atomically, write_text_atomically
from .evaluation import METRICS, BenchResult


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "tolist"):
        return _clean(v.tolist())
    return v


def write_csv(result: BenchResult, path: str | Path) -> Path:
    """One row per method (baselines included), one column per metric; empty cell = not applicable."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["method", *result.metrics, "seconds_per_image"])
    for m in result.methods:
        vals = [result.table[m].get(k) for k in result.metrics]
        w.writerow([m, *("" if v is None or math.isnan(v) else repr(float(v)) for v in vals),
                    result.timing.get(m, "")])
    return write_bytes_atomically(path, buf.getvalue().encode("utf-8"))


def write_json(result: BenchResult, path: str | Path) -> Path:
    """Everything: metadata, metric definitions, table, mean curves, timing, errors (NaN -> null)."""
    return write_text_atomically(path, json.dumps(_clean(result.to_dict()), indent=2))


def figures(result: BenchResult) -> list:
    """Plotly figures: one line chart per perturbation metric (mean curves of every method)
    and one bar chart per metric (methods side by side, baselines in grey)."""
    import plotly.graph_objects as go

    figs = []
    for metric in result.metrics:
        if not any(metric in result.curves.get(m, {}) for m in result.methods):
            continue
        fig = go.Figure()
        for m in result.methods:
            c = result.curves.get(m, {}).get(metric)
            if c:
                fig.add_trace(go.Scatter(x=c["x"], y=c["y"], mode="lines", name=m,
                                         line={"dash": "dot"} if m.startswith("baseline:") else None))
        ylab = "top-1 accuracy" if metric.startswith("chefer") else "p(top-1 class)"
        fig.update_layout(title=f"{metric}: {METRICS[metric][0]}", xaxis_title="fraction perturbed",
                          yaxis_title=ylab, template="plotly_white", height=420)
        figs.append(fig)
    for metric in result.metrics:
        ys = [result.table[m].get(metric) for m in result.methods]
        colors = ["#999999" if m.startswith("baseline:") else "#3366cc" for m in result.methods]
        fig = go.Figure(go.Bar(x=result.methods, y=[None if v is None or math.isnan(v) else v for v in ys],
                               marker_color=colors))
        arrow = "higher is better" if METRICS[metric][1] else "lower is better"
        fig.update_layout(title=f"{metric} ({arrow}): {METRICS[metric][0]}", template="plotly_white", height=380)
        figs.append(fig)
    return figs


def write_html(result: BenchResult, path: str | Path) -> Path:
    """A single HTML file with the table and every figure; plotly.js is embedded once."""
    path = Path(path)
    parts = []
    for i, fig in enumerate(figures(result)):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    meta = result.meta
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", *result.metrics, "s/img"])
    rows = []
    for m in result.methods:
        cells = [result.table[m].get(k) for k in result.metrics]
        tds = "".join("<td>—</td>" if v is None or math.isnan(v) else f"<td>{v:.4f}</td>" for v in cells)
        t = result.timing.get(m)
        rows.append(f"<tr><td>{html.escape(m)}</td>{tds}<td>{'' if t is None else f'{t:.3f}'}</td></tr>")
    defs = "".join(
        f"<li><b>{k}</b> ({'↑' if METRICS[k][1] else '↓'}): {html.escape(METRICS[k][0])}</li>" for k in result.metrics
    )
    errs = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in result.errors.items())
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>vit_explore benchmark: {html.escape(str(meta.get('dataset')))}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}</style></head>
<body><h1>vit_explore benchmark</h1>
<p>{html.escape(json.dumps(_clean(meta)))}</p>
<table><tr>{head}</tr>{''.join(rows)}</table>
<ul>{defs}</ul>{f'<h3>Errors</h3><ul>{errs}</ul>' if errs else ''}
{''.join(parts)}
</body></html>"""
    return write_text_atomically(path, doc)


def write_all(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    """``results.csv``, ``results.json`` and ``report.html`` in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"csv": write_csv(result, out / "results.csv"), "json": write_json(result, out / "results.json"),
            "html": write_html(result, out / "report.html")}
