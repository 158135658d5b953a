// The head grid: one thumbnail per head of the current layer (and their mean), each the head's attention
// row. A toggle colours the heads by their attribution to the current class — direct (each head's direct
// contribution to the class logit) or ablation (the change of P(class) when the head alone is off). With
// ablation on, clicking heads switches them off (several at once, across layers) and shows the new
// probabilities; Reset switches them all back on. Kernel answers: "head_attr" (all L x H values of one
// image and class, asked once) and "ablate" (vit_explore/widget/_teaching.py).
import { colorize, lightness, normalize } from "./colormap";
import { attnRow } from "./decode";
import { h } from "./dom";
import { fmt, signedFmt } from "./format";
import { f32, probsTable, type TeachMsg } from "./teach_common";
import { headPairs, headScale } from "./teach_geom";
import type { ViewCtx } from "./view_context";

export type AttrMode = "off" | "direct" | "ablation";
const MODES: [AttrMode, string, string][] = [
  ["off", "off", "Thumbnails only"],
  ["direct", "direct", "Colour each head by its direct contribution to the class logit (final LayerNorm scale frozen)"],
  ["ablation", "ablation", "Colour each head by the change of P(class) when it alone is off; click heads to switch them off"],
];

interface AttrData {
  L: number;
  H: number;
  direct: Float32Array;
  ablation: Float32Array;
  prob: number;
}

export function headsPanel(ctx: ViewCtx) {
  const { model, store } = ctx;
  const title = h("div", { class: "vx-headstitle" });
  const bar = h("div", { class: "vx-row vx-attrbar" });
  const seg = h("div", { class: "vx-seg", role: "radiogroup", "aria-label": "Colour the heads by attribution to the class" });
  const modeBtns = MODES.map(([k, label, tip]) => {
    const b = h("button", { class: "vx-btn", role: "radio", "aria-checked": String(k === "off"), "data-attr": k, "data-testid": `vx-attr-${k}`, title: tip }, label);
    seg.append(b);
    return b;
  });
  const reset = h("button", { class: "vx-btn", "data-testid": "vx-attr-reset", title: "Switch every head back on" }, "Reset");
  bar.append(h("span", { class: "vx-muted" }, "attribution "), seg, reset);
  const grid = h("div", { class: "vx-heads", role: "group", "aria-label": "Heads of the current layer", "data-testid": "vx-heads" });
  const note = h("div", { class: "vx-muted", "data-testid": "vx-attr-note" });
  const result = h("div", { class: "vx-teach-result", "data-testid": "vx-attr-result" });

  let mode: AttrMode = "off";
  const off = new Set<string>();
  const data = new Map<string, AttrData>();
  const asked = new Set<string>();
  const key = () => `${model.get("image_index")}|${model.get("target")}`;

  function ensure(): void {
    const k = key();
    if (mode === "off" || data.has(k) || asked.has(k) || ctx.offline()) return;
    asked.add(k);
    ctx.bus.request({ kind: "head_attr", image_index: model.get("image_index"), target: model.get("target") });
  }
  function sendAblation(click: boolean): void {
    if (off.size === 0) {
      result.replaceChildren();
      return;
    }
    ctx.bus.request({ kind: "ablate", image_index: model.get("image_index"), target: model.get("target"), heads: headPairs(off) }, click);
  }
  function setMode(m: AttrMode): void {
    mode = m;
    ensure();
    draw();
  }

  ctx.on<MouseEvent>(seg, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-attr]") as HTMLElement | null;
    if (b) setMode(b.dataset.attr as AttrMode);
  });
  ctx.on(reset, "click", () => {
    off.clear();
    result.replaceChildren();
    draw();
  });
  ctx.on<MouseEvent>(grid, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-head]") as HTMLElement | null;
    if (!b) return;
    const head = Number(b.dataset.head);
    if (mode === "ablation" && head >= 0) {
      const k = `${model.get("layer")},${head}`;
      if (off.has(k)) off.delete(k);
      else off.add(k);
      draw();
      sendAblation(true);
    } else ctx.toAttention({ head });
  });
  ctx.listen("change:image_index", () => {
    off.clear();
    result.replaceChildren();
    ensure();
    draw();
  });
  ctx.listen("change:target", () => {
    ensure();
    draw();
    if (off.size) sendAblation(false);
  });
  ctx.bus.subscribe((m: TeachMsg, b: DataView[]) => {
    if (m.kind === "head_attr") {
      if (m.error) note.textContent = m.error;
      else data.set(`${m.image_index}|${m.target}`, { L: m.num_layers, H: m.num_heads, direct: f32(b[0]), ablation: f32(b[1]), prob: m.prob });
      if (!m.error) draw();
    } else if (m.kind === "ablate") {
      const now = JSON.stringify(headPairs(off));
      if (!m.error && (JSON.stringify(m.heads ?? []) !== now || m.image_index !== model.get("image_index"))) return; // superseded
      const names = headPairs(off).map(([l, hh]) => `L${l}h${hh}`).join(", ");
      probsTable(result, m, `with ${off.size} head${off.size === 1 ? "" : "s"} switched off (${names})`);
    }
  });

  /** The attribution of every head of the current layer, its colour, and the scale's half-width. */
  function attribution(): { vals: Float32Array; rgba: Uint8ClampedArray; m: number; d: AttrData } | null {
    const d = mode === "off" ? undefined : data.get(key());
    if (!d) return null;
    const all = mode === "direct" ? d.direct : d.ablation;
    const layer = Math.min(model.get("layer"), d.L - 1);
    const vals = all.subarray(layer * d.H, (layer + 1) * d.H);
    const { t, max: m } = headScale(all, layer, d.H);
    return { vals, rgba: colorize(t, "rdbu", 255), m, d };
  }

  function draw(): void {
    const img = model.get("image_index");
    const layer = model.get("layer");
    const nh = model.get("num_heads");
    const l = store.getAttn(img, layer);
    const [gh, gw] = ctx.grid();
    const q = model.get("query");
    title.textContent = `Heads of layer ${layer} (${q < 0 ? "CLS row" : `row of patch ${q}`}) — ${mode === "ablation" ? "click heads to switch them off" : "click one to show it"}`;
    for (const b of modeBtns) b.setAttribute("aria-checked", String(b.dataset.attr === mode));
    reset.disabled = off.size === 0;
    if (grid.childElementCount !== nh + 1) {
      grid.textContent = "";
      for (let i = -1; i < nh; i++) {
        const b = h("button", { class: "vx-thumb", "data-head": String(i), "data-testid": `vx-head-${i}`, "aria-pressed": "false" });
        const c = h("canvas", { width: String(gw), height: String(gh), "aria-hidden": "true" });
        b.append(c, h("span", { class: "vx-headlabel" }, i < 0 ? "mean" : `h${i}`));
        grid.append(b);
      }
    }
    const attr = attribution();
    const cur = model.get("head");
    const isAttn = ctx.isAttn();
    for (const b of Array.from(grid.children) as HTMLButtonElement[]) {
      const hi = Number(b.dataset.head);
      const isOff = hi >= 0 && off.has(`${layer},${hi}`);
      b.setAttribute("aria-pressed", String(mode === "ablation" ? isOff : isAttn && hi === cur));
      b.classList.toggle("vx-off", isOff);
      const name = hi < 0 ? "Mean of heads" : `Head ${hi}`;
      const label = b.querySelector(".vx-headlabel") as HTMLElement;
      if (attr && hi >= 0) {
        const v = attr.vals[hi];
        const rgb: [number, number, number] = [attr.rgba[hi * 4], attr.rgba[hi * 4 + 1], attr.rgba[hi * 4 + 2]];
        label.style.background = `rgb(${rgb.join(",")})`;
        label.style.color = lightness(rgb) > 55 ? "#000" : "#fff";
        b.dataset.attrValue = String(v);
        label.textContent = `h${hi} ${signedFmt(v, mode === "direct" ? 2 : 3)}`;
        b.setAttribute("aria-label", `${name}, ${mode} ${fmt(v, 4)}${isOff ? ", switched off" : ""}`);
      } else {
        label.style.background = "";
        label.style.color = "";
        delete b.dataset.attrValue;
        label.textContent = hi < 0 ? "mean" : `h${hi}`;
        b.setAttribute("aria-label", `${name}${isOff ? ", switched off" : ""}`);
      }
      const c = b.querySelector("canvas")!;
      if (c.width !== gw || c.height !== gh) {
        c.width = gw;
        c.height = gh;
      }
      const g = c.getContext("2d")!;
      if (!l) {
        g.clearRect(0, 0, gw, gh);
        continue;
      }
      const values = attnRow(l, hi < 0 ? l.heads - 1 : hi, q < 0 ? 0 : q + 1);
      const n = normalize(values, false);
      const px = g.createImageData(gw, gh);
      colorize(n.t, ctx.chooseCmap(false), 255, px.data);
      g.putImageData(px, 0, 0);
    }
    const offText = off.size ? ` ${off.size} head${off.size === 1 ? "" : "s"} off: ${headPairs(off).map(([a, b]) => `L${a}h${b}`).join(", ")}.` : "";
    if (mode === "off") note.textContent = offText.trim();
    else if (!attr) note.textContent = ctx.offline() ? "head attribution needs a running kernel" : "computing the head attribution…";
    else if (mode === "direct") note.textContent = `colour: each head's direct contribution to the logit of “${ctx.className(model.get("target"))}” (final LayerNorm scale frozen); blue −, red +, scale ±${fmt(attr.m, 3)} over all layers.${offText}`;
    else note.textContent = `colour: change of P(“${ctx.className(model.get("target"))}”) = ${fmt(attr.d.prob)} when the head alone is off; scale ±${fmt(attr.m, 4)} over all layers. Click heads to switch them off.${offText}`;
  }

  function sync(): void {
    const show = ctx.isAttn() && model.get("token_attention") !== false;
    for (const e of [title, grid, note, result]) e.hidden = !show;
    bar.hidden = !show || ctx.offline(); // attribution and ablation need a running kernel
  }

  return { els: [title, bar, grid, note, result], draw, sync, setMode };
}
