// One view of the Explorer: DOM, canvas drawing and interaction. All user strings go in as textContent.
import { applyStroke, cellAt, cellsOnSegment, describeCell, moveCursor, rectCells, sortedCells, type Grid } from "./brush";
import { colorize, COLORMAPS, DEFAULT_DIVERGING, DEFAULT_SEQUENTIAL, DIVERGING, normalize, signedAlpha } from "./colormap";
import { composeExport } from "./exportpng";
import { exportName, fmt, signedFmt as signed } from "./format";
import { applyMask, maskAt, maskOrder, polylinePoints, type Box } from "./charts";
import { attnRow, decodeMap, type MapPayload } from "./decode";
import { rgbCanvas, type ImagePayload } from "./rgb_canvas";
import type { CachedMap, Store } from "./store";
import { renderTeaching } from "./teaching";

/** The subset of the anywidget model API we use (the standalone shim implements the same). */
export interface Model {
  get(key: string): any;
  set(key: string, value: unknown): void;
  save_changes(): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event?: string | null, cb?: ((...args: any[]) => void) | null): void;
  send(content: unknown, callbacks?: unknown, buffers?: unknown[]): void;
}

interface ClassProb {
  index: number;
  name: string;
  prob: number;
}

interface Intervention {
  id?: number;
  image_index?: number;
  patches?: number[];
  mode?: string;
  keep?: boolean;
  target?: number;
  target_name?: string;
  before?: ClassProb[];
  after?: ClassProb[];
  target_before?: number;
  target_after?: number;
  delta?: number;
  causal_score?: number | null;
  new_top?: ClassProb;
  ms?: number;
  error?: string;
}

interface CurvesPayload {
  key?: string;
  pending?: boolean;
  error?: string;
  label?: string;
  target_name?: string;
  x?: number[];
  deletion?: number[];
  insertion?: number[];
  auc_deletion?: number;
  auc_insertion?: number;
  step?: number;
  patches?: number;
}

interface CounterfactualPayload {
  image_index?: number;
  found?: boolean;
  patches?: number[];
  tried?: number;
  mode?: string;
  order_by?: string;
  target_name?: string;
  target_before?: number;
  target_after?: number;
  new_name?: string | null;
  new_prob?: number | null;
}

interface MasksPayload {
  key?: string;
  K?: number;
  height?: number;
  width?: number;
  data?: DataView;
  scores?: number[];
}

type TilePayload = MapPayload & { key: string; method: string; signed?: boolean; pending?: boolean; error?: string };

type IntervenedMap = Partial<MapPayload> & {
  key?: string;
  label?: string;
  image_index?: number;
  patches?: number[];
  mode?: string;
  keep?: boolean;
  target?: number;
  signed?: boolean;
  image?: ImagePayload;
  error?: string;
};

const SVGNS = "http://www.w3.org/2000/svg";
function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}, text?: string): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

export const MODES = ["noise", "blur", "mean", "zero", "drop"];
const ATTN = "raw_attention";
const CANVAS_MAX = 384;
const CANVAS_MIN = 192;

let viewCounter = 0;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text?: string,
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}


export interface DebugInfo {
  draws: number;
  lastDrawMs: number;
  strokeEndAt: number;
  resultAt: number;
  results: number;
  lastResultId: number;
}

export function renderView(model: Model, el: HTMLElement, store: Store, signal: AbortSignal): DebugInfo {
  const vid = ++viewCounter;
  const id = (s: string) => `vx${vid}-${s}`;
  const debug: DebugInfo = { draws: 0, lastDrawMs: 0, strokeEndAt: 0, resultAt: 0, results: 0, lastResultId: -1 };
  const on = (t: EventTarget, ev: string, cb: (e: any) => void) => t.addEventListener(ev, cb, { signal });
  const listen = (ev: string, cb: () => void) => {
    model.on(ev, cb);
    signal.addEventListener("abort", () => model.off(ev, cb));
  };

  // ---------- DOM ----------
  const root = h("div", { class: "vx-root", "data-testid": "vx-root", "data-lm-suppress-shortcuts": "true" });
  const bar = h("div", { class: "vx-bar" });
  const title = h("span", { class: "vx-title" });
  const prevImg = h("button", { class: "vx-btn", "aria-label": "Previous image", "data-testid": "vx-prev-image" }, "◀");
  const imgLabel = h("span", { class: "vx-imglabel", "aria-live": "polite" });
  const nextImg = h("button", { class: "vx-btn", "aria-label": "Next image", "data-testid": "vx-next-image" }, "▶");
  const status = h("span", { class: "vx-status", role: "status", "data-testid": "vx-status" });
  const spinner = h("span", { class: "vx-spinner", "aria-hidden": "true" });
  const statusText = h("span");
  status.append(spinner, statusText);
  const helpBtn = h("button", { class: "vx-btn", "aria-expanded": "false", "aria-controls": id("help"), "data-testid": "vx-help-btn", title: "Keyboard shortcuts" }, "?");
  const pngBtn = h("button", { class: "vx-btn", "data-testid": "vx-png", title: "Save what is on screen (image, map, colour scale) as PNG" }, "PNG");
  const compareBtn = h("button", { class: "vx-btn", "aria-pressed": "false", "data-testid": "vx-compare-toggle", title: "Show several methods side by side for this image and class" }, "Compare");
  bar.append(title, prevImg, imgLabel, nextImg, status, h("span", { class: "vx-grow" }), compareBtn, pngBtn, helpBtn);

  const methodsBox = h("div", { class: "vx-methods", role: "group", "aria-label": "Explanation method", "data-testid": "vx-methods" });

  const main = h("div", { class: "vx-main" });
  const stage = h("div", { class: "vx-stage" });
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
  const canvasWrap = h("div", { class: "vx-canvaswrap" });
  canvasWrap.append(canvas, mapNote);
  const masksBox = h("div", { class: "vx-masks", "data-testid": "vx-masks", hidden: "" });
  const masksHead = h("div", { class: "vx-headstitle", id: id("masks") });
  const masksList = h("div", { class: "vx-maskstrip", role: "group", "aria-labelledby": id("masks") });
  masksBox.append(masksHead, masksList);
  stage.append(canvasWrap, legend, readout, about, masksBox);

  const side = h("div", { class: "vx-side" });
  const predHead = h("h4", { id: id("pred") }, "Prediction — click a class to explain it");
  const classes = h("div", { class: "vx-classes", role: "radiogroup", "aria-labelledby": id("pred"), "data-testid": "vx-classes" });
  const pinBar = h("div", { class: "vx-pin", "data-testid": "vx-pin", hidden: "" });
  const pinText = h("span", { class: "vx-pintext" });
  const unpinBtn = h("button", { class: "vx-btn", "data-testid": "vx-unpin", title: "Explain each image for its own top-1 class again" }, "back to top-1");
  pinBar.append(pinText, unpinBtn);
  const brushHead = h("h4", {}, "Brush patches, see what changes");
  const toolBox = h("div", { class: "vx-seg", role: "radiogroup", "aria-label": "Tool" });
  const tools: [string, string][] = [
    ["brush", "Brush"],
    ["erase", "Erase"],
    ["query", "Pick query patch"],
  ];
  const toolBtns = tools.map(([k, label]) => {
    const b = h("button", { class: "vx-btn", role: "radio", "data-tool": k, "aria-checked": "false" }, label);
    toolBox.append(b);
    return b;
  });
  const modeBox = h("div", { class: "vx-seg", role: "radiogroup", "aria-label": "Intervention", "data-testid": "vx-modes" });
  const modeBtns = MODES.map((m) => {
    const b = h("button", { class: "vx-btn", role: "radio", "data-mode": m, "aria-checked": "false" }, m);
    modeBox.append(b);
    return b;
  });
  const keepLabel = h("label", { class: "vx-check" });
  const keepBox = h("input", { type: "checkbox", "data-testid": "vx-keep" });
  keepLabel.append(keepBox, document.createTextNode(" keep only the brushed patches"));
  const actions = h("div", { class: "vx-row" });
  const clearBtn = h("button", { class: "vx-btn", "data-testid": "vx-clear" }, "Clear");
  const cfBtn = h("button", { class: "vx-btn", "data-testid": "vx-counterfactual", title: "Brush the smallest set of patches whose removal flips the prediction" }, "Find counterfactual");
  actions.append(clearBtn, cfBtn);
  const recomputeLabel = h("label", { class: "vx-check" });
  const recomputeBox = h("input", { type: "checkbox", "data-testid": "vx-recompute" });
  recomputeLabel.append(recomputeBox, document.createTextNode(" recompute the map on the intervened image"));
  const result = h("div", { class: "vx-result", "data-testid": "vx-result" });
  const imapBox = h("figure", { class: "vx-imap", "data-testid": "vx-imap-box", hidden: "" });
  const imapCanvas = h("canvas", { class: "vx-imapcanvas", "data-testid": "vx-imap", role: "img" });
  const imapCap = h("figcaption", { class: "vx-muted" });
  imapBox.append(imapCanvas, imapCap);
  const curvesHead = h("h4", { id: id("curves") }, "Deletion / insertion");
  const curvesBtn = h("button", { class: "vx-btn", "data-testid": "vx-curves-btn", title: "Delete (or insert) patches from the most relevant down and watch the target's probability" }, "Compute curves");
  const curvesBox = h("div", { class: "vx-curves", "data-testid": "vx-curves", role: "group", "aria-labelledby": id("curves") });
  side.append(predHead, pinBar, classes, brushHead, toolBox, modeBox, keepLabel, recomputeLabel, actions, result, imapBox, curvesHead, curvesBtn, curvesBox);
  main.append(stage, side);

  const controls = h("div", { class: "vx-controls" });
  const mkRange = (key: string, label: string, min: number, max: number, step = 1) => {
    const wrap = h("div", { class: "vx-field", "data-testid": `vx-field-${key}` });
    const lab = h("label", { for: id(key) }, label);
    const input = h("input", { type: "range", id: id(key), min: String(min), max: String(max), step: String(step), "data-testid": `vx-${key}` });
    const out = h("output", { for: id(key) });
    wrap.append(lab, input, out);
    controls.append(wrap);
    return { input, out, wrap };
  };
  // Notebook hosts take arrow keys for themselves (JupyterLab's notebook calls preventDefault while
  // they bubble; Notebook 7 stops them in the capture phase), so a native range input never moves.
  // Every key aimed at our elements is therefore routed by one window capture-phase listener
  // (it runs before any host listener), handled here, and kept from the notebook.
  const stepKeys: Record<string, number> = { ArrowLeft: -1, ArrowDown: -1, ArrowRight: 1, ArrowUp: 1, PageDown: -5, PageUp: 5 };
  const rangeKey = (input: HTMLInputElement, e: KeyboardEvent): boolean => {
    if (e.altKey || e.ctrlKey || e.metaKey) return false;
    const step = Number(input.step) || 1;
    const min = Number(input.min);
    const max = Number(input.max);
    let v = Number(input.value);
    if (e.key in stepKeys) v += stepKeys[e.key] * step;
    else if (e.key === "Home") v = min;
    else if (e.key === "End") v = max;
    else return false;
    v = Math.min(max, Math.max(min, Math.round(v / step) * step));
    if (String(v) !== input.value) {
      input.value = String(v);
      input.dispatchEvent(new Event("input", { bubbles: true }));
    }
    return true;
  };
  const layerR = mkRange("layer", "Layer", 0, 0);
  const headR = mkRange("head", "Head", -1, 0);
  const opacityR = mkRange("opacity", "Opacity", 0, 1, 0.05);
  const ranges = new Set<HTMLElement>([layerR.input, headR.input, opacityR.input]);
  const cmapWrap = h("div", { class: "vx-field" });
  const cmapSel = h("select", { id: id("cmap"), "data-testid": "vx-colormap" });
  for (const c of ["auto", ...COLORMAPS]) cmapSel.append(h("option", { value: c }, c));
  cmapWrap.append(h("label", { for: id("cmap") }, "Colormap"), cmapSel);
  const gridLabel = h("label", { class: "vx-check" });
  const gridBox = h("input", { type: "checkbox" });
  gridLabel.append(gridBox, document.createTextNode(" grid"));
  const smoothLabel = h("label", { class: "vx-check" });
  const smoothBox = h("input", { type: "checkbox" });
  smoothLabel.append(smoothBox, document.createTextNode(" smooth"));
  const clsBtn = h("button", { class: "vx-btn", "data-testid": "vx-cls", title: "Show the CLS (read-out) row instead of a patch's row" }, "CLS row");
  controls.append(cmapWrap, gridLabel, smoothLabel, clsBtn);

  const headsHead = h("div", { class: "vx-headstitle" });
  const heads = h("div", { class: "vx-heads", role: "group", "aria-label": "Heads of the current layer", "data-testid": "vx-heads" });

  const error = h("div", { class: "vx-error", role: "alert", "data-testid": "vx-error", hidden: "" });
  const errorText = h("span");
  const errorClose = h("button", { class: "vx-btn", "aria-label": "Dismiss" }, "×");
  error.append(errorText, errorClose);
  const live = h("div", { class: "vx-sr", "aria-live": "polite", "data-testid": "vx-live" });
  const help = h("div", { class: "vx-help", id: id("help"), role: "dialog", "aria-label": "Keyboard shortcuts", "data-testid": "vx-help", hidden: "" });
  const keys: [string, string][] = [
    ["[ / ]", "previous / next layer (attention)"],
    [", / .", "previous / next head, before head 0 the mean (attention)"],
    ["arrows", "move the patch cursor (canvas focused)"],
    ["Shift+arrows", "extend a rectangle of marked patches"],
    ["Space", "mark / unmark the patch under the cursor"],
    ["Enter", "run the intervention on the marked patches"],
    ["Delete / Esc", "clear the marked patches"],
    ["q", "use the cursor's patch as the attention query"],
  ];
  const dl = h("dl");
  for (const [k, v] of keys) dl.append(h("dt", {}, k), h("dd", {}, v));
  help.append(h("strong", {}, "Keyboard"), dl);

  const compareBox = h("section", { class: "vx-compare", "data-testid": "vx-compare", "aria-label": "Methods side by side", hidden: "" });
  stage.append(controls, headsHead, heads);
  root.append(bar, help, methodsBox, error, compareBox, main, live);
  el.append(root);
  signal.addEventListener("abort", () => root.remove());

  // ---------- local state ----------
  let tool = "brush";
  let pending = new Set<number>((model.get("brushed") as number[]) ?? []);
  let cursor = 0;
  let anchor = -1;
  let stroke: { erase: boolean; x: number; y: number } | null = null;
  let hover = -1;
  let imageCanvas: HTMLCanvasElement | null = null;
  let lastAnnounced = -1;
  const overlay = document.createElement("canvas");
  let themeFg = "#1f1f1f";
  let themeAccent = "#1976d2";
  const readTheme = () => {
    const cs = getComputedStyle(root);
    themeFg = cs.getPropertyValue("--vx-fg").trim() || themeFg;
    themeAccent = cs.getPropertyValue("--vx-accent").trim() || themeAccent;
  };

  const grid = (): [number, number] => (model.get("grid") as [number, number]) ?? [1, 1];
  const methodInfo = (m: string) => ((model.get("method_info") ?? {})[m] ?? {}) as { class_specific?: boolean; label?: string; about?: string };
  const methods = () => (model.get("methods") as string[]) ?? [];
  const offline = () => !!model.get("offline");

  const mapKey = (method: string) => {
    const cs = methodInfo(method).class_specific;
    return `${model.get("image_index")}|${method}|${cs ? model.get("target") : "-"}|${model.get("params_version") ?? 0}`;
  };

  function currentMap(): (CachedMap & { label: string }) | { note: string } {
    const method = model.get("method") as string;
    const img = model.get("image_index") as number;
    if (method === ATTN) {
      const layer = model.get("layer") as number;
      const l = store.getAttn(img, layer);
      if (!l) return { note: "loading attention…" };
      const head = model.get("head") as number;
      const q = model.get("query") as number;
      const hi = head < 0 ? l.heads - 1 : head;
      const values = attnRow(l, hi, q < 0 ? 0 : q + 1);
      const who = q < 0 ? "CLS row" : `row of patch ${q}`;
      return { values, signed: false, shape: grid(), label: `attention · layer ${layer} · ${head < 0 ? "mean of heads" : `head ${head}`} · ${who}` };
    }
    const p = model.get("map_payload") as (MapPayload & { key: string; signed: boolean; error?: string }) | null;
    const key = mapKey(method);
    if (p && p.key === key && p.error) return { note: p.error };
    if (p && p.key && p.data) {
      try {
        store.putMapPayload(p);
      } catch (e) {
        return { note: String(e) };
      }
    }
    const hit = store.maps.get(key);
    const label = methodInfo(method).label ?? method;
    const tgt = methodInfo(method).class_specific ? ` · class “${className(model.get("target"))}”` : "";
    if (hit) return { ...hit, label: `${label}${tgt}` };
    return { note: offline() ? `${label} was not computed for this export` : `computing ${label}…` };
  }

  function className(i: number): string {
    const names = (model.get("class_names") as string[]) ?? [];
    return names[i] ?? `class ${i}`;
  }

  let imageVersion = 0;
  function buildImage(): void {
    imageCanvas = rgbCanvas(model.get("image") as ImagePayload | null);
    imageVersion++;
  }

  /** Key of the current view: the map key; raw attention adds layer, head and query (Python's ``_view_js``). */
  function viewKey(): string {
    const method = model.get("method") as string;
    if (method !== ATTN) return mapKey(method);
    return `${model.get("image_index")}|${ATTN}|${model.get("layer")}|${model.get("head")}|${model.get("query")}|${model.get("params_version") ?? 0}`;
  }
  const curveKey = () => `${viewKey()}@${model.get("target")}`;

  /** The ViT-CX mask selected for overlay, when it belongs to the map on screen. */
  function selectedMask(): { k: number; score: number; mask: Uint8Array; mh: number; mw: number; key: string } | null {
    const mk = (model.get("cx_masks") as MasksPayload) ?? {};
    const k = model.get("cx_mask") as number;
    const method = model.get("method") as string;
    if (k < 0 || method === ATTN || !mk.key || mk.key !== mapKey(method) || !mk.data || !mk.K) return null;
    if (k >= mk.K) return null;
    return { k, score: mk.scores?.[k] ?? NaN, mask: maskAt(mk.data, mk.K, mk.height!, mk.width!, k), mh: mk.height!, mw: mk.width!, key: mk.key };
  }

  let maskedCache: { id: string; c: HTMLCanvasElement } | null = null;
  /** The image with everything outside the mask darkened (what the model sees of it), at image resolution. */
  function maskedImage(sm: { k: number; mask: Uint8Array; mh: number; mw: number; key: string }, base: HTMLCanvasElement, w?: number, hh?: number): HTMLCanvasElement {
    const W = w ?? base.width;
    const H = hh ?? base.height;
    const id = `${sm.key}|${sm.k}|${imageVersion}|${W}x${H}`;
    if (w === undefined && maskedCache && maskedCache.id === id) return maskedCache.c;
    const c = document.createElement("canvas");
    c.width = W;
    c.height = H;
    const ctx = c.getContext("2d")!;
    ctx.drawImage(base, 0, 0, W, H);
    const src = ctx.getImageData(0, 0, W, H);
    const out = ctx.createImageData(W, H);
    applyMask(src.data, H, W, sm.mask, sm.mh, sm.mw, 0.2, out.data);
    ctx.putImageData(out, 0, 0);
    if (w === undefined) maskedCache = { id, c };
    return c;
  }

  /** Draw `base` (if any) with a map overlaid into canvas `c` of CSS size cssW x cssH. */
  function paint(c: HTMLCanvasElement, cssW: number, cssH: number, base: HTMLCanvasElement | null, values: Float32Array | null, shape: number[], isSigned: boolean): void {
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(cssW * dpr) || c.height !== Math.round(cssH * dpr)) {
      c.width = Math.round(cssW * dpr);
      c.height = Math.round(cssH * dpr);
      c.style.width = `${cssW}px`;
      c.style.height = `${cssH}px`;
    }
    const ctx = c.getContext("2d")!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    if (base) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(base, 0, 0, cssW, cssH);
    }
    if (!values) return;
    const [gh, gw] = shape;
    const n = normalize(values, isSigned);
    const ov = document.createElement("canvas");
    ov.width = gw;
    ov.height = gh;
    const octx = ov.getContext("2d")!;
    const img = octx.createImageData(gw, gh);
    colorize(n.t, chooseCmap(isSigned), 255, img.data);
    if (isSigned) signedAlpha(n.t, img.data);
    octx.putImageData(img, 0, 0);
    ctx.globalAlpha = base ? Number(model.get("opacity") ?? 0.6) : 1;
    ctx.imageSmoothingEnabled = !!model.get("smooth");
    ctx.drawImage(ov, 0, 0, cssW, cssH);
    ctx.globalAlpha = 1;
  }

  /** The canvas's CSS width: as wide as the cell allows, between CANVAS_MIN and CANVAS_MAX. */
  let canvasCss = CANVAS_MAX;
  function size(): { w: number; h: number } {
    const im = model.get("image") as { height: number; width: number } | null;
    const ar = im && im.width ? im.height / im.width : 1;
    return { w: canvasCss, h: Math.round(canvasCss * ar) };
  }
  const fit = () => {
    const avail = root.clientWidth - 18; // padding and border
    const w = Math.round(Math.max(CANVAS_MIN, Math.min(CANVAS_MAX, avail > 0 ? avail : CANVAS_MAX)));
    root.classList.toggle("vx-narrow", avail < CANVAS_MAX + 12 + 260);
    stage.style.width = `${w}px`;
    if (w === canvasCss) return;
    canvasCss = w;
    draw();
  };
  if (typeof ResizeObserver !== "undefined") {
    const ro = new ResizeObserver(() => fit());
    ro.observe(root);
    signal.addEventListener("abort", () => ro.disconnect());
  }

  function gridGeom(): Grid {
    const [gh, gw] = grid();
    const { w, h: hh } = size();
    return { gh, gw, width: w, height: hh };
  }

  function chooseCmap(isSigned: boolean): string {
    const c = model.get("colormap") as string;
    if (c && c !== "auto") return c;
    return isSigned ? DEFAULT_DIVERGING : DEFAULT_SEQUENTIAL;
  }

  let lastMap: (CachedMap & { label: string }) | null = null;

  function draw(): void {
    const t0 = performance.now();
    const { w, h: hh } = size();
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hh * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hh * dpr);
      canvas.style.width = `${w}px`;
      canvas.style.height = `${hh}px`;
    }
    const ctx = canvas.getContext("2d")!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hh);
    if (imageCanvas) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(imageCanvas, 0, 0, w, hh);
    }
    const [gh, gw] = grid();
    const m = currentMap();
    about.textContent = methodInfo(model.get("method") as string).about ?? "";
    const sm = "values" in m ? selectedMask() : null;
    if (sm && imageCanvas) {
      lastMap = m as CachedMap & { label: string };
      mapNote.hidden = true;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(maskedImage(sm, imageCanvas), 0, 0, w, hh);
      canvas.setAttribute("data-map", `ViT-CX mask ${sm.k} · causal score ${fmt(sm.score)}`);
    } else if ("values" in m) {
      lastMap = m;
      mapNote.textContent = "";
      mapNote.hidden = true;
      const cmap = chooseCmap(m.signed);
      const n = normalize(m.values, m.signed);
      overlay.width = gw;
      overlay.height = gh;
      const octx = overlay.getContext("2d")!;
      const img = octx.createImageData(gw, gh);
      colorize(n.t, cmap, 255, img.data);
      if (m.signed) signedAlpha(n.t, img.data);
      octx.putImageData(img, 0, 0);
      ctx.globalAlpha = Number(model.get("opacity") ?? 0.6);
      ctx.imageSmoothingEnabled = !!model.get("smooth");
      ctx.drawImage(overlay, 0, 0, w, hh);
      ctx.globalAlpha = 1;
      drawLegend(cmap, n.lo, n.hi, m.signed);
      canvas.setAttribute("data-map", m.label);
    } else {
      mapNote.textContent = m.note;
      mapNote.hidden = false;
    }
    const cw = w / gw;
    const ch = hh / gh;
    if (model.get("show_grid")) {
      ctx.strokeStyle = themeFg;
      ctx.globalAlpha = 0.25;
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let c = 1; c < gw; c++) {
        ctx.moveTo(Math.round(c * cw) + 0.5, 0);
        ctx.lineTo(Math.round(c * cw) + 0.5, hh);
      }
      for (let r = 1; r < gh; r++) {
        ctx.moveTo(0, Math.round(r * ch) + 0.5);
        ctx.lineTo(w, Math.round(r * ch) + 0.5);
      }
      ctx.stroke();
      ctx.globalAlpha = 1;
    }
    // brushed patches: light veil + accent outline (not colour alone: a hatch line too)
    for (const p of pending) {
      const x = (p % gw) * cw;
      const y = Math.floor(p / gw) * ch;
      ctx.fillStyle = "rgba(255,255,255,0.45)";
      ctx.fillRect(x, y, cw, ch);
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x, y + ch);
      ctx.lineTo(x + cw, y);
      ctx.stroke();
      ctx.strokeStyle = themeAccent;
      ctx.lineWidth = 2;
      ctx.strokeRect(x + 1, y + 1, cw - 2, ch - 2);
    }
    const q = model.get("query") as number;
    if (q >= 0 && model.get("method") === ATTN) {
      const x = (q % gw) * cw + cw / 2;
      const y = Math.floor(q / gw) * ch + ch / 2;
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 3;
      ctx.beginPath();
      ctx.arc(x, y, Math.min(cw, ch) * 0.35, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.strokeStyle = "#e6007e";
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
    if (document.activeElement === canvas) {
      ctx.setLineDash([3, 2]);
      ctx.strokeStyle = "#ff0";
      ctx.lineWidth = 2;
      ctx.strokeRect((cursor % gw) * cw + 1, Math.floor(cursor / gw) * ch + 1, cw - 2, ch - 2);
      ctx.setLineDash([]);
    }
    updateReadout();
    debug.draws++;
    debug.lastDrawMs = performance.now() - t0;
  }

  let legendState = { cmap: "viridis", lo: 0, hi: 0, signed: false };
  function drawLegend(cmap: string, lo: number, hi: number, isSigned: boolean): void {
    legendState = { cmap, lo, hi, signed: isSigned };
    const ctx = legendBar.getContext("2d")!;
    const img = ctx.createImageData(128, 1);
    const t = new Float32Array(128).map((_, i) => i / 127);
    colorize(t, cmap, 255, img.data);
    for (let r = 0; r < 8; r++) ctx.putImageData(img, 0, r);
    legendLo.textContent = lo.toPrecision(3);
    legendHi.textContent = hi.toPrecision(3);
    legendMid.textContent = isSigned ? "0" : "";
    legendNote.textContent = isSigned ? "symmetric: blue against, red for the class; 0 shows the image" : "low → high";
  }

  function updateReadout(): void {
    const [, gw] = grid();
    if (hover < 0) {
      readout.textContent = lastMap ? lastMap.label : " ";
      return;
    }
    const v = lastMap && lastMap.values.length > hover ? lastMap.values[hover] : NaN;
    readout.textContent = `${describeCell(hover, gw)}: ${Number.isFinite(v) ? v.toPrecision(4) : "–"}`;
  }

  function drawThumbs(): void {
    const img = model.get("image_index") as number;
    const layer = model.get("layer") as number;
    const nh = model.get("num_heads") as number;
    const l = store.getAttn(img, layer);
    const [gh, gw] = grid();
    const q = model.get("query") as number;
    headsHead.textContent = `Heads of layer ${layer} (${q < 0 ? "CLS row" : `row of patch ${q}`}) — click one to show it`;
    if (heads.childElementCount !== nh + 1) {
      heads.textContent = "";
      for (let i = -1; i < nh; i++) {
        const b = h("button", { class: "vx-thumb", "data-head": String(i), "data-testid": `vx-head-${i}`, "aria-pressed": "false" });
        const c = h("canvas", { width: String(gw), height: String(gh), "aria-hidden": "true" });
        b.append(c, h("span", {}, i < 0 ? "mean" : `h${i}`));
        b.setAttribute("aria-label", i < 0 ? "Mean of heads" : `Head ${i}`);
        heads.append(b);
      }
    }
    const cur = model.get("head") as number;
    const isAttn = model.get("method") === ATTN;
    for (const b of Array.from(heads.children) as HTMLButtonElement[]) {
      const hi = Number(b.dataset.head);
      b.setAttribute("aria-pressed", String(isAttn && hi === cur));
      const c = b.querySelector("canvas")!;
      if (c.width !== gw || c.height !== gh) {
        c.width = gw;
        c.height = gh;
      }
      const ctx = c.getContext("2d")!;
      if (!l) {
        ctx.clearRect(0, 0, gw, gh);
        continue;
      }
      const values = attnRow(l, hi < 0 ? l.heads - 1 : hi, q < 0 ? 0 : q + 1);
      const n = normalize(values, false);
      const data = ctx.createImageData(gw, gh);
      colorize(n.t, chooseCmap(false), 255, data.data);
      ctx.putImageData(data, 0, 0);
    }
  }

  // ---------- compare grid ----------
  const TILE = 96;
  function drawCompare(): void {
    const on = !!model.get("compare");
    compareBtn.setAttribute("aria-pressed", String(on));
    compareBox.hidden = !on;
    if (!on) return;
    const list = ((model.get("compare_methods") as string[]) ?? []).filter((m) => methods().includes(m));
    const payload = (model.get("compare_payload") as TilePayload[]) ?? [];
    const byMethod = new Map(payload.map((p) => [p.method, p]));
    if (compareBox.dataset.methods !== list.join(",")) {
      compareBox.dataset.methods = list.join(",");
      compareBox.textContent = "";
      for (const m of list) {
        const b = h("button", { class: "vx-tile", "data-method": m, "data-testid": `vx-tile-${m}`, "aria-pressed": "false" });
        const c = h("canvas", { "aria-hidden": "true" });
        b.append(c, h("span", { class: "vx-tilelabel" }), h("span", { class: "vx-tilenote vx-muted" }));
        compareBox.append(b);
      }
    }
    const { w, h: hh } = size();
    const tw = TILE;
    const th = Math.round((TILE * hh) / w);
    const cur = model.get("method") as string;
    const tgt = className(model.get("target") as number);
    for (const b of Array.from(compareBox.children) as HTMLButtonElement[]) {
      const m = b.dataset.method!;
      const info = methodInfo(m);
      let label = info.label ?? m;
      let values: Float32Array | null = null;
      let shape = grid() as number[];
      let isSigned = false;
      let note = "";
      if (m === ATTN) {
        const layer = model.get("layer") as number;
        const head = model.get("head") as number;
        const q = model.get("query") as number;
        const l = store.getAttn(model.get("image_index") as number, layer);
        label = `${label} · L${layer} · ${head < 0 ? "mean" : `h${head}`}`;
        if (l) values = attnRow(l, head < 0 ? l.heads - 1 : head, q < 0 ? 0 : q + 1);
        else note = "loading…";
      } else {
        const key = mapKey(m);
        const p = byMethod.get(m);
        if (p && p.key === key && p.data) {
          try {
            store.putMapPayload({ ...p, signed: !!p.signed });
          } catch (e) {
            note = String(e);
          }
        }
        const hit = store.maps.get(key);
        if (hit) {
          values = hit.values;
          shape = hit.shape;
          isSigned = hit.signed;
        } else if (p && p.key === key && p.error) note = p.error;
        else note = offline() ? "not computed for this export" : "computing…";
      }
      b.querySelector(".vx-tilelabel")!.textContent = label;
      b.querySelector(".vx-tilenote")!.textContent = values ? (info.class_specific ? `“${tgt}”` : " ") : note;
      b.dataset.state = values ? "ready" : note === "computing…" || note === "loading…" ? "pending" : "error";
      b.setAttribute("aria-pressed", String(m === cur));
      b.setAttribute("aria-label", `${label}${values ? "" : `: ${note}`} — show it in the main view`);
      paint(b.querySelector("canvas")!, tw, th, imageCanvas, values, shape, isSigned);
    }
  }

  // ---------- deletion / insertion curves ----------
  function drawCurves(): void {
    const cv = (model.get("curves") as CurvesPayload) ?? {};
    const key = curveKey();
    const mine = cv.key === key;
    curvesBox.textContent = "";
    curvesBtn.disabled = offline() || (mine && (!!cv.pending || !!cv.deletion));
    curvesBtn.hidden = offline() && !mine;
    if (!mine) {
      curvesBox.append(h("p", { class: "vx-muted" }, offline() ? "Not computed for this export." : "Delete the most relevant patches first (or insert them into a blank image) and plot the target's probability."));
      return;
    }
    if (cv.pending) {
      curvesBox.append(h("p", { class: "vx-muted" }, "computing the curves…"));
      return;
    }
    if (cv.error || !cv.x || !cv.deletion || !cv.insertion) {
      curvesBox.append(h("p", { class: "vx-errtext" }, cv.error ?? "no curve"));
      return;
    }
    const box: Box = { width: 300, height: 170, left: 36, right: 10, top: 8, bottom: 32 };
    const sv = svg("svg", { viewBox: `0 0 ${box.width} ${box.height}`, width: box.width, height: box.height, class: "vx-chart", role: "img",
      "aria-label": `Deletion AUC ${fmt(cv.auc_deletion)} (lower is better), insertion AUC ${fmt(cv.auc_insertion)} (higher is better) for “${cv.target_name ?? ""}”` });
    const x0 = box.left, x1 = box.width - box.right, y0 = box.height - box.bottom, y1 = box.top;
    for (const t of [0, 0.5, 1]) {
      const gy = y0 + (y1 - y0) * t;
      const gx = x0 + (x1 - x0) * t;
      sv.append(svg("line", { x1: x0, x2: x1, y1: gy, y2: gy, class: "vx-gridline" }));
      sv.append(svg("text", { x: x0 - 4, y: gy + 3, "text-anchor": "end", class: "vx-ticklabel" }, String(t)));
      sv.append(svg("text", { x: gx, y: y0 + 12, "text-anchor": "middle", class: "vx-ticklabel" }, String(t)));
    }
    sv.append(svg("line", { x1: x0, x2: x0, y1: y0, y2: y1, class: "vx-axis" }));
    sv.append(svg("line", { x1: x0, x2: x1, y1: y0, y2: y0, class: "vx-axis" }));
    sv.append(svg("text", { x: (x0 + x1) / 2, y: box.height - 4, "text-anchor": "middle", class: "vx-axislabel" }, "fraction of patches deleted / inserted"));
    sv.append(svg("text", { x: 10, y: (y0 + y1) / 2, "text-anchor": "middle", class: "vx-axislabel", transform: `rotate(-90 10 ${(y0 + y1) / 2})` }, "p(target)"));
    sv.append(svg("polyline", { points: polylinePoints(box, cv.x, cv.deletion), class: "vx-del", "data-testid": "vx-curve-deletion" }));
    sv.append(svg("polyline", { points: polylinePoints(box, cv.x, cv.insertion), class: "vx-ins", "data-testid": "vx-curve-insertion" }));
    const legendEl = h("div", { class: "vx-curvelegend" });
    const item = (cls: string, text: string) => {
      const s = h("span", { class: "vx-legenditem" });
      const sw = svg("svg", { width: 22, height: 8, "aria-hidden": "true" });
      sw.append(svg("line", { x1: 0, x2: 22, y1: 4, y2: 4, class: cls }));
      s.append(sw, document.createTextNode(text));
      return s;
    };
    legendEl.append(
      item("vx-del", ` deletion · AUC ${fmt(cv.auc_deletion)} (lower is better)`),
      item("vx-ins", ` insertion · AUC ${fmt(cv.auc_insertion)} (higher is better)`),
    );
    const capt = h("p", { class: "vx-muted" });
    capt.textContent = `${cv.label ?? ""} · class “${cv.target_name ?? ""}” · ${cv.patches} patches, ${cv.step} per step (patch preset)`;
    curvesBox.append(sv, legendEl, capt);
  }

  // ---------- ViT-CX masks ----------
  function drawMasks(): void {
    const mk = (model.get("cx_masks") as MasksPayload) ?? {};
    const method = model.get("method") as string;
    const show = method !== ATTN && !!mk.key && mk.key === mapKey(method) && !!mk.K && !!mk.data;
    masksBox.hidden = !show;
    if (!show) return;
    const K = mk.K!, mh = mk.height!, mw = mk.width!;
    const scores = mk.scores ?? [];
    const id = `${mk.key}|${imageVersion}`;
    if (masksList.dataset.key !== id) {
      masksList.dataset.key = id;
      masksList.textContent = "";
      for (const k of maskOrder(scores)) {
        const b = h("button", { class: "vx-thumb vx-maskthumb", "data-mask": String(k), "data-testid": `vx-mask-${k}`, "aria-pressed": "false" });
        b.setAttribute("aria-label", `Mask ${k}, causal score ${fmt(scores[k])}`);
        const c = h("canvas", { width: String(mw), height: String(mh), "aria-hidden": "true" });
        if (imageCanvas) {
          const mc = maskedImage({ k, mask: maskAt(mk.data!, K, mh, mw, k), mh, mw, key: mk.key! }, imageCanvas, mw, mh);
          c.getContext("2d")!.drawImage(mc, 0, 0);
        }
        b.append(c, h("span", {}, fmt(scores[k])));
        masksList.append(b);
      }
    }
    masksHead.textContent = `${K} ViT-CX masks by causal score — click one to overlay it`;
    const sel = model.get("cx_mask") as number;
    for (const b of Array.from(masksList.children) as HTMLElement[]) b.setAttribute("aria-pressed", String(Number(b.dataset.mask) === sel));
  }

  // ---------- the map recomputed on the intervened image ----------
  let imapBase: { src: unknown; c: HTMLCanvasElement | null } = { src: null, c: null };
  function drawImap(): void {
    const r = (model.get("intervened_map") as IntervenedMap) ?? {};
    const cur = sortedCells(pending);
    const fresh =
      !!model.get("recompute") &&
      !!r.patches &&
      r.patches.length === cur.length &&
      cur.length > 0 &&
      r.patches.every((p, i) => p === cur[i]) &&
      r.mode === model.get("mode") &&
      !!r.keep === !!model.get("keep") &&
      r.image_index === model.get("image_index") &&
      r.target === model.get("target") &&
      r.key === viewKey();
    imapBox.hidden = !fresh;
    if (!fresh) return;
    if (r.error || !r.data || !r.shape) {
      imapCap.textContent = r.error ?? "no map";
      imapCanvas.hidden = true;
      return;
    }
    imapCanvas.hidden = false;
    if (imapBase.src !== r.image) imapBase = { src: r.image, c: rgbCanvas(r.image) };
    const { w, h: hh } = size();
    const cw = 192;
    paint(imapCanvas, cw, Math.round((cw * hh) / w), imapBase.c, decodeMap(r as MapPayload), r.shape, !!r.signed);
    const text = `${r.label ?? ""} on the intervened image (${r.keep ? "keep only" : "remove"}, ${r.mode})`;
    imapCap.textContent = text;
    imapCanvas.setAttribute("aria-label", text);
    imapCanvas.setAttribute("data-map", r.label ?? "");
  }

  const drawExtras = () => {
    drawCompare();
    drawCurves();
    drawMasks();
    drawImap();
  };

  function syncControls(): void {
    const nl = model.get("num_layers") as number;
    const nh = model.get("num_heads") as number;
    const layer = model.get("layer") as number;
    const head = model.get("head") as number;
    layerR.input.max = String(nl - 1);
    layerR.input.value = String(layer);
    layerR.out.textContent = `${layer}`;
    layerR.input.setAttribute("aria-valuetext", `Layer ${layer} of ${nl - 1}`);
    headR.input.max = String(nh - 1);
    headR.input.value = String(head);
    headR.out.textContent = head < 0 ? "mean" : String(head);
    headR.input.setAttribute("aria-valuetext", head < 0 ? "mean of heads" : `head ${head} of ${nh - 1}`);
    const op = Number(model.get("opacity") ?? 0.6);
    opacityR.input.value = String(op);
    opacityR.out.textContent = op.toFixed(2);
    cmapSel.value = (model.get("colormap") as string) || "auto";
    gridBox.checked = !!model.get("show_grid");
    smoothBox.checked = !!model.get("smooth");
    keepBox.checked = !!model.get("keep");
    recomputeBox.checked = !!model.get("recompute");
    const mode = model.get("mode") as string;
    for (const b of modeBtns) b.setAttribute("aria-checked", String(b.dataset.mode === mode));
    // a model without token attention (CNN, hierarchical transformer): no layer/head controls,
    // no head grid, no CLS row, no token drop
    const tokens = model.get("token_attention") !== false;
    for (const el of [layerR.input.parentElement, headR.input.parentElement, clsBtn, headsHead, heads]) {
      if (el) el.hidden = !tokens;
    }
    for (const b of modeBtns) if (b.dataset.mode === "drop") b.hidden = !tokens;
    for (const b of toolBtns) b.setAttribute("aria-checked", String(b.dataset.tool === tool));
    const ni = model.get("num_images") as number;
    const ii = model.get("image_index") as number;
    imgLabel.textContent = `image ${ii + 1} of ${ni}`;
    prevImg.disabled = ii <= 0;
    nextImg.disabled = ii >= ni - 1;
    title.textContent = (model.get("title") as string) || "";
    clsBtn.disabled = (model.get("query") as number) < 0;
    // layer, head, query and the head thumbnails act on raw attention only: shown only there
    const isAttn = model.get("method") === ATTN;
    layerR.wrap.hidden = !isAttn;
    headR.wrap.hidden = !isAttn;
    clsBtn.hidden = !isAttn;
    headsHead.hidden = !isAttn;
    heads.hidden = !isAttn;
    for (const b of toolBtns) if (b.dataset.tool === "query") b.hidden = !isAttn;
    if (!isAttn && tool === "query") tool = "brush";
    const off = offline();
    for (const b of [...modeBtns, clearBtn, cfBtn]) b.disabled = off;
    keepBox.disabled = off;
    recomputeBox.disabled = off;
  }

  function buildMethods(): void {
    methodsBox.textContent = "";
    const cur = model.get("method") as string;
    for (const m of methods()) {
      const info = methodInfo(m);
      const b = h("button", { class: "vx-btn vx-method", "data-method": m, "aria-pressed": String(m === cur), "data-testid": `vx-method-${m}` });
      b.textContent = info.label ?? m;
      if (info.class_specific) b.title = "class-specific";
      methodsBox.append(b);
    }
  }

  function syncMethods(): void {
    const cur = model.get("method") as string;
    for (const b of Array.from(methodsBox.children) as HTMLElement[]) b.setAttribute("aria-pressed", String(b.dataset.method === cur));
  }

  function buildClasses(): void {
    classes.textContent = "";
    const topk = (model.get("topk") as ClassProb[]) ?? [];
    const tgt = model.get("target") as number;
    const list = topk.some((c) => c.index === tgt) ? topk : [...topk, { index: tgt, name: className(tgt), prob: NaN }];
    const pinned = !!model.get("pinned");
    pinBar.hidden = !pinned;
    pinText.textContent = `Pinned: every image is explained for “${className(tgt)}”.`;
    predHead.textContent = pinned ? "Prediction — the pinned class is outlined" : "Prediction — explaining the top-1 class; click another to pin it";
    for (const c of list) {
      const b = h("button", { class: "vx-class", role: "radio", "aria-checked": String(c.index === tgt), "data-class": String(c.index), "data-testid": `vx-class-${c.index}` });
      if (pinned && c.index === tgt) b.classList.add("vx-pinned");
      const name = h("span", { class: "vx-cname" });
      name.textContent = c.name; // user-supplied: text only
      const barw = h("span", { class: "vx-pbar" });
      const fill = h("span", { class: "vx-pfill" });
      fill.style.width = `${Math.max(0, Math.min(1, c.prob || 0)) * 100}%`;
      barw.append(fill);
      const val = h("span", { class: "vx-pval" }, Number.isFinite(c.prob) ? c.prob.toFixed(3) : "");
      b.append(name, barw, val);
      classes.append(b);
    }
  }

  /** What the last counterfactual search found, while its patches are the ones marked (or it found none). */
  function counterfactualNote(cur: number[]): HTMLElement | null {
    const cf = (model.get("counterfactual") as CounterfactualPayload) ?? {};
    if (cf.image_index === undefined || cf.image_index !== model.get("image_index")) return null;
    const p = h("p", { class: "vx-cf", "data-testid": "vx-cf", role: "status" });
    if (!cf.found) {
      p.classList.add("vx-errtext");
      p.textContent = `No counterfactual: removing up to ${cf.tried} patches (${cf.order_by} order, ${cf.mode}) never changes the prediction “${cf.target_name}”.`;
      return p;
    }
    const same = !!cf.patches && cf.patches.length === cur.length && cf.patches.every((q, i) => q === cur[i]);
    if (!same) return null;
    const n = cf.patches!.length;
    p.textContent = `Counterfactual: removing these ${n} patch${n === 1 ? "" : "es"} (${cf.mode}) flips the prediction from “${cf.target_name}” (${fmt(cf.target_before)} → ${fmt(cf.target_after)}) to “${cf.new_name}” (${fmt(cf.new_prob)}).`;
    return p;
  }

  function showIntervention(): void {
    const r = (model.get("intervention") as Intervention) ?? {};
    result.textContent = "";
    const cur = sortedCells(pending);
    const cfNote = offline() ? null : counterfactualNote(cur);
    if (cfNote) result.append(cfNote);
    if (offline()) {
      result.append(h("p", { class: "vx-muted" }, "Interventions need a running kernel (this is a static export)."));
      return;
    }
    if (cur.length === 0) {
      result.append(h("p", { class: "vx-muted" }, "Drag over the image to mark patches; when you let go, they are perturbed and the prediction is re-run."));
      return;
    }
    const fresh =
      r.patches &&
      r.patches.length === cur.length &&
      r.patches.every((p, i) => p === cur[i]) &&
      r.mode === model.get("mode") &&
      !!r.keep === !!model.get("keep") &&
      r.image_index === model.get("image_index") &&
      r.target === model.get("target");
    if (!fresh) {
      result.append(h("p", { class: "vx-muted", "data-testid": "vx-pending" }, `${cur.length} patch${cur.length === 1 ? "" : "es"} marked — computing…`));
      return;
    }
    if (r.error) {
      result.append(h("p", { class: "vx-errtext" }, r.error));
      return;
    }
    const sum = h("p", { class: "vx-summary", "data-testid": "vx-summary" });
    const tn = h("strong");
    tn.textContent = `“${r.target_name ?? className(r.target ?? 0)}”`;
    sum.append(
      document.createTextNode("Target "),
      tn,
      document.createTextNode(`: ${fmt(r.target_before)} → ${fmt(r.target_after)} (Δ ${signed(r.delta)})`),
    );
    if (r.causal_score !== undefined && r.causal_score !== null) sum.append(document.createTextNode(` · causal score ${fmt(r.causal_score)}`));
    const sub = h("p", { class: "vx-muted" }, `${cur.length} patch${cur.length === 1 ? "" : "es"} · ${r.keep ? "keep only" : "remove"} · ${r.mode}${r.ms !== undefined ? ` · ${r.ms.toFixed(0)} ms` : ""}`);
    const table = h("table", { class: "vx-table", "data-testid": "vx-probs" });
    const thead = h("tr");
    thead.append(h("th", {}, "class"), h("th", {}, "before"), h("th", {}, "after"));
    table.append(thead);
    const before = new Map((r.before ?? []).map((c) => [c.index, c]));
    const after = new Map((r.after ?? []).map((c) => [c.index, c]));
    const ids = Array.from(new Set([...after.keys(), ...before.keys()]));
    ids.sort((a, b) => (after.get(b)?.prob ?? -1) - (after.get(a)?.prob ?? -1));
    for (const i of ids) {
      const tr = h("tr");
      if (i === r.target) tr.className = "vx-target";
      const name = h("td");
      name.textContent = after.get(i)?.name ?? before.get(i)?.name ?? className(i);
      const cell = (p?: number) => {
        const td = h("td");
        const bw = h("span", { class: "vx-pbar" });
        const f = h("span", { class: "vx-pfill" });
        f.style.width = `${Math.max(0, Math.min(1, p ?? 0)) * 100}%`;
        bw.append(f);
        td.append(bw, h("span", { class: "vx-pval" }, p === undefined ? "–" : p.toFixed(3)));
        return td;
      };
      tr.append(name, cell(before.get(i)?.prob), cell(after.get(i)?.prob));
      table.append(tr);
    }
    result.append(sum, sub, table);
    if (r.id !== undefined && r.id !== lastAnnounced) {
      lastAnnounced = r.id;
      const top = r.after?.[0];
      live.textContent = `After perturbing ${cur.length} patches: ${r.target_name ?? ""} ${fmt(r.target_before, 2)} → ${fmt(r.target_after, 2)}${top ? `; top class ${top.name} ${fmt(top.prob, 2)}` : ""}.`;
      debug.resultAt = performance.now();
      debug.results++;
      debug.lastResultId = r.id;
    }
  }

  function showStatus(): void {
    const s = (model.get("status") as { busy?: boolean; label?: string; error?: string | null }) ?? {};
    spinner.hidden = !s.busy;
    statusText.textContent = s.busy ? s.label || "working…" : "";
    root.setAttribute("aria-busy", String(!!s.busy));
    if (s.error) {
      errorText.textContent = s.error;
      error.hidden = false;
    } else error.hidden = true;
  }

  // ---------- commit helpers ----------
  const setState = (patch: Record<string, unknown>) => {
    for (const [k, v] of Object.entries(patch)) model.set(k, v);
    model.save_changes();
  };
  const commitBrush = () => {
    debug.strokeEndAt = performance.now();
    setState({ brushed: sortedCells(pending) });
    draw();
    showIntervention();
  };
  /** Layer, head and query act on raw attention only; elsewhere they change nothing (and never the method). */
  const toAttention = (patch: Record<string, unknown>) => {
    if (model.get("method") !== ATTN) {
      const label = methodInfo(model.get("method") as string).label ?? model.get("method");
      live.textContent = `${label} has no layer or head to choose; pick Attention for those.`;
      return;
    }
    setState(patch);
  };
  const stepLayer = (d: number) => {
    const nl = model.get("num_layers") as number;
    const v = Math.max(0, Math.min(nl - 1, (model.get("layer") as number) + d));
    toAttention({ layer: v });
  };
  const stepHead = (d: number) => {
    const nh = model.get("num_heads") as number;
    const v = Math.max(-1, Math.min(nh - 1, (model.get("head") as number) + d));
    toAttention({ head: v });
  };

  // ---------- events ----------
  on(layerR.input, "input", () => toAttention({ layer: Number(layerR.input.value) }));
  on(headR.input, "input", () => toAttention({ head: Number(headR.input.value) }));
  on(opacityR.input, "input", () => setState({ opacity: Number(opacityR.input.value) }));
  on(cmapSel, "change", () => setState({ colormap: cmapSel.value }));
  on(gridBox, "change", () => setState({ show_grid: gridBox.checked }));
  on(smoothBox, "change", () => setState({ smooth: smoothBox.checked }));
  on(keepBox, "change", () => setState({ keep: keepBox.checked }));
  on(recomputeBox, "change", () => setState({ recompute: recomputeBox.checked }));
  on(compareBtn, "click", () => setState({ compare: !model.get("compare") }));
  on(compareBox, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-method]") as HTMLElement | null;
    if (b) setState({ method: b.dataset.method });
  });
  on(curvesBtn, "click", () => model.send({ kind: "curves" }));
  on(masksList, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-mask]") as HTMLElement | null;
    if (!b) return;
    const k = Number(b.dataset.mask);
    setState({ cx_mask: model.get("cx_mask") === k ? -1 : k });
  });
  on(clsBtn, "click", () => setState({ query: -1 }));
  on(prevImg, "click", () => setState({ image_index: Math.max(0, (model.get("image_index") as number) - 1) }));
  on(nextImg, "click", () => setState({ image_index: Math.min((model.get("num_images") as number) - 1, (model.get("image_index") as number) + 1) }));
  on(methodsBox, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-method]") as HTMLElement | null;
    if (b) setState({ method: b.dataset.method });
  });
  on(heads, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-head]") as HTMLElement | null;
    if (b) toAttention({ head: Number(b.dataset.head) });
  });
  on(classes, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-class]") as HTMLElement | null;
    if (b) setState({ target: Number(b.dataset.class), pinned: true });
  });
  on(unpinBtn, "click", () => setState({ pinned: false }));
  on(modeBox, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-mode]") as HTMLElement | null;
    if (b) setState({ mode: b.dataset.mode });
  });
  on(toolBox, "click", (e: MouseEvent) => {
    const b = (e.target as HTMLElement).closest("[data-tool]") as HTMLElement | null;
    if (b) {
      tool = b.dataset.tool!;
      syncControls();
    }
  });
  on(clearBtn, "click", () => {
    pending = new Set();
    commitBrush();
  });
  on(cfBtn, "click", () => model.send({ kind: "counterfactual" }));
  on(errorClose, "click", () => {
    error.hidden = true;
  });
  on(helpBtn, "click", () => {
    help.hidden = !help.hidden;
    helpBtn.setAttribute("aria-expanded", String(!help.hidden));
  });
  on(pngBtn, "click", () => {
    const method = model.get("method") as string;
    const cs = !!methodInfo(method).class_specific;
    const num = (model.get("image_index") as number) + 1;
    const cname = cs ? className(model.get("target") as number) : null;
    const out = composeExport(canvas, {
      title: `${(model.get("title") as string) || "vit-explore"} · image ${num} of ${model.get("num_images")}`,
      label: canvas.getAttribute("data-map") || (methodInfo(method).label ?? method),
      legend: lastMap ? legendState : null,
      fg: themeFg,
      bg: getComputedStyle(root).getPropertyValue("--vx-bg").trim() || "#fff",
    });
    const a = document.createElement("a");
    a.download = exportName(num, method, cname);
    a.href = out.toDataURL("image/png");
    root.append(a);
    a.click();
    a.remove();
  });

  const local = (e: PointerEvent) => {
    const r = canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  };
  on(canvas, "pointerdown", (e: PointerEvent) => {
    if (e.button !== 0) return;
    const { x, y } = local(e);
    const g = gridGeom();
    const cell = cellAt(g, x, y);
    if (cell < 0) return;
    cursor = cell;
    if (tool === "query") {
      toAttention({ query: (model.get("query") as number) === cell ? -1 : cell });
      return;
    }
    if (offline()) return;
    canvas.setPointerCapture(e.pointerId);
    stroke = { erase: tool === "erase" || e.altKey, x, y };
    pending = applyStroke(pending, [cell], stroke.erase);
    draw();
    e.preventDefault();
  });
  on(canvas, "pointermove", (e: PointerEvent) => {
    const { x, y } = local(e);
    const g = gridGeom();
    hover = cellAt(g, x, y);
    if (stroke) {
      pending = applyStroke(pending, cellsOnSegment(g, stroke.x, stroke.y, x, y), stroke.erase);
      stroke.x = x;
      stroke.y = y;
      draw();
    } else updateReadout();
  });
  const endStroke = () => {
    if (!stroke) return;
    stroke = null;
    commitBrush();
  };
  on(canvas, "pointerup", endStroke);
  on(canvas, "pointercancel", endStroke);
  on(canvas, "pointerleave", () => {
    hover = -1;
    updateReadout();
  });
  on(canvas, "focus", draw);
  on(canvas, "blur", draw);
  const canvasKey = (e: KeyboardEvent): boolean => {
    const [gh, gw] = grid();
    if (e.key.startsWith("Arrow") || e.key === "Home" || e.key === "End") {
      const next = moveCursor(cursor, e.key, gh, gw);
      if (e.shiftKey && !offline()) {
        if (anchor < 0) anchor = cursor;
        pending = applyStroke(pending, rectCells(anchor, next, gw), false);
      } else anchor = -1;
      cursor = next;
      hover = cursor;
      draw();
      live.textContent = `${describeCell(cursor, gw)}${pending.has(cursor) ? ", marked" : ""}`;
      return true;
    } else if (e.key === " " && !offline()) {
      const was = pending.has(cursor);
      pending = applyStroke(pending, [cursor], was);
      draw();
      showIntervention();
      live.textContent = `${describeCell(cursor, gw)} ${was ? "unmarked" : "marked"}; ${pending.size} marked. Enter runs the intervention.`;
      return true;
    } else if (e.key === "Enter" && !offline()) {
      commitBrush();
      return true;
    } else if ((e.key === "Delete" || e.key === "Backspace" || e.key === "Escape") && !offline()) {
      pending = new Set();
      commitBrush();
      return true;
    } else if (e.key === "q") {
      toAttention({ query: cursor });
      return true;
    }
    return false;
  };
  const rootKey = (e: KeyboardEvent): boolean => {
    if ((e.target as HTMLElement).tagName === "SELECT") return false;
    if (e.key === "[" || e.key === "]") {
      stepLayer(e.key === "]" ? 1 : -1);
      return true;
    } else if (e.key === "," || e.key === ".") {
      stepHead(e.key === "." ? 1 : -1);
      return true;
    } else if (e.key === "?") {
      helpBtn.click();
      return true;
    }
    return false;
  };
  window.addEventListener(
    "keydown",
    (e: KeyboardEvent) => {
      const target = e.target as HTMLElement;
      if (!(target instanceof Node) || !root.contains(target)) return;
      let handled = false;
      if (ranges.has(target)) handled = rangeKey(target as HTMLInputElement, e);
      else if (target === canvas) handled = canvasKey(e);
      if (!handled) handled = rootKey(e);
      if (handled) {
        e.preventDefault();
        e.stopPropagation();
      }
    },
    { capture: true, signal },
  );

  // ---------- model -> view ----------
  const redrawAll = () => {
    syncControls();
    draw();
    drawThumbs();
    drawExtras();
  };
  listen("change:layer", redrawAll);
  listen("change:head", redrawAll);
  listen("change:query", redrawAll);
  listen("change:opacity", () => {
    syncControls();
    draw();
  });
  listen("change:colormap", redrawAll);
  listen("change:show_grid", redrawAll);
  listen("change:smooth", redrawAll);
  listen("change:keep", () => {
    syncControls();
    showIntervention();
    drawImap();
  });
  listen("change:mode", () => {
    syncControls();
    showIntervention();
    drawImap();
  });
  listen("change:method", () => {
    syncMethods();
    syncControls();
    draw();
    drawThumbs();
    drawExtras();
  });
  listen("change:compare", drawCompare);
  listen("change:compare_methods", drawCompare);
  listen("change:compare_payload", drawCompare);
  listen("change:curves", drawCurves);
  listen("change:cx_masks", () => {
    drawMasks();
    draw();
  });
  listen("change:cx_mask", () => {
    drawMasks();
    draw();
  });
  listen("change:recompute", () => {
    syncControls();
    drawImap();
  });
  listen("change:intervened_map", drawImap);
  listen("change:methods", () => {
    buildMethods();
    draw();
  });
  listen("change:map_payload", () => {
    draw();
    drawCompare();
  });
  listen("change:params_version", () => {
    draw();
    drawExtras();
  });
  listen("change:image", () => {
    buildImage();
    draw();
    drawExtras();
  });
  listen("change:image_index", () => {
    syncControls();
    draw();
    drawThumbs();
    showIntervention();
    drawExtras();
  });
  listen("change:topk", buildClasses);
  listen("change:pinned", buildClasses);
  listen("change:counterfactual", showIntervention);
  listen("change:target", () => {
    buildClasses();
    draw();
    showIntervention();
    drawExtras();
  });
  listen("change:brushed", () => {
    pending = new Set((model.get("brushed") as number[]) ?? []);
    draw();
    showIntervention();
    drawImap();
  });
  listen("change:intervention", showIntervention);
  listen("change:status", showStatus);
  listen("change:title", syncControls);
  listen("change:num_images", syncControls);
  const unsub = store.onChange(() => {
    draw();
    drawThumbs();
    drawCompare();
  });
  signal.addEventListener("abort", unsub);

  // theme: canvases don't see CSS, so re-read the variables when the host's theme changes
  const mo = new MutationObserver(() => {
    readTheme();
    draw();
  });
  mo.observe(document.body, { attributes: true, attributeFilter: ["class", "data-jp-theme-light", "data-jp-theme-name", "theme"] });
  signal.addEventListener("abort", () => mo.disconnect());
  const mq = window.matchMedia?.("(prefers-color-scheme: dark)");
  if (mq) on(mq, "change", () => {
    readTheme();
    draw();
  });

  readTheme();
  stage.style.width = `${canvasCss}px`;
  buildImage();
  buildMethods();
  buildClasses();
  syncControls();
  showStatus();
  draw();
  drawThumbs();
  showIntervention();
  drawExtras();
  Object.assign(debug, { teaching: renderTeaching(model, root, signal) }); // tour, lens, similarity, heads, patching
  return debug;
}
