// Layers panel: the logit-lens trajectory of the top classes across blocks (a small SVG chart) and the
// per-patch logit lens of the current class at the current layer (a map). The lens of an image arrives
// once ("lens_request": read-out probabilities (L, C) and one class's per-patch probabilities
// (L, gh, gw)); scrubbing layers redraws from it with no kernel message.
import { classNames, drawMap, f32, fmt, h, type TeachContext, type TeachMsg } from "./teach_common";
import { layerAtX, topClasses, xOfLayer } from "./teach_geom";

const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

interface LensData {
  L: number;
  C: number;
  readout: Float32Array; // (L, C)
  patches: Map<number, Float32Array>; // class -> (L, gh, gw)
}

export function lensPanel(ctx: TeachContext): { el: HTMLElement; onMessage(m: TeachMsg, b: DataView[]): void; refresh(): void } {
  const { model } = ctx;
  const el = h("div", { class: "vx-teach-panel", "data-testid": "vx-lens-panel" });
  const chartBox = h("div", { class: "vx-teach-chart" });
  const legend = h("div", { class: "vx-teach-legend", "data-testid": "vx-lens-legend" });
  const map = h("canvas", { class: "vx-teach-map", "data-testid": "vx-lens-map", role: "img" });
  const cap = h("div", { class: "vx-muted", "data-testid": "vx-lens-caption" });
  const left = h("div");
  left.append(chartBox, legend);
  const right = h("figure", { class: "vx-teach-fig" });
  right.append(map, cap);
  el.append(left, right);

  const data = new Map<number, LensData>();
  const asked = new Set<string>();
  const img = () => model.get("image_index");
  const target = () => model.get("target");

  function ensure(): void {
    if (model.get("offline")) return;
    const i = img();
    const c = target();
    const d = data.get(i);
    if (!d) {
      const k = `${i}`;
      if (!asked.has(k)) {
        asked.add(k);
        asked.add(`${i}|${c}`);
        ctx.request({ kind: "lens_request", image_index: i, target: c });
      }
    } else if (!d.patches.has(c) && !asked.has(`${i}|${c}`)) {
      asked.add(`${i}|${c}`);
      ctx.request({ kind: "lens_class", image_index: i, target: c });
    }
  }

  function draw(): void {
    const i = img();
    const d = data.get(i);
    chartBox.replaceChildren();
    legend.replaceChildren();
    const layer = model.get("layer");
    const c = target();
    const names = classNames(model);
    if (!d) {
      cap.textContent = "computing the logit lens…";
      drawMap(map, model, null, "viridis", null);
      return;
    }
    // top classes: by the last block's read-out, plus the current class
    const order = topClasses(d.readout, d.L, d.C, c, 5);
    const W = 260, H = 120, pad = 22;
    const s = document.createElementNS(SVGNS, "svg");
    s.setAttribute("viewBox", `0 0 ${W} ${H}`);
    s.setAttribute("width", String(W));
    s.setAttribute("height", String(H));
    s.setAttribute("role", "img");
    s.setAttribute("aria-label", "Logit-lens probability of the top classes after each block");
    s.setAttribute("data-testid", "vx-lens-chart");
    const xAt = (l: number) => xOfLayer(l, d.L, W, pad);
    const yAt = (p: number) => H - pad + (pad - H + pad) * p;
    const line = (x1: number, y1: number, x2: number, y2: number, stroke: string, extra: Record<string, string> = {}) => {
      const e = document.createElementNS(SVGNS, "line");
      for (const [k, v] of Object.entries({ x1, y1, x2, y2, stroke, ...extra })) e.setAttribute(k, String(v));
      s.append(e);
    };
    line(pad, yAt(0), W - pad, yAt(0), "currentColor", { "stroke-opacity": "0.4" });
    line(pad, yAt(1), W - pad, yAt(1), "currentColor", { "stroke-opacity": "0.15" });
    line(xAt(layer), yAt(0), xAt(layer), yAt(1), "#e6007e", { "stroke-dasharray": "3 2", "data-testid": "vx-lens-cursor" });
    order.forEach((k, j) => {
      const pts: string[] = [];
      for (let l = 0; l < d.L; l++) pts.push(`${xAt(l).toFixed(1)},${yAt(d.readout[l * d.C + k]).toFixed(1)}`);
      const pl = document.createElementNS(SVGNS, "polyline");
      pl.setAttribute("points", pts.join(" "));
      pl.setAttribute("fill", "none");
      pl.setAttribute("stroke", COLORS[j % COLORS.length]);
      pl.setAttribute("stroke-width", k === c ? "2.5" : "1.5");
      s.append(pl);
      const item = h("span", { class: "vx-teach-key" });
      const sw = h("span", { class: "vx-teach-swatch" });
      sw.style.background = COLORS[j % COLORS.length];
      item.append(sw, document.createTextNode(`${names[k] ?? k} ${fmt(d.readout[layer * d.C + k], 2)}`));
      legend.append(item);
    });
    const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("x", String(pad));
    t.setAttribute("y", String(H - 4));
    t.setAttribute("font-size", "10");
    t.setAttribute("fill", "currentColor");
    t.textContent = `block 0 … ${d.L - 1} (click to pick a block)`;
    s.append(t);
    s.addEventListener("click", (e: MouseEvent) => {
      const r = s.getBoundingClientRect();
      const x = ((e.clientX - r.left) / r.width) * W;
      model.set("layer", layerAtX(x, d.L, W, pad));
      model.save_changes();
    });
    chartBox.append(s);
    const pp = d.patches.get(c);
    const [gh, gw] = model.get("grid") ?? [1, 1];
    const P = gh * gw;
    drawMap(map, model, pp ? pp.subarray(layer * P, (layer + 1) * P) : null, "viridis", [0, 1]);
    cap.textContent = pp
      ? `each patch read out alone: P(${names[c] ?? c}) after block ${layer} (0 to 1)`
      : "computing the per-patch lens of this class…";
    map.setAttribute("data-layer", String(layer));
  }

  function onMessage(m: TeachMsg, b: DataView[]): void {
    if (m.error || m.image_index === undefined) return;
    if (m.kind === "lens_request") {
      ctx.debug.lensMessages++;
      const d: LensData = { L: m.num_layers, C: m.num_classes, readout: f32(b[0]), patches: new Map() };
      d.patches.set(m.target, f32(b[1]));
      data.set(m.image_index, d);
    } else if (m.kind === "lens_class") {
      data.get(m.image_index)?.patches.set(m.target, f32(b[0]));
    }
    if (m.image_index === img()) {
      ensure();
      if (ctx.active()) draw();
    }
  }

  function refresh(): void {
    ensure();
    draw();
  }
  return { el, onMessage, refresh };
}
