// Head grid coloured by attribution to the current class: direct logit attribution or single-head
// ablation (change of the class's probability). With ablation on, clicking heads switches them off
// (several at once) and shows the new probabilities; Reset switches them all back on.
import { colorize } from "./colormap";
import { fmt, f32, h, probsTable, type TeachContext, type TeachMsg } from "./teach_common";
import { headPairs } from "./teach_geom";

export function headsPanel(ctx: TeachContext): { el: HTMLElement; onMessage(m: TeachMsg, b: DataView[]): void; refresh(): void } {
  const { model } = ctx;
  const el = h("div", { class: "vx-teach-panel vx-teach-col", "data-testid": "vx-heads-panel" });
  const bar = h("div", { class: "vx-seg", role: "radiogroup", "aria-label": "Head attribution" });
  const directBtn = h("button", { class: "vx-btn", role: "radio", "aria-checked": "true", "data-testid": "vx-attr-direct" }, "direct");
  const ablBtn = h("button", { class: "vx-btn", role: "radio", "aria-checked": "false", "data-testid": "vx-attr-ablation" }, "ablation");
  const reset = h("button", { class: "vx-btn", "data-testid": "vx-attr-reset", title: "Switch every head back on" }, "Reset");
  bar.append(directBtn, ablBtn, reset);
  const note = h("div", { class: "vx-muted", "data-testid": "vx-attr-note" });
  const gridEl = h("div", { class: "vx-teach-heads", role: "group", "aria-label": "Heads by block", "data-testid": "vx-attr-grid" });
  const result = h("div", { class: "vx-teach-result", "data-testid": "vx-attr-result" });
  el.append(bar, note, gridEl, result);

  let mode: "direct" | "ablation" = "direct";
  const off = new Set<string>();
  const data = new Map<string, { L: number; H: number; direct: Float32Array; ablation: Float32Array; prob: number }>();
  const asked = new Set<string>();
  const key = () => `${model.get("image_index")}|${model.get("target")}`;

  function ensure(): void {
    const k = key();
    if (data.has(k) || asked.has(k) || model.get("offline")) return;
    asked.add(k);
    ctx.request({ kind: "head_attr", image_index: model.get("image_index"), target: model.get("target") });
  }
  function sendAblation(click: boolean): void {
    if (off.size === 0) {
      result.replaceChildren();
      return;
    }
    const heads = headPairs(off);
    ctx.request({ kind: "ablate", image_index: model.get("image_index"), target: model.get("target"), heads }, click);
  }
  function draw(): void {
    directBtn.setAttribute("aria-checked", String(mode === "direct"));
    ablBtn.setAttribute("aria-checked", String(mode === "ablation"));
    const d = data.get(key());
    gridEl.replaceChildren();
    if (!d) {
      note.textContent = "computing the head attribution…";
      return;
    }
    const vals = mode === "direct" ? d.direct : d.ablation;
    let m = 0;
    for (const v of vals) m = Math.max(m, Math.abs(v));
    const t = new Float32Array(vals.length).map((_, i) => (m > 0 ? 0.5 + vals[i] / (2 * m) : 0.5));
    const rgba = colorize(t, "rdbu", 255);
    note.textContent = mode === "direct"
      ? `each head's direct contribution to the class logit (final LayerNorm scale frozen); ±${fmt(m, 3)}. Click a head to view it.`
      : `change of P(class) = ${fmt(d.prob)} when the head alone is off; ±${fmt(m, 4)}. Click heads to switch them off.`;
    gridEl.style.gridTemplateColumns = `auto repeat(${d.H}, 1.6em)`;
    for (let l = 0; l < d.L; l++) {
      gridEl.append(h("span", { class: "vx-muted" }, String(l)));
      for (let hh = 0; hh < d.H; hh++) {
        const i = l * d.H + hh;
        const isOff = off.has(`${l},${hh}`);
        const b = h("button", {
          class: `vx-teach-head${isOff ? " vx-off" : ""}`,
          "data-testid": `vx-attr-${l}-${hh}`,
          "aria-pressed": String(isOff),
          title: `block ${l}, head ${hh}: ${mode} ${fmt(vals[i], 4)}${isOff ? " (off)" : ""}`,
          "aria-label": `block ${l} head ${hh}, ${mode} ${fmt(vals[i], 4)}${isOff ? ", switched off" : ""}`,
        });
        b.style.background = `rgb(${rgba[i * 4]},${rgba[i * 4 + 1]},${rgba[i * 4 + 2]})`;
        b.addEventListener("click", () => {
          if (mode === "ablation") {
            const k = `${l},${hh}`;
            if (off.has(k)) off.delete(k);
            else off.add(k);
            draw();
            sendAblation(true);
          } else {
            model.set("layer", l);
            model.set("head", hh);
            model.save_changes();
          }
        });
        gridEl.append(b);
      }
    }
  }
  directBtn.addEventListener("click", () => {
    mode = "direct";
    draw();
  }, { signal: ctx.signal });
  ablBtn.addEventListener("click", () => {
    mode = "ablation";
    draw();
  }, { signal: ctx.signal });
  reset.addEventListener("click", () => {
    off.clear();
    result.replaceChildren();
    draw();
  }, { signal: ctx.signal });
  const onChange = () => {
    off.clear();
    result.replaceChildren();
  };
  model.on("change:image_index", onChange);
  ctx.signal.addEventListener("abort", () => model.off("change:image_index", onChange));

  function onMessage(m: TeachMsg, b: DataView[]): void {
    if (m.kind === "head_attr") {
      if (m.error) {
        note.textContent = m.error;
        return;
      }
      data.set(`${m.image_index}|${m.target}`, { L: m.num_layers, H: m.num_heads, direct: f32(b[0]), ablation: f32(b[1]), prob: m.prob });
      if (ctx.active()) draw();
    } else if (m.kind === "ablate") {
      const now = JSON.stringify(headPairs(off));
      const got = JSON.stringify(m.heads ?? []);
      if (!m.error && (got !== now || m.image_index !== model.get("image_index"))) return; // superseded
      probsTable(result, m, `with ${off.size} head${off.size === 1 ? "" : "s"} switched off`);
    }
  }
  function refresh(): void {
    ensure();
    draw();
    if (off.size) sendAblation(false);
  }
  return { el, onMessage, refresh };
}
