"""Exports of the widgets: the built front-end bundles, the one standalone offline page
template (the Explorer's and the Atlas's ``to_html``: the bundle, the state and the binary
arrays inlined, no kernel, no network), the Explorer's page and its static plotly figure."""

from __future__ import annotations

import base64
import gzip
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import write_text_atomically
from ..errors import InputError
from . import _serialize as ser
from ._traits import ATTN

if TYPE_CHECKING:
    from ._explorer import Explorer

STATIC = Path(__file__).resolve().parent / "static"


def bundle(name: str, fallback: str) -> Path | str:
    """The built bundle ``static/name``, or ``fallback`` (an ES module saying it is not built)."""
    p = STATIC / name
    return p if p.exists() else fallback


def built(name: str) -> Path:
    """``static/name``; FileNotFoundError saying how to build it when it is missing."""
    p = STATIC / name
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: build the front end with `npm ci && npm run build` in js/")
    return p


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{margin:16px;font-family:system-ui,sans-serif}}{css}</style></head>
<body class="vx-standalone"><div id="vx-app"></div>
{scripts}<script type="application/json" id="vx-bundle">{bundle}</script>
<script type="module">
const src = JSON.parse(document.getElementById("vx-bundle").textContent);
const url = URL.createObjectURL(new Blob([src], {{ type: "text/javascript" }}));
const mod = await import(url);
{mount}
</script></body></html>
"""


def standalone_page(*, title: str, css_name: str, js_name: str, scripts: list[tuple[str, str, str | None, str]],
                    mount: str, path: str | Path | None = None) -> str:
    """One offline page: ``title`` (escaped), ``static/css_name`` inlined, ``static/js_name`` as a JSON
    string imported from a blob URL, ``scripts`` as ``(id, type, data-encoding or None, text)`` data
    elements (text already safe inside ``<script>``: ``ser.script_json`` or base64), then ``mount``,
    the module code that mounts the view from them (``mod`` is the bundle). Written atomically to
    ``path`` when given."""
    js_path = built(js_name)
    css_path = STATIC / css_name
    parts = "".join(
        f'<script type="{kind}" id="{eid}"{"" if enc is None else f" data-encoding={chr(34)}{enc}{chr(34)}"}>'
        f"{text}</script>\n"
        for eid, kind, enc, text in scripts
    )
    page = _PAGE.format(
        title=html.escape(title),
        css=css_path.read_text(encoding="utf-8") if css_path.exists() else "",
        scripts=parts,
        bundle=ser.script_json(js_path.read_text(encoding="utf-8")),
        mount=mount.strip(),
    )
    if path is not None:
        write_text_atomically(path, page)
    return page


def gzip_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, 6, mtime=0)).decode("ascii")


# ------------------------------------------------------------------ the Explorer

_EXPLORER_MOUNT = """
const blob = await mod.gunzipBase64(document.getElementById("vx-blob").textContent);
window.__vxModel = mod.mountStandalone(document.getElementById("vx-app"),
  JSON.parse(document.getElementById("vx-data").textContent), blob);
"""


def explorer_html(w: Explorer, path: str | Path | None, methods: str) -> str:
    """``Explorer.to_html``: the state, every image's attention and the maps (``methods``: ``"cached"``
    or ``"all"``), every binary array back to back (8-byte aligned) in one gzipped blob."""
    if methods not in ("cached", "all"):
        raise InputError(f"methods must be 'cached' or 'all', got {methods!r}")
    built("widget.js")
    w.wait()
    blob = bytearray()

    def put(data: bytes | memoryview) -> list[int]:
        blob.extend(b"\0" * (-len(blob) % 8))
        at = len(blob)
        blob.extend(data)
        return [at, len(blob) - at]

    attn = []
    for i in range(w.num_images):
        if not w._ensure_image(i)["attn"]:  # a classifier without token attention
            continue
        for msg, q, scales in w._attention_messages(i):
            attn.append({**{k: v for k, v in msg.items() if k != "kind"}, "data": put(q.tobytes()),
                         "scales": put(scales.tobytes())})
    if methods == "all":
        for i in range(w.num_images):
            tgt = w.target if i == w.image_index else w._ensure_image(i)["top"]
            for m in w.methods:
                if m != ATTN:
                    try:
                        w._compute_map(w._map_key(i, m, tgt))
                    except Exception as e:  # noqa: BLE001 - export what works
                        w.errors.append(f"{m} on image {i}: {e}")
    maps = []
    for key, ex in list(w._maps.items()):
        if key[3] != w.params_version:
            continue
        msg = w._map_message(key, ex)
        maps.append({"key": msg["key"], "data": put(msg["data"]), "shape": msg["shape"],
                     "dtype": msg["dtype"], "signed": msg["signed"]})
    skip = {"_esm", "_css", "layout", "tabbable", "tooltip", "_dom_classes", "comm", "keys", "log"}
    state = {k: getattr(w, k) for k in w.keys if not k.startswith("_view") and not k.startswith("_model")
             and k not in skip}
    state["_uid"] = w._uid
    state["status"] = {"busy": False, "label": "", "error": None}
    state["map_payload"] = {}
    data = {"state": ser.jsonable_state(state), "attn": attn, "maps": maps}
    return standalone_page(
        title=w.title or "vit_explore Explorer", css_name="widget.css", js_name="widget.js",
        scripts=[("vx-data", "application/json", None, ser.script_json(data)),
                 ("vx-blob", "application/octet-stream", "gzip+base64", gzip_b64(bytes(blob)))],
        mount=_EXPLORER_MOUNT, path=path,
    )


def explorer_figure(w: Explorer) -> Any:
    """``Explorer.figure``: top-k before/after and, once computed for the current view, the curves."""
    import plotly.graph_objects as go

    d = w._ensure_image(w.image_index)
    before = w._topk_payload(d["probs"])
    cv = w.curves
    has_curves = bool(cv) and "deletion" in cv and cv.get("key") == f"{w._view_js(w._view_state())}@{w.target}"
    if has_curves:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], subplot_titles=(
            f"Top-{w._k} classes, image {w.image_index + 1}",
            f"{cv['label']}: deletion / insertion of “{cv['target_name']}”"))
        kw: dict[str, Any] = {"row": 1, "col": 1}
    else:
        fig = go.Figure()
        kw = {}
    r = w.intervention
    if r and r.get("after") and r.get("patches") == list(w.brushed):
        idx = [c["index"] for c in r["after"]]
        names = [w.class_names[j] for j in idx]
        fig.add_bar(name="before", x=names, y=[float(d["probs"][j]) for j in idx], **kw)
        fig.add_bar(name=f"after ({len(r['patches'])} patches, {r['mode']})", x=names,
                    y=[c["prob"] for c in r["after"]], **kw)
        fig.update_layout(barmode="group")
    else:
        fig.add_bar(name="probability", x=[c["name"] for c in before], y=[c["prob"] for c in before], **kw)
    if has_curves:
        fig.add_scatter(name=f"deletion (AUC {cv['auc_deletion']:.3f}, lower is better)", x=cv["x"],
                        y=cv["deletion"], mode="lines", line={"color": "#d62728"}, row=1, col=2)
        fig.add_scatter(name=f"insertion (AUC {cv['auc_insertion']:.3f}, higher is better)", x=cv["x"],
                        y=cv["insertion"], mode="lines", line={"color": "#1f77b4", "dash": "dash"}, row=1, col=2)
        fig.update_yaxes(title_text="probability", range=[0, 1], row=1, col=1)
        fig.update_yaxes(title_text=f"p(“{cv['target_name']}”)", range=[0, 1], row=1, col=2)
        fig.update_xaxes(title_text="fraction of patches deleted / inserted", range=[0, 1], row=1, col=2)
        fig.update_layout(template="plotly_white")
        return fig
    fig.update_layout(title=f"Top-{w._k} classes, image {w.image_index + 1}", yaxis_title="probability",
                      yaxis_range=[0, 1], template="plotly_white")
    return fig
