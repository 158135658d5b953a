// The "Similarity" tool beside "Pick query patch": clicking a patch on the main canvas shows the cosine
// similarity of its token to every patch token after the current block (EL-VIT), drawn as the map.
// One kernel request per pick (and per block while the tool is on); the last answer is kept.
import { f32, type TeachMsg } from "./teach_common";
import type { ViewCtx } from "./view_context";

/** What the similarity map shows (in place of the method's line while it is on screen). */
export const SIM_ABOUT =
  "Token similarity (as in EL-VIT): the cosine of the picked patch's token with every patch token after this block; " +
  "high = the model represents the two patches alike at this depth.";

export type SimView = { values: Float32Array; signed: true; shape: number[]; label: string; key: string; query: number } | { note: string };

export function similarityTool(ctx: ViewCtx): { pick(cell: number): void; current(): SimView | null; refresh(): void } {
  const { model } = ctx;
  let query = -1;
  let last: { key: string; values: Float32Array } | null = null;
  let error: { key: string; text: string } | null = null;
  const on = () => ctx.brush.tool === "similarity" && ctx.isAttn();
  const key = () => `${model.get("image_index")}|${model.get("layer")}|${query}`;

  function ask(click: boolean): void {
    if (query < 0 || ctx.offline() || !on()) return;
    if (last && last.key === key()) return;
    ctx.bus.request({ kind: "similarity", image_index: model.get("image_index"), layer: model.get("layer"), query }, click);
  }
  ctx.bus.subscribe((m: TeachMsg, b: DataView[]) => {
    if (m.kind !== "similarity") return;
    const k = `${m.image_index}|${m.layer}|${m.query}`;
    if (m.error) error = { key: k, text: m.error };
    else last = { key: k, values: f32(b[0]) };
    if (on() && k === key()) ctx.ui.draw();
  });
  return {
    pick(cell) {
      query = cell;
      ask(true);
      ctx.ui.draw();
    },
    current() {
      if (!on() || query < 0) return null;
      const k = key();
      if (last && last.key === k) {
        const label = `similarity to patch ${query} after block ${model.get("layer")} (cosine)`;
        return { values: last.values, signed: true, shape: ctx.grid(), label, key: k, query };
      }
      if (error && error.key === k) return { note: error.text };
      return { note: ctx.offline() ? "similarity needs a running kernel" : "computing the similarity…" };
    },
    refresh() {
      ask(false);
    },
  };
}
