// The image and overlay canvas: the image with the current map (method map, raw attention, a ViT-CX
// mask or a similarity map), the colour scale, the value under the pointer, and the pointer and keyboard
// interaction on the patches (brush, erase, query pick, similarity pick).
import { applyStroke, cellAt, cellsOnSegment, describeCell, moveCursor, rectCells, type Grid } from "./brush";
import { colorize, normalize, signedAlpha } from "./colormap";
import { ATTN } from "./contract";
import { attnRow } from "./decode";
import { h } from "./dom";
import { composeExport } from "./exportpng";
import { exportName, fmt } from "./format";
import { maskedImage, selectedMask } from "./masks";
import { SIM_ABOUT, type similarityTool } from "./similarity";
import type { CachedMap } from "./store";
import type { ViewCtx } from "./view_context";

type Shown = CachedMap & { label: string };

export function canvasPanel(ctx: ViewCtx, sim: ReturnType<typeof similarityTool>) {
  const { model, store } = ctx;
  const canvas = h("canvas", {
    class: "vx-canvas",
    "data-testid": "vx-canvas",
    tabindex: "0",
    role: "application",
    "aria-label":
      "Image with the explanation map. Arrows move the patch cursor, Space marks a patch, Shift+arrows extend, Enter runs the intervention, Delete clears.",
  });
  const mapNote = h("div", { class: "vx-mapnote", "data-testid": "vx-mapnote" });
  const readout = h("div", { class: "vx-readout", "data-testid": "vx-readout" }, " ");
  const about = h("p", { class: "vx-about vx-muted", "data-testid": "vx-about" });
  const legend = h("div", { class: "vx-legend", "data-testid": "vx-legend" });
  const legendBar = h("canvas", { class: "vx-legendbar", width: "128", height: "8", "aria-hidden": "true" });
  const legendLo = h("span");
  const legendMid = h("span", { class: "vx-legendmid" });
  const legendHi = h("span");
  const legendNote = h("span", { class: "vx-legendnote" });
  const legendScale = h("span", { class: "vx-legendscale" });
  legendScale.append(legendBar, legendMid);
  legend.append(legendLo, legendScale, legendHi, legendNote);
  const wrap = h("div", { class: "vx-canvaswrap" });
  wrap.append(canvas, mapNote);

  let cursor = 0;
  let anchor = -1;
  let stroke: { erase: boolean; x: number; y: number } | null = null;
  let hover = -1;
  let lastMap: Shown | null = null;
  let legendState = { cmap: "viridis", lo: 0, hi: 0, signed: false };
  const overlay = document.createElement("canvas");

  function currentMap(): Shown | { note: string } {
    const s = sim.current();
    if (s) return s;
    const method = model.get("method");
    const img = model.get("image_index");
    if (method === ATTN) {
      const layer = model.get("layer");
      const l = store.getAttn(img, layer);
      if (!l) return { note: "loading attention…" };
      const head = model.get("head");
      const q = model.get("query");
      const hi = head < 0 ? l.heads - 1 : head;
      const values = attnRow(l, hi, q < 0 ? 0 : q + 1);
      const who = q < 0 ? "CLS row" : `row of patch ${q}`;
      return { values, signed: false, shape: ctx.grid(), label: `attention · layer ${layer} · ${head < 0 ? "mean of heads" : `head ${head}`} · ${who}` };
    }
    const p = model.get("map_payload");
    const key = ctx.mapKey(method);
    if (p && p.key === key && p.error) return { note: p.error };
    if (p && p.key && p.data && p.shape) {
      try {
        store.putMapPayload({ key: p.key, data: p.data, shape: p.shape, dtype: p.dtype, signed: !!p.signed });
      } catch (e) {
        return { note: String(e) };
      }
    }
    const hit = store.maps.get(key);
    const label = ctx.methodInfo(method).label ?? method;
    const tgt = ctx.methodInfo(method).class_specific ? ` · class “${ctx.className(model.get("target"))}”` : "";
    if (hit) return { ...hit, label: `${label}${tgt}` };
    return { note: ctx.offline() ? `${label} was not computed for this export` : `computing ${label}…` };
  }

  function gridGeom(): Grid {
    const [gh, gw] = ctx.grid();
    const { w, h: hh } = ctx.size();
    return { gh, gw, width: w, height: hh };
  }

  function drawLegend(cmap: string, lo: number, hi: number, isSigned: boolean, similarity = false): void {
    legendState = { cmap, lo, hi, signed: isSigned };
    const g = legendBar.getContext("2d")!;
    const img = g.createImageData(128, 1);
    const t = new Float32Array(128).map((_, i) => i / 127);
    colorize(t, cmap, 255, img.data);
    for (let r = 0; r < 8; r++) g.putImageData(img, 0, r);
    legendLo.textContent = lo.toPrecision(3);
    legendHi.textContent = hi.toPrecision(3);
    legendMid.textContent = isSigned ? "0" : "";
    legendNote.textContent = similarity
      ? "cosine similarity to the picked patch: blue unlike, red alike; 0 shows the image"
      : isSigned ? "symmetric: blue against, red for the class; 0 shows the image" : "low → high";
  }

  function updateReadout(): void {
    const [, gw] = ctx.grid();
    if (hover < 0) {
      readout.textContent = lastMap ? lastMap.label : " ";
      return;
    }
    const v = lastMap && lastMap.values.length > hover ? lastMap.values[hover] : NaN;
    readout.textContent = `${describeCell(hover, gw)}: ${Number.isFinite(v) ? v.toPrecision(4) : "–"}`;
  }

  function ring(g: CanvasRenderingContext2D, cell: number, gw: number, cw: number, ch: number): void {
    const x = (cell % gw) * cw + cw / 2;
    const y = Math.floor(cell / gw) * ch + ch / 2;
    g.strokeStyle = "#fff";
    g.lineWidth = 3;
    g.beginPath();
    g.arc(x, y, Math.min(cw, ch) * 0.35, 0, 2 * Math.PI);
    g.stroke();
    g.strokeStyle = "#e6007e";
    g.lineWidth = 1.5;
    g.stroke();
  }

  function draw(): void {
    const t0 = performance.now();
    const { w, h: hh } = ctx.size();
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hh * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hh * dpr);
      canvas.style.width = `${w}px`;
      canvas.style.height = `${hh}px`;
    }
    const g = canvas.getContext("2d")!;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hh);
    const base = ctx.image.canvas;
    if (base) {
      g.imageSmoothingEnabled = true;
      g.drawImage(base, 0, 0, w, hh);
    }
    const [gh, gw] = ctx.grid();
    const m = currentMap();
    const s = sim.current();
    canvas.dataset.sim = s && "values" in s ? s.key : "";
    about.textContent = s ? SIM_ABOUT : ctx.methodInfo(model.get("method")).about ?? "";
    const sm = "values" in m && !s ? selectedMask(ctx) : null;
    if (sm && base) {
      lastMap = m as Shown;
      mapNote.hidden = true;
      g.imageSmoothingEnabled = true;
      g.drawImage(maskedImage(ctx, sm, base), 0, 0, w, hh);
      canvas.setAttribute("data-map", `ViT-CX mask ${sm.k} · causal score ${fmt(sm.score)}`);
    } else if ("values" in m) {
      lastMap = m;
      mapNote.textContent = "";
      mapNote.hidden = true;
      const cmap = ctx.chooseCmap(m.signed);
      const n = normalize(m.values, m.signed);
      overlay.width = gw;
      overlay.height = gh;
      const octx = overlay.getContext("2d")!;
      const img = octx.createImageData(gw, gh);
      colorize(n.t, cmap, 255, img.data);
      if (m.signed) signedAlpha(n.t, img.data);
      octx.putImageData(img, 0, 0);
      g.globalAlpha = Number(model.get("opacity") ?? 0.6);
      g.imageSmoothingEnabled = !!model.get("smooth");
      g.drawImage(overlay, 0, 0, w, hh);
      g.globalAlpha = 1;
      drawLegend(cmap, n.lo, n.hi, m.signed, !!s);
      canvas.setAttribute("data-map", m.label);
    } else {
      mapNote.textContent = m.note;
      mapNote.hidden = false;
    }
    const cw = w / gw;
    const ch = hh / gh;
    if (model.get("show_grid")) {
      g.strokeStyle = ctx.theme.fg;
      g.globalAlpha = 0.25;
      g.lineWidth = 1;
      g.beginPath();
      for (let c = 1; c < gw; c++) {
        g.moveTo(Math.round(c * cw) + 0.5, 0);
        g.lineTo(Math.round(c * cw) + 0.5, hh);
      }
      for (let r = 1; r < gh; r++) {
        g.moveTo(0, Math.round(r * ch) + 0.5);
        g.lineTo(w, Math.round(r * ch) + 0.5);
      }
      g.stroke();
      g.globalAlpha = 1;
    }
    // brushed patches: light veil + accent outline (not colour alone: a hatch line too)
    for (const p of ctx.brush.pending) {
      const x = (p % gw) * cw;
      const y = Math.floor(p / gw) * ch;
      g.fillStyle = "rgba(255,255,255,0.45)";
      g.fillRect(x, y, cw, ch);
      g.strokeStyle = "#000";
      g.lineWidth = 1;
      g.beginPath();
      g.moveTo(x, y + ch);
      g.lineTo(x + cw, y);
      g.stroke();
      g.strokeStyle = ctx.theme.accent;
      g.lineWidth = 2;
      g.strokeRect(x + 1, y + 1, cw - 2, ch - 2);
    }
    const q = model.get("query");
    if (s && "values" in s) ring(g, s.query, gw, cw, ch);
    else if (q >= 0 && model.get("method") === ATTN) ring(g, q, gw, cw, ch);
    if (document.activeElement === canvas) {
      g.setLineDash([3, 2]);
      g.strokeStyle = "#ff0";
      g.lineWidth = 2;
      g.strokeRect((cursor % gw) * cw + 1, Math.floor(cursor / gw) * ch + 1, cw - 2, ch - 2);
      g.setLineDash([]);
    }
    updateReadout();
    ctx.debug.draws++;
    ctx.debug.lastDrawMs = performance.now() - t0;
  }

  function exportPng(): void {
    const method = model.get("method");
    const cs = !!ctx.methodInfo(method).class_specific;
    const num = model.get("image_index") + 1;
    const cname = cs ? ctx.className(model.get("target")) : null;
    const out = composeExport(canvas, {
      title: `${model.get("title") || "vit-explore"} · image ${num} of ${model.get("num_images")}`,
      label: canvas.getAttribute("data-map") || (ctx.methodInfo(method).label ?? method),
      legend: lastMap ? legendState : null,
      fg: ctx.theme.fg,
      bg: getComputedStyle(ctx.root).getPropertyValue("--vx-bg").trim() || "#fff",
    });
    const a = document.createElement("a");
    a.download = exportName(num, method, cname);
    a.href = out.toDataURL("image/png");
    ctx.root.append(a);
    a.click();
    a.remove();
  }

  // ---------- pointer ----------
  const local = (e: PointerEvent) => {
    const r = canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  };
  ctx.on<PointerEvent>(canvas, "pointerdown", (e) => {
    if (e.button !== 0) return;
    const { x, y } = local(e);
    const cell = cellAt(gridGeom(), x, y);
    if (cell < 0) return;
    cursor = cell;
    const tool = ctx.brush.tool;
    if (tool === "query") {
      ctx.toAttention({ query: model.get("query") === cell ? -1 : cell });
      return;
    }
    if (tool === "similarity") {
      sim.pick(cell);
      return;
    }
    if (ctx.offline()) return;
    canvas.setPointerCapture(e.pointerId);
    stroke = { erase: tool === "erase" || e.altKey, x, y };
    ctx.brush.pending = applyStroke(ctx.brush.pending, [cell], stroke.erase);
    draw();
    e.preventDefault();
  });
  ctx.on<PointerEvent>(canvas, "pointermove", (e) => {
    const { x, y } = local(e);
    const geom = gridGeom();
    hover = cellAt(geom, x, y);
    if (stroke) {
      ctx.brush.pending = applyStroke(ctx.brush.pending, cellsOnSegment(geom, stroke.x, stroke.y, x, y), stroke.erase);
      stroke.x = x;
      stroke.y = y;
      draw();
    } else updateReadout();
  });
  const endStroke = () => {
    if (!stroke) return;
    stroke = null;
    ctx.ui.commitBrush();
  };
  ctx.on(canvas, "pointerup", endStroke);
  ctx.on(canvas, "pointercancel", endStroke);
  ctx.on(canvas, "pointerleave", () => {
    hover = -1;
    updateReadout();
  });
  ctx.on(canvas, "focus", draw);
  ctx.on(canvas, "blur", draw);

  /** Keys on the focused canvas: cursor, marking, run, clear, query. True when handled. */
  function canvasKey(e: KeyboardEvent): boolean {
    const [gh, gw] = ctx.grid();
    const b = ctx.brush;
    if (e.key.startsWith("Arrow") || e.key === "Home" || e.key === "End") {
      const next = moveCursor(cursor, e.key, gh, gw);
      if (e.shiftKey && !ctx.offline()) {
        if (anchor < 0) anchor = cursor;
        b.pending = applyStroke(b.pending, rectCells(anchor, next, gw), false);
      } else anchor = -1;
      cursor = next;
      hover = cursor;
      draw();
      ctx.live.textContent = `${describeCell(cursor, gw)}${b.pending.has(cursor) ? ", marked" : ""}`;
      return true;
    } else if (e.key === " " && !ctx.offline()) {
      const was = b.pending.has(cursor);
      b.pending = applyStroke(b.pending, [cursor], was);
      draw();
      ctx.ui.showIntervention();
      ctx.live.textContent = `${describeCell(cursor, gw)} ${was ? "unmarked" : "marked"}; ${b.pending.size} marked. Enter runs the intervention.`;
      return true;
    } else if (e.key === "Enter" && !ctx.offline()) {
      ctx.ui.commitBrush();
      return true;
    } else if ((e.key === "Delete" || e.key === "Backspace" || e.key === "Escape") && !ctx.offline()) {
      b.pending = new Set();
      ctx.ui.commitBrush();
      return true;
    } else if (e.key === "q") {
      ctx.toAttention({ query: cursor });
      return true;
    }
    return false;
  }

  return { canvas, wrap, legend, readout, about, draw, exportPng, canvasKey, hasMap: () => lastMap !== null };
}
