// ViT-CX masks: the strip of mask thumbnails (best causal score first) and the image seen through one
// selected mask, drawn on the main canvas instead of the map.
import { applyMask, maskAt, maskOrder } from "./charts";
import { ATTN } from "./contract";
import { h } from "./dom";
import { fmt } from "./format";
import type { ViewCtx } from "./view_context";

export interface SelectedMask {
  k: number;
  score: number;
  mask: Uint8Array;
  mh: number;
  mw: number;
  key: string;
}

/** The ViT-CX mask selected for overlay, when it belongs to the map on screen. */
export function selectedMask(ctx: ViewCtx): SelectedMask | null {
  const { model } = ctx;
  const mk = model.get("cx_masks") ?? {};
  const k = model.get("cx_mask");
  const method = model.get("method");
  if (k < 0 || method === ATTN || !mk.key || mk.key !== ctx.mapKey(method) || !mk.data || !mk.K) return null;
  if (k >= mk.K) return null;
  return { k, score: mk.scores?.[k] ?? NaN, mask: maskAt(mk.data, mk.K, mk.height!, mk.width!, k), mh: mk.height!, mw: mk.width!, key: mk.key };
}

const cache = new WeakMap<ViewCtx, { id: string; c: HTMLCanvasElement }>();
/** The image with everything outside the mask darkened (what the model sees of it), at image resolution
 *  (cached) or at w x hh. */
export function maskedImage(ctx: ViewCtx, sm: Omit<SelectedMask, "score">, base: HTMLCanvasElement, w?: number, hh?: number): HTMLCanvasElement {
  const W = w ?? base.width;
  const H = hh ?? base.height;
  const id = `${sm.key}|${sm.k}|${ctx.image.version}|${W}x${H}`;
  const hit = cache.get(ctx);
  if (w === undefined && hit && hit.id === id) return hit.c;
  const c = document.createElement("canvas");
  c.width = W;
  c.height = H;
  const g = c.getContext("2d")!;
  g.drawImage(base, 0, 0, W, H);
  const src = g.getImageData(0, 0, W, H);
  const out = g.createImageData(W, H);
  applyMask(src.data, H, W, sm.mask, sm.mh, sm.mw, 0.2, out.data);
  g.putImageData(out, 0, 0);
  if (w === undefined) cache.set(ctx, { id, c });
  return c;
}

export function masksPanel(ctx: ViewCtx): { el: HTMLElement; draw(): void } {
  const { model } = ctx;
  const el = h("div", { class: "vx-masks", "data-testid": "vx-masks", hidden: "" });
  const head = h("div", { class: "vx-headstitle", id: ctx.id("masks") });
  const list = h("div", { class: "vx-maskstrip", role: "group", "aria-labelledby": ctx.id("masks") });
  el.append(head, list);
  ctx.on<MouseEvent>(list, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-mask]") as HTMLElement | null;
    if (!b) return;
    const k = Number(b.dataset.mask);
    ctx.setState({ cx_mask: model.get("cx_mask") === k ? -1 : k });
  });

  function draw(): void {
    const mk = model.get("cx_masks") ?? {};
    const method = model.get("method");
    const show = method !== ATTN && !!mk.key && mk.key === ctx.mapKey(method) && !!mk.K && !!mk.data;
    el.hidden = !show;
    if (!show) return;
    const K = mk.K!, mh = mk.height!, mw = mk.width!;
    const scores = mk.scores ?? [];
    const id = `${mk.key}|${ctx.image.version}`;
    if (list.dataset.key !== id) {
      list.dataset.key = id;
      list.textContent = "";
      for (const k of maskOrder(scores)) {
        const b = h("button", { class: "vx-thumb vx-maskthumb", "data-mask": String(k), "data-testid": `vx-mask-${k}`, "aria-pressed": "false" });
        b.setAttribute("aria-label", `Mask ${k}, causal score ${fmt(scores[k])}`);
        const c = h("canvas", { width: String(mw), height: String(mh), "aria-hidden": "true" });
        if (ctx.image.canvas) {
          const mc = maskedImage(ctx, { k, mask: maskAt(mk.data!, K, mh, mw, k), mh, mw, key: mk.key! }, ctx.image.canvas, mw, mh);
          c.getContext("2d")!.drawImage(mc, 0, 0);
        }
        b.append(c, h("span", {}, fmt(scores[k])));
        list.append(b);
      }
    }
    head.textContent = `${K} ViT-CX masks by causal score — click one to overlay it`;
    const sel = model.get("cx_mask");
    for (const b of Array.from(list.children) as HTMLElement[]) b.setAttribute("aria-pressed", String(Number(b.dataset.mask) === sel));
  }
  return { el, draw };
}
