// Shared pieces of the teaching panels (lens.ts, similarity.ts, headattr.ts, patching.ts, tour.ts).
// All user strings (class names, tour texts) go in as textContent.
import { bytesOf } from "./decode";
import { colorize, normalize } from "./colormap";
import { TEACHING_KINDS } from "./contract";
import { h } from "./dom";
import { rgbCanvas } from "./rgb_canvas";
import type { ClassProb, Model } from "./traits";

export { h };

export interface TeachMsg {
  kind: string;
  id?: number;
  image_index?: number;
  error?: string;
  [k: string]: any;
}

/** Timing of kernel-answered clicks, read by bench/bench_explorer.py. */
export interface TeachDebug {
  clickAt: number;
  resultAt: number;
  results: number;
  lensMessages: number;
}

/** One router for the kernel's teaching answers of a view, and the request ids of its clicks. */
export interface TeachBus {
  /** Send a request; `click` marks it as a user click for the latency figures. */
  request(content: Record<string, unknown>, click?: boolean): number;
  /** Handle every teaching answer (handlers run in order; a click's answer is timed after all of them). */
  subscribe(handler: (m: TeachMsg, b: DataView[]) => void): void;
}

export function teachBus(model: Model, signal: AbortSignal, debug: TeachDebug): TeachBus {
  let nextId = 1;
  let clickId = -1;
  const handlers: ((m: TeachMsg, b: DataView[]) => void)[] = [];
  const onMsg = (msg: TeachMsg, buffers: DataView[]) => {
    if (!msg || !TEACHING_KINDS.has(msg.kind)) return;
    for (const f of handlers) f(msg, buffers ?? []);
    if (msg.id === clickId) {
      debug.resultAt = performance.now();
      debug.results++;
    }
  };
  model.on("msg:custom", onMsg);
  signal.addEventListener("abort", () => model.off("msg:custom", onMsg));
  return {
    request(content, click = false) {
      const id = nextId++;
      if (click) {
        clickId = id;
        debug.clickAt = performance.now();
      }
      model.send({ ...content, id });
      return id;
    },
    subscribe(handler) {
      handlers.push(handler);
    },
  };
}

export interface TeachContext {
  model: Model;
  signal: AbortSignal;
  debug: TeachDebug;
  /** Send a request; `click` marks it as a user click for the latency figures. */
  request(content: Record<string, unknown>, click?: boolean): number;
  /** Whether the panel is the one shown. */
  active(): boolean;
}

export const fmt = (p: number | undefined | null, d = 3) => (p === undefined || p === null || !Number.isFinite(p) ? "–" : p.toFixed(d));

/** A float32 buffer of a custom message (copied: DataViews may be unaligned). */
export function f32(dv: DataView | ArrayBuffer | undefined): Float32Array {
  if (!dv) return new Float32Array(0);
  const b = bytesOf(dv as DataView);
  const copy = new Uint8Array(b.byteLength);
  copy.set(b);
  return new Float32Array(copy.buffer);
}

export function classNames(model: Model): string[] {
  return model.get("class_names") ?? [];
}

/** Draw the current image with a (gh, gw) map over it into `canvas` (CSS size `px`). */
export function drawMap(
  canvas: HTMLCanvasElement,
  model: Model,
  values: ArrayLike<number> | null,
  cmap: string,
  range: [number, number] | null,
  marks: Iterable<number> = [],
  px = 168,
): void {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(px * dpr);
  canvas.height = Math.round(px * dpr);
  canvas.style.width = `${px}px`;
  canvas.style.height = `${px}px`;
  const ctx = canvas.getContext("2d")!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, px, px);
  const c = rgbCanvas(model.get("image"));
  if (c) ctx.drawImage(c, 0, 0, px, px);
  const [gh, gw] = model.get("grid") ?? [1, 1];
  if (values && values.length === gh * gw) {
    let t: Float32Array;
    if (range) {
      t = new Float32Array(values.length);
      const [lo, hi] = range;
      for (let i = 0; i < values.length; i++) t[i] = hi > lo ? (values[i] - lo) / (hi - lo) : 0;
    } else t = normalize(values, false).t;
    const o = document.createElement("canvas");
    o.width = gw;
    o.height = gh;
    const octx = o.getContext("2d")!;
    const img = octx.createImageData(gw, gh);
    colorize(t, cmap, 255, img.data);
    octx.putImageData(img, 0, 0);
    ctx.globalAlpha = 0.65;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(o, 0, 0, px, px);
    ctx.globalAlpha = 1;
  }
  const cw = px / gw;
  const ch = px / gh;
  for (const p of marks) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 3;
    ctx.strokeRect((p % gw) * cw + 1.5, Math.floor(p / gw) * ch + 1.5, cw - 3, ch - 3);
    ctx.strokeStyle = "#e6007e";
    ctx.lineWidth = 1.5;
    ctx.strokeRect((p % gw) * cw + 1.5, Math.floor(p / gw) * ch + 1.5, cw - 3, ch - 3);
  }
}

/** Row-major patch under a pointer event on a map canvas, or -1. */
export function cellOf(canvas: HTMLCanvasElement, model: Model, e: MouseEvent): number {
  const r = canvas.getBoundingClientRect();
  const [gh, gw] = model.get("grid") ?? [1, 1];
  const c = Math.floor(((e.clientX - r.left) / r.width) * gw);
  const row = Math.floor(((e.clientY - r.top) / r.height) * gh);
  if (c < 0 || c >= gw || row < 0 || row >= gh) return -1;
  return row * gw + c;
}

/** A before/after probability table of a kernel answer (ablation, patching). */
export function probsTable(el: HTMLElement, msg: TeachMsg, label: string): void {
  el.replaceChildren();
  if (msg.error) {
    el.append(h("div", { class: "vx-teach-error" }, msg.error));
    return;
  }
  const before: ClassProb[] = msg.before ?? [];
  const after: ClassProb[] = msg.after ?? [];
  el.append(h("div", { class: "vx-muted" }, label));
  const tbl = h("table", { class: "vx-teach-probs" });
  const head = h("tr");
  head.append(h("th", {}, "class"), h("th", {}, "before"), h("th", {}, "after"));
  tbl.append(head);
  const prob = (list: ClassProb[], i: number) => list.find((c) => c.index === i)?.prob;
  const seen = new Set<number>();
  for (const c of [...after, ...before]) {
    if (seen.has(c.index)) continue;
    seen.add(c.index);
    const tr = h("tr");
    if (c.index === msg.target) tr.className = "vx-target";
    tr.append(h("td", {}, c.name), h("td", {}, fmt(prob(before, c.index) ?? (c.index === msg.target ? msg.target_before : undefined))),
      h("td", {}, fmt(prob(after, c.index) ?? (c.index === msg.target ? msg.target_after : undefined))));
    tbl.append(tr);
  }
  el.append(tbl);
  el.append(h("div", { "data-testid": "vx-teach-target-after" }, `target ${fmt(msg.target_before)} → ${fmt(msg.target_after)}`));
}
