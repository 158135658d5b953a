// Activation patching: pick a source image; clicking patches copies their residual stream at the input of
// the current block from the source into the shown image's pass, and shows the new probabilities.
import { cellOf, drawMap, h, probsTable, type TeachContext, type TeachMsg } from "./teach_common";

export function patchingPanel(ctx: TeachContext): { el: HTMLElement; onMessage(m: TeachMsg, b: DataView[]): void; refresh(): void } {
  const { model } = ctx;
  const el = h("div", { class: "vx-teach-panel", "data-testid": "vx-patch-panel" });
  const left = h("figure", { class: "vx-teach-fig" });
  const map = h("canvas", { class: "vx-teach-map", "data-testid": "vx-patch-map", role: "img" });
  const cap = h("div", { class: "vx-muted" });
  left.append(map, cap);
  const right = h("div", { class: "vx-teach-col" });
  const srcLabel = h("label", {}, "source image ");
  const srcSel = h("select", { "data-testid": "vx-patch-source" });
  srcLabel.append(srcSel);
  const reset = h("button", { class: "vx-btn", "data-testid": "vx-patch-reset" }, "Reset");
  const result = h("div", { class: "vx-teach-result", "data-testid": "vx-patch-result" });
  right.append(srcLabel, reset, result);
  el.append(left, right);

  const picked = new Set<number>();
  let source = -1;

  function options(): void {
    const n = model.get("num_images");
    const cur = model.get("image_index");
    srcSel.replaceChildren();
    for (let i = 0; i < n; i++) {
      if (i === cur) continue;
      srcSel.append(h("option", { value: String(i) }, `image ${i + 1}`));
    }
    if (source === cur || source < 0 || source >= n) source = n > 1 ? (cur === 0 ? 1 : 0) : -1;
    srcSel.value = String(source);
    srcSel.disabled = source < 0;
  }
  function send(click: boolean): void {
    if (source < 0 || picked.size === 0 || model.get("offline")) {
      result.replaceChildren();
      return;
    }
    ctx.request({
      kind: "patch", image_index: model.get("image_index"), source_index: source, layer: model.get("layer"),
      positions: Array.from(picked).sort((a, b) => a - b), target: model.get("target"),
    }, click);
  }
  function draw(): void {
    drawMap(map, model, null, "viridis", null, picked);
    cap.textContent = source < 0
      ? "patching needs a second image"
      : `click patches: copy their tokens at the input of block ${model.get("layer")} from image ${source + 1}`;
  }
  map.addEventListener("click", (e: MouseEvent) => {
    const c = cellOf(map, model, e);
    if (c < 0 || source < 0) return;
    if (picked.has(c)) picked.delete(c);
    else picked.add(c);
    draw();
    send(true);
  }, { signal: ctx.signal });
  srcSel.addEventListener("change", () => {
    source = Number(srcSel.value);
    draw();
    send(true);
  }, { signal: ctx.signal });
  reset.addEventListener("click", () => {
    picked.clear();
    result.replaceChildren();
    draw();
  }, { signal: ctx.signal });
  const onImage = () => {
    picked.clear();
    result.replaceChildren();
    options();
    if (ctx.active()) draw();
  };
  const onLayer = () => {
    if (ctx.active()) {
      draw();
      send(false);
    }
  };
  model.on("change:image_index", onImage);
  model.on("change:layer", onLayer);
  ctx.signal.addEventListener("abort", () => {
    model.off("change:image_index", onImage);
    model.off("change:layer", onLayer);
  });

  function onMessage(m: TeachMsg): void {
    if (m.kind !== "patch") return;
    const now = Array.from(picked).sort((a, b) => a - b).join(",");
    if (!m.error && (m.image_index !== model.get("image_index") || (m.positions ?? []).join(",") !== now ||
        m.layer !== model.get("layer") || m.source_index !== source)) return; // superseded
    probsTable(result, m, `patches ${now} from image ${source + 1} at block ${model.get("layer")}`);
  }
  function refresh(): void {
    options();
    draw();
  }
  return { el, onMessage, refresh };
}
