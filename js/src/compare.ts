// The compare grid: one tile per method for this image and class, each the method's map over the image;
// clicking a tile shows that method in the main view.
import { ATTN } from "./contract";
import { attnRow } from "./decode";
import { h } from "./dom";
import type { TilePayload } from "./traits";
import type { ViewCtx } from "./view_context";

const TILE = 96;

export function comparePanel(ctx: ViewCtx, toggle: HTMLElement): { el: HTMLElement; draw(): void } {
  const { model, store } = ctx;
  const el = h("section", { class: "vx-compare", "data-testid": "vx-compare", "aria-label": "Methods side by side", hidden: "" });
  ctx.on<MouseEvent>(el, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-method]") as HTMLElement | null;
    if (b?.dataset.method) ctx.setState({ method: b.dataset.method });
  });

  function draw(): void {
    const on = !!model.get("compare");
    toggle.setAttribute("aria-pressed", String(on));
    el.hidden = !on;
    if (!on) return;
    const list = (model.get("compare_methods") ?? []).filter((m) => ctx.methods().includes(m));
    const payload: TilePayload[] = model.get("compare_payload") ?? [];
    const byMethod = new Map(payload.map((p) => [p.method, p]));
    if (el.dataset.methods !== list.join(",")) {
      el.dataset.methods = list.join(",");
      el.textContent = "";
      for (const m of list) {
        const b = h("button", { class: "vx-tile", "data-method": m, "data-testid": `vx-tile-${m}`, "aria-pressed": "false" });
        const c = h("canvas", { "aria-hidden": "true" });
        b.append(c, h("span", { class: "vx-tilelabel" }), h("span", { class: "vx-tilenote vx-muted" }));
        el.append(b);
      }
    }
    const { w, h: hh } = ctx.size();
    const tw = TILE;
    const th = Math.round((TILE * hh) / w);
    const cur = model.get("method");
    const tgt = ctx.className(model.get("target"));
    for (const b of Array.from(el.children) as HTMLButtonElement[]) {
      const m = b.dataset.method!;
      const info = ctx.methodInfo(m);
      let label = info.label ?? m;
      let values: Float32Array | null = null;
      let shape: number[] = ctx.grid();
      let isSigned = false;
      let note = "";
      if (m === ATTN) {
        const layer = model.get("layer");
        const head = model.get("head");
        const q = model.get("query");
        const l = store.getAttn(model.get("image_index"), layer);
        label = `${label} · L${layer} · ${head < 0 ? "mean" : `h${head}`}`;
        if (l) values = attnRow(l, head < 0 ? l.heads - 1 : head, q < 0 ? 0 : q + 1);
        else note = "loading…";
      } else {
        const key = ctx.mapKey(m);
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
        else note = ctx.offline() ? "not computed for this export" : "computing…";
      }
      b.querySelector(".vx-tilelabel")!.textContent = label;
      b.querySelector(".vx-tilenote")!.textContent = values ? (info.class_specific ? `“${tgt}”` : " ") : note;
      b.dataset.state = values ? "ready" : note === "computing…" || note === "loading…" ? "pending" : "error";
      b.setAttribute("aria-pressed", String(m === cur));
      b.setAttribute("aria-label", `${label}${values ? "" : `: ${note}`} — show it in the main view`);
      ctx.paint(b.querySelector("canvas")!, tw, th, ctx.image.canvas, values, shape, isSigned);
    }
  }
  return { el, draw };
}
