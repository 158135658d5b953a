// What every panel of one Explorer view shares: the typed model, the widget's store, the view's local
// state (tool, marked patches, the image as a canvas, theme, canvas size) and small derived helpers.
// Panels call each other only through `ui`, filled by view.ts once they exist.
import { colorize, DEFAULT_DIVERGING, DEFAULT_SEQUENTIAL, normalize, signedAlpha } from "./colormap";
import { ATTN, attentionViewKey, mapKey } from "./contract";
import { rgbCanvas } from "./rgb_canvas";
import type { Store } from "./store";
import type { TeachBus, TeachDebug } from "./teach_common";
import type { MethodInfo, Model, Traits } from "./traits";

export const CANVAS_MAX = 384;
export const CANVAS_MIN = 192;

export interface DebugInfo {
  draws: number;
  lastDrawMs: number;
  strokeEndAt: number;
  resultAt: number;
  results: number;
  lastResultId: number;
  /** Timing of the clicks the kernel answers (similarity, ablation, patching), read by bench/bench_explorer.py. */
  teaching: TeachDebug;
}

/** Cross-panel calls (set by view.ts after the panels are built). */
export interface Hooks {
  draw(): void;
  drawThumbs(): void;
  drawImap(): void;
  showIntervention(): void;
  syncControls(): void;
  commitBrush(): void;
  exportPng(): void;
  toggleHelp(): void;
}

export type Tool = "brush" | "erase" | "query" | "similarity";
export type TraitEvent = `change:${keyof Traits & string}`;

export interface ViewCtx {
  model: Model;
  store: Store;
  signal: AbortSignal;
  debug: DebugInfo;
  root: HTMLElement;
  /** The screen-reader live region. */
  live: HTMLElement;
  bus: TeachBus;
  ui: Hooks;
  /** An element id unique to this view. */
  id(s: string): string;
  on<E extends Event = Event>(t: EventTarget, ev: string, cb: (e: E) => void): void;
  /** Listen to a trait change until the view goes (a misspelt trait fails the typecheck). */
  listen(ev: TraitEvent, cb: () => void): void;
  setState(patch: Partial<Traits>): void;
  /** Layer, head and query act on raw attention only; elsewhere they change nothing (and never the method). */
  toAttention(patch: Partial<Traits>): void;
  brush: { tool: Tool; pending: Set<number> };
  image: { canvas: HTMLCanvasElement | null; version: number };
  buildImage(): void;
  theme: { fg: string; accent: string };
  readTheme(): void;
  layout: { canvasCss: number };
  size(): { w: number; h: number };
  grid(): [number, number];
  methodInfo(m: string): MethodInfo;
  methods(): string[];
  offline(): boolean;
  isAttn(): boolean;
  className(i: number): string;
  mapKey(method: string): string;
  /** Key of the current view: the map key; raw attention adds layer, head and query (Python's ``_view_js``). */
  viewKey(): string;
  chooseCmap(signed: boolean): string;
  /** Draw `base` (if any) with a map overlaid into canvas `c` of CSS size cssW x cssH. */
  paint(c: HTMLCanvasElement, cssW: number, cssH: number, base: HTMLCanvasElement | null, values: Float32Array | null, shape: number[], isSigned: boolean): void;
}

let viewCounter = 0;

export function makeContext(model: Model, store: Store, root: HTMLElement, live: HTMLElement, bus: TeachBus, debug: DebugInfo, signal: AbortSignal): ViewCtx {
  const vid = ++viewCounter;
  const ui = {} as Hooks;
  const methodInfo = (m: string): MethodInfo => (model.get("method_info") ?? {})[m] ?? {};
  const setState = (patch: Partial<Traits>) => {
    for (const k of Object.keys(patch) as (keyof Traits)[]) model.set(k, patch[k] as never);
    model.save_changes();
  };
  const ctx: ViewCtx = {
    model,
    store,
    signal,
    debug,
    root,
    live,
    bus,
    ui,
    id: (s) => `vx${vid}-${s}`,
    on: (t, ev, cb) => t.addEventListener(ev, cb as EventListener, { signal }),
    listen(ev, cb) {
      model.on(ev, cb);
      signal.addEventListener("abort", () => model.off(ev, cb));
    },
    setState,
    toAttention(patch) {
      if (model.get("method") !== ATTN) {
        const label = methodInfo(model.get("method")).label ?? model.get("method");
        live.textContent = `${label} has no layer or head to choose; pick Attention for those.`;
        return;
      }
      setState(patch);
    },
    brush: { tool: "brush", pending: new Set<number>(model.get("brushed") ?? []) },
    image: { canvas: null, version: 0 },
    buildImage() {
      ctx.image.canvas = rgbCanvas(model.get("image"));
      ctx.image.version++;
    },
    theme: { fg: "#1f1f1f", accent: "#1976d2" },
    readTheme() {
      const cs = getComputedStyle(root);
      ctx.theme.fg = cs.getPropertyValue("--vx-fg").trim() || ctx.theme.fg;
      ctx.theme.accent = cs.getPropertyValue("--vx-accent").trim() || ctx.theme.accent;
    },
    layout: { canvasCss: CANVAS_MAX },
    size() {
      const im = model.get("image");
      const ar = im && im.width && im.height ? im.height / im.width : 1;
      return { w: ctx.layout.canvasCss, h: Math.round(ctx.layout.canvasCss * ar) };
    },
    grid: () => {
      const g = model.get("grid");
      return g && g.length === 2 ? [g[0], g[1]] : [1, 1];
    },
    methodInfo,
    methods: () => model.get("methods") ?? [],
    offline: () => !!model.get("offline"),
    isAttn: () => model.get("method") === ATTN,
    className(i) {
      return (model.get("class_names") ?? [])[i] ?? `class ${i}`;
    },
    mapKey(method) {
      const cs = methodInfo(method).class_specific;
      return mapKey(model.get("image_index"), method, cs ? model.get("target") : null, model.get("params_version") ?? 0);
    },
    viewKey() {
      const method = model.get("method");
      if (method !== ATTN) return ctx.mapKey(method);
      return attentionViewKey(model.get("image_index"), model.get("layer"), model.get("head"), model.get("query"), model.get("params_version") ?? 0);
    },
    chooseCmap(isSigned) {
      const c = model.get("colormap");
      if (c && c !== "auto") return c;
      return isSigned ? DEFAULT_DIVERGING : DEFAULT_SEQUENTIAL;
    },
    paint(c, cssW, cssH, base, values, shape, isSigned) {
      const dpr = window.devicePixelRatio || 1;
      if (c.width !== Math.round(cssW * dpr) || c.height !== Math.round(cssH * dpr)) {
        c.width = Math.round(cssW * dpr);
        c.height = Math.round(cssH * dpr);
        c.style.width = `${cssW}px`;
        c.style.height = `${cssH}px`;
      }
      const g = c.getContext("2d")!;
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, cssW, cssH);
      if (base) {
        g.imageSmoothingEnabled = true;
        g.drawImage(base, 0, 0, cssW, cssH);
      }
      if (!values) return;
      const [gh, gw] = shape;
      const n = normalize(values, isSigned);
      const ov = document.createElement("canvas");
      ov.width = gw;
      ov.height = gh;
      const octx = ov.getContext("2d")!;
      const img = octx.createImageData(gw, gh);
      colorize(n.t, ctx.chooseCmap(isSigned), 255, img.data);
      if (isSigned) signedAlpha(n.t, img.data);
      octx.putImageData(img, 0, 0);
      g.globalAlpha = base ? Number(model.get("opacity") ?? 0.6) : 1;
      g.imageSmoothingEnabled = !!model.get("smooth");
      g.drawImage(ov, 0, 0, cssW, cssH);
      g.globalAlpha = 1;
    },
  };
  return ctx;
}
