// Token similarity: click a patch (or pick a query patch in the main view) to see the cosine similarity
// of its token to every patch token after the current block (EL-VIT).
import { cellOf, drawMap, f32, h, type TeachContext, type TeachMsg } from "./teach_common";

export function similarityPanel(ctx: TeachContext): { el: HTMLElement; onMessage(m: TeachMsg, b: DataView[]): void; refresh(): void } {
  const { model } = ctx;
  const el = h("div", { class: "vx-teach-panel", "data-testid": "vx-sim-panel" });
  const map = h("canvas", { class: "vx-teach-map", "data-testid": "vx-sim-map", role: "img", tabindex: "0" });
  const cap = h("div", { class: "vx-muted", "data-testid": "vx-sim-caption" }, "Click a patch: its token's cosine similarity to every patch token after the current block.");
  const fig = h("figure", { class: "vx-teach-fig" });
  fig.append(map, cap);
  el.append(fig);
  let query = -1;
  let last: { key: string; values: Float32Array } | null = null;
  const key = () => `${model.get("image_index")}|${model.get("layer")}|${query}`;

  function ask(click: boolean): void {
    if (query < 0 || model.get("offline")) return;
    if (last && last.key === key()) return;
    ctx.request({ kind: "similarity", image_index: model.get("image_index"), layer: model.get("layer"), query }, click);
  }
  function draw(): void {
    const ok = last && last.key === key();
    drawMap(map, model, ok ? last!.values : null, "rdbu", [-1, 1], query >= 0 ? [query] : []);
    if (ok) cap.textContent = `cosine similarity to patch ${query} after block ${model.get("layer")} (−1 to 1)`;
    map.setAttribute("data-key", ok ? last!.key : "");
  }
  map.addEventListener("click", (e: MouseEvent) => {
    const c = cellOf(map, model, e);
    if (c < 0) return;
    query = c;
    draw();
    ask(true);
  }, { signal: ctx.signal });
  const onQuery = () => {
    const q = model.get("query") as number;
    if (q >= 0 && ctx.active()) {
      query = q;
      refresh();
    }
  };
  model.on("change:query", onQuery);
  ctx.signal.addEventListener("abort", () => model.off("change:query", onQuery));

  function onMessage(m: TeachMsg, b: DataView[]): void {
    if (m.kind !== "similarity" || m.error) return;
    last = { key: `${m.image_index}|${m.layer}|${m.query}`, values: f32(b[0]) };
    if (ctx.active()) draw();
  }
  function refresh(): void {
    ask(false);
    draw();
  }
  return { el, onMessage, refresh };
}
