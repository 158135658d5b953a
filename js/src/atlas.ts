// anywidget front end of vit_explore's Atlas (vit_explore/widget/_atlas.py), plus the standalone
// host used by Atlas.to_html(). Every user string is set with textContent.
import "./atlas.css";
import { gunzipBase64, revive, typed, type Bin } from "./decode";
import { LocalModel } from "./local_model";
import { colorize, normalize, isSigned } from "./colormap";

type Json = any;

export interface Model {
  get(key: string): any;
  set(key: string, value: unknown): void;
  save_changes(): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event?: string | null, cb?: ((...args: any[]) => void) | null): void;
  send(content: unknown, callbacks?: unknown, buffers?: unknown[]): void;
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const SCATTER = 360;
const CARD_MAP = 132;

function h<K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text = ""): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text) e.textContent = text;
  return e;
}

export function fmtRate(r: number | null | undefined, ci?: (number | null)[] | null): string {
  if (r === null || r === undefined || !Number.isFinite(r)) return "n/a";
  const s = r.toFixed(2);
  if (!ci || ci[0] === null || ci[1] === null) return s;
  return `${s} [${Number(ci[0]).toFixed(2)}, ${Number(ci[1]).toFixed(2)}]`;
}

/** Index of the point nearest (px, py) within `radius` pixels, or -1 (points already in pixels). */
export function nearestPoint(xs: Float32Array, ys: Float32Array, px: number, py: number, radius: number): number {
  let best = -1;
  let bd = radius * radius;
  for (let i = 0; i < xs.length; i++) {
    const d = (xs[i] - px) ** 2 + (ys[i] - py) ** 2;
    if (d <= bd) {
      bd = d;
      best = i;
    }
  }
  return best;
}

/** Scale (n, 2) embedding points into a size x size canvas with a margin. */
export function toPixels(points: Float32Array, size: number, margin = 10): [Float32Array, Float32Array] {
  const n = points.length / 2;
  const xs = new Float32Array(n);
  const ys = new Float32Array(n);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    x0 = Math.min(x0, points[2 * i]);
    x1 = Math.max(x1, points[2 * i]);
    y0 = Math.min(y0, points[2 * i + 1]);
    y1 = Math.max(y1, points[2 * i + 1]);
  }
  const sx = x1 > x0 ? (size - 2 * margin) / (x1 - x0) : 0;
  const sy = y1 > y0 ? (size - 2 * margin) / (y1 - y0) : 0;
  for (let i = 0; i < n; i++) {
    xs[i] = margin + (points[2 * i] - x0) * sx + (sx ? 0 : (size - 2 * margin) / 2);
    ys[i] = margin + (points[2 * i + 1] - y0) * sy + (sy ? 0 : (size - 2 * margin) / 2);
  }
  return [xs, ys];
}

function drawMap(cv: HTMLCanvasElement, map: Float32Array, gh: number, gw: number, marked: Set<number>, brushed: Set<number>) {
  const ctx = cv.getContext("2d")!;
  const signed = isSigned(map);
  const rgba = colorize(normalize(map, signed).t, signed ? "rdbu" : "viridis", 255);
  const img = new ImageData(rgba as Uint8ClampedArray<ArrayBuffer>, gw, gh);
  const tmp = document.createElement("canvas");
  tmp.width = gw;
  tmp.height = gh;
  tmp.getContext("2d")!.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(tmp, 0, 0, cv.width, cv.height);
  const cw = cv.width / gw, ch = cv.height / gh;
  ctx.lineWidth = 2;
  for (const [set, colour] of [[marked, "#ffffff"], [brushed, "#ff2d2d"]] as [Set<number>, string][]) {
    ctx.strokeStyle = colour;
    for (const p of set) ctx.strokeRect((p % gw) * cw + 1, Math.floor(p / gw) * ch + 1, cw - 2, ch - 2);
  }
}

function drawImage(cv: HTMLCanvasElement, p: Json, gh: number, gw: number) {
  const ctx = cv.getContext("2d")!;
  const rgb = typed(p.rgb as Bin, Uint8Array);
  const rgba = new Uint8ClampedArray(p.h * p.w * 4);
  for (let i = 0; i < p.h * p.w; i++) {
    rgba[4 * i] = rgb[3 * i];
    rgba[4 * i + 1] = rgb[3 * i + 1];
    rgba[4 * i + 2] = rgb[3 * i + 2];
    rgba[4 * i + 3] = 255;
  }
  const tmp = document.createElement("canvas");
  tmp.width = p.w;
  tmp.height = p.h;
  tmp.getContext("2d")!.putImageData(new ImageData(rgba, p.w, p.h), 0, 0);
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(tmp, 0, 0, cv.width / 2 - 4, cv.height);
  const map = typed(p.map as Bin, Float32Array);
  const signed = isSigned(map);
  const m = document.createElement("canvas");
  m.width = gw;
  m.height = gh;
  m.getContext("2d")!.putImageData(new ImageData(colorize(normalize(map, signed).t, signed ? "rdbu" : "viridis", 255) as Uint8ClampedArray<ArrayBuffer>, gw, gh), 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, cv.width / 2 + 4, 0, cv.width / 2 - 4, cv.height);
  ctx.globalAlpha = 0.6;
  ctx.drawImage(m, cv.width / 2 + 4, 0, cv.width / 2 - 4, cv.height);
  ctx.globalAlpha = 1;
}

export function renderAtlas(model: Model, el: HTMLElement, signal: AbortSignal) {
  const root = h("div", "vx-atlas");
  root.setAttribute("data-lm-suppress-shortcuts", "");
  el.appendChild(root);
  const head = h("div", "vx-atlas-head");
  const title = h("div", "vx-atlas-title");
  const select = h("select", "vx-atlas-class");
  select.setAttribute("aria-label", "class");
  const status = h("div", "vx-atlas-status");
  status.setAttribute("aria-live", "polite");
  const contrastBox = h("label", "vx-atlas-contrast");
  const contrastInput = h("input");
  contrastInput.type = "checkbox";
  contrastBox.title = "show each cluster's mean map minus its class's mean map (what sets the cluster apart), and confirm its hot patches";
  contrastBox.append(contrastInput, document.createTextNode(" vs class"));
  head.append(title, select, contrastBox, status);
  const body = h("div", "vx-atlas-body");
  const left = h("div", "vx-atlas-left");
  const scatter = h("canvas", "vx-atlas-scatter");
  scatter.width = SCATTER;
  scatter.height = SCATTER;
  scatter.setAttribute("role", "img");
  const info = h("div", "vx-atlas-info");
  const detail = h("div", "vx-atlas-detail");
  const detailCanvas = h("canvas", "vx-atlas-image");
  detailCanvas.width = 2 * 160 + 8;
  detailCanvas.height = 160;
  const detailText = h("div", "vx-atlas-detail-text");
  const openBtn = h("button", "vx-atlas-open", "open in Explorer");
  detail.append(detailText, detailCanvas, openBtn);
  left.append(scatter, info, detail);
  const cards = h("div", "vx-atlas-cards");
  const result = h("div", "vx-atlas-result");
  body.append(left, h("div", "vx-atlas-right"));
  (body.lastChild as HTMLElement).append(result, cards);
  root.append(head, body);

  let px: [Float32Array, Float32Array] = [new Float32Array(0), new Float32Array(0)];
  let labels = new Int32Array(0);
  let indices = new Int32Array(0);
  const brushed = new Map<number, Set<number>>();
  let reqId = 0;

  function grid(): [number, number] {
    const g = model.get("grid") as number[];
    return [g[0], g[1]];
  }

  function drawScatter() {
    const ctx = scatter.getContext("2d")!;
    ctx.clearRect(0, 0, SCATTER, SCATTER);
    const sel = model.get("selected") as number;
    for (let i = 0; i < labels.length; i++) {
      ctx.fillStyle = PALETTE[labels[i] % PALETTE.length];
      ctx.fillRect(px[0][i] - 2, px[1][i] - 2, 4, 4);
    }
    for (let i = 0; i < labels.length; i++) {
      if (indices[i] !== sel) continue;
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.strokeRect(px[0][i] - 5, px[1][i] - 5, 10, 10);
    }
  }

  function select_(i: number) {
    model.set("selected", i);
    model.save_changes();
    if (model.get("offline")) {
      const p = model.get("offline_data")?.images?.[String(i)];
      model.set("selected_payload", p ?? {});
      if (!p) model.set("status", `image ${i} is not embedded in this export`);
    }
  }

  function renderClass() {
    const d = model.get("class_data") as Json;
    if (!d || !d.points) return;
    px = toPixels(typed(d.points as Bin, Float32Array), SCATTER);
    labels = typed(d.labels as Bin, Int32Array);
    indices = typed(d.indices as Bin, Int32Array);
    select.value = String(d.c);
    info.textContent = `${d.name}: ${d.n} images, ${d.k} clusters (eigengap); outliers: ${d.outliers.length}`;
    drawScatter();
    const [gh, gw] = grid();
    cards.replaceChildren();
    for (const card of d.clusters as Json[]) {
      const box = h("div", "vx-atlas-card");
      box.dataset.cluster = String(card.k);
      const gap = d.eigengap[d.k - 1];
      const label = h("div", "vx-atlas-card-title", `cluster ${card.k}: ${card.size} images` + (gap !== undefined ? `, eigengap ${Number(gap).toFixed(3)}` : ""));
      label.style.borderLeft = `6px solid ${PALETTE[card.k % PALETTE.length]}`;
      const cv = h("canvas", "vx-atlas-mean");
      cv.width = CARD_MAP;
      cv.height = CARD_MAP;
      const contrast = !!model.get("contrast") && card.contrast_map !== undefined;
      cv.setAttribute("aria-label", `${contrast ? "contrast" : "mean"} map of cluster ${card.k}; brush patches to test them`);
      const map = typed((contrast ? card.contrast_map : card.mean_map) as Bin, Float32Array);
      const hot = new Set<number>(contrast ? card.contrast_hot : card.hot);
      const mine = brushed.get(card.k) ?? new Set<number>();
      brushed.set(card.k, mine);
      drawMap(cv, map, gh, gw, hot, mine);
      let painting = false;
      const cellAt = (ev: PointerEvent) => {
        const r = cv.getBoundingClientRect();
        const col = Math.floor(((ev.clientX - r.left) / r.width) * gw);
        const row = Math.floor(((ev.clientY - r.top) / r.height) * gh);
        return row >= 0 && row < gh && col >= 0 && col < gw ? row * gw + col : -1;
      };
      cv.addEventListener("pointerdown", (ev) => {
        painting = true;
        mine.clear();
        const p = cellAt(ev);
        if (p >= 0) mine.add(p);
        drawMap(cv, map, gh, gw, hot, mine);
      }, { signal });
      cv.addEventListener("pointermove", (ev) => {
        if (!painting) return;
        const p = cellAt(ev);
        if (p >= 0 && !mine.has(p)) {
          mine.add(p);
          drawMap(cv, map, gh, gw, hot, mine);
        }
      }, { signal });
      const finish = () => {
        if (!painting) return;
        painting = false;
        if (mine.size) runConfirm(d.c, card.k, Array.from(mine));
      };
      cv.addEventListener("pointerup", finish, { signal });
      cv.addEventListener("pointerleave", finish, { signal });
      const btn = h("button", "vx-atlas-confirm", "confirm hot patches");
      btn.addEventListener("click", () => runConfirm(d.c, card.k, null), { signal });
      const members = h("div", "vx-atlas-members");
      for (const i of card.members as number[]) {
        const b = h("button", "vx-atlas-member", `#${i}`);
        b.addEventListener("click", () => select_(i), { signal });
        members.append(b);
      }
      box.append(label, cv, btn, members);
      cards.append(box);
    }
  }

  function runConfirm(c: number, k: number, patches: number[] | null) {
    if (model.get("offline")) {
      model.set("status", "confirming needs a running kernel (this is an offline export)");
      return;
    }
    reqId += 1;
    model.set("status", "confirming...");
    model.send({ kind: "confirm", c, k, patches, id: reqId });
  }

  function renderResult() {
    const r = model.get("confirmed") as Json;
    result.replaceChildren();
    if (!r || r.flip_rate === undefined) return;
    const line = (label: string, a: string, b: string) => {
      const row = h("div", "vx-atlas-result-row");
      row.append(h("span", "vx-atlas-result-label", label), h("span", "vx-atlas-flip", a), h("span", "vx-atlas-control", b));
      return row;
    };
    result.append(
      h("div", "vx-atlas-result-title", `class ${r.class}, cluster ${r.cluster}: ${r.patches.length} patches (${r.mode}), control ${r.control_patches.length} coldest`),
      line("", "flip rate", "control"),
      line(`members (${r.n})`, fmtRate(r.flip_rate, r.flip_rate_ci), fmtRate(r.control_flip_rate, r.control_flip_rate_ci)),
      line(`rest of class (${r.rest_n})`, fmtRate(r.rest_flip_rate, r.rest_flip_rate_ci), fmtRate(r.rest_control_flip_rate, r.rest_control_flip_rate_ci)),
      line("members Δp", fmtRate(r.delta_p, r.delta_p_ci), fmtRate(r.control_delta_p, r.control_delta_p_ci)),
    );
  }

  function renderSelected() {
    const p = model.get("selected_payload") as Json;
    if (!p || p.index === undefined) {
      detail.style.display = "none";
      return;
    }
    detail.style.display = "";
    const [gh, gw] = grid();
    drawImage(detailCanvas, p, gh, gw);
    detailText.textContent = `image ${p.index}: ${p.name}, cluster ${p.cluster}, p=${Number(p.prob).toFixed(2)}`;
    openBtn.disabled = !!model.get("offline");
    drawScatter();
  }

  function renderHead() {
    title.textContent = model.get("title") || "Atlas";
    select.replaceChildren();
    for (const c of model.get("classes") as Json[]) {
      const o = h("option", "", `${c.name} (${c.n})`);
      o.value = String(c.c);
      select.append(o);
    }
    select.value = String(model.get("class_index"));
    contrastInput.checked = !!model.get("contrast");
  }

  contrastInput.addEventListener("change", () => {
    model.set("contrast", contrastInput.checked);
    model.save_changes();
    renderClass();
  }, { signal });
  select.addEventListener("change", () => {
    const c = Number(select.value);
    brushed.clear();
    model.set("class_index", c);
    model.save_changes();
    if (model.get("offline")) model.set("class_data", model.get("offline_data").classes[String(c)]);
  }, { signal });
  scatter.addEventListener("click", (ev) => {
    const r = scatter.getBoundingClientRect();
    const i = nearestPoint(px[0], px[1], ((ev.clientX - r.left) / r.width) * SCATTER, ((ev.clientY - r.top) / r.height) * SCATTER, 8);
    if (i >= 0) select_(indices[i]);
  }, { signal });
  openBtn.addEventListener("click", () => {
    const i = model.get("selected") as number;
    if (i >= 0) model.send({ kind: "open", index: i });
  }, { signal });

  const onStatus = () => {
    status.textContent = model.get("status") || "";
  };
  model.on("change:class_data", renderClass);
  model.on("change:confirmed", renderResult);
  model.on("change:selected_payload", renderSelected);
  model.on("change:status", onStatus);
  const onContrast = () => {
    contrastInput.checked = !!model.get("contrast");
    renderClass();
  };
  model.on("change:contrast", onContrast);
  signal.addEventListener("abort", () => {
    model.off("change:contrast", onContrast);
    model.off("change:class_data", renderClass);
    model.off("change:confirmed", renderResult);
    model.off("change:selected_payload", renderSelected);
    model.off("change:status", onStatus);
    root.remove();
  });
  renderHead();
  renderClass();
  renderResult();
  renderSelected();
  onStatus();
  const reg = ((window as Json).__vxAtlas ??= { views: [] as Json[] });
  const entry = { el: root, model, pointOf: (i: number) => {
    const j = Array.from(indices).indexOf(i);
    const r = scatter.getBoundingClientRect();
    return j < 0 ? null : { x: r.left + (px[0][j] * r.width) / SCATTER, y: r.top + (px[1][j] * r.height) / SCATTER };
  } };
  reg.views.push(entry);
  signal.addEventListener("abort", () => {
    reg.views = reg.views.filter((v: Json) => v !== entry);
  });
}

function render({ model, el, signal }: { model: Model; el: HTMLElement; signal?: AbortSignal }) {
  const ctrl = new AbortController();
  signal?.addEventListener("abort", () => ctrl.abort());
  renderAtlas(model, el, ctrl.signal);
  return () => ctrl.abort();
}

export default { render };

// ---------------------------------------------------------------- standalone (to_html)

/** Mount an exported Atlas (gzip+base64 JSON state) into `el`. */
export async function mountStandalone(el: HTMLElement, text: string): Promise<Model> {
  const json = new TextDecoder().decode(await gunzipBase64(text));
  const model = new LocalModel(revive(JSON.parse(json)));
  renderAtlas(model, el, new AbortController().signal);
  return model;
}
