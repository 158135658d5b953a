// One view of the Explorer: builds the panels over the typed model, lays them out, routes keys, and
// redraws each panel when the traits it shows change. All user strings go in as textContent.
import { sortedCells } from "./brush";
import { brushPanel } from "./brush_panel";
import { canvasPanel } from "./canvas_panel";
import { comparePanel } from "./compare";
import { controlsPanel, rangeKey } from "./controls";
import { curvesPanel } from "./curves";
import { h } from "./dom";
import { headsPanel } from "./heads";
import { masksPanel } from "./masks";
import { predictionPanel } from "./prediction";
import { similarityTool } from "./similarity";
import type { Store } from "./store";
import { teachBus } from "./teach_common";
import { renderTeaching } from "./teaching";
import type { Model } from "./traits";
import { CANVAS_MAX, CANVAS_MIN, makeContext, type DebugInfo, type TraitEvent } from "./view_context";

export type { DebugInfo };
export type { Model };

export function renderView(model: Model, el: HTMLElement, store: Store, signal: AbortSignal): DebugInfo {
  const debug: DebugInfo = { draws: 0, lastDrawMs: 0, strokeEndAt: 0, resultAt: 0, results: 0, lastResultId: -1,
    teaching: { clickAt: 0, resultAt: 0, results: 0, lensMessages: 0 } };
  const root = h("div", { class: "vx-root", "data-testid": "vx-root", "data-lm-suppress-shortcuts": "true" });
  const live = h("div", { class: "vx-sr", "aria-live": "polite", "data-testid": "vx-live" });
  const bus = teachBus(model, signal, debug.teaching);
  const ctx = makeContext(model, store, root, live, bus, debug, signal);

  // ---------- panels and layout ----------
  const sim = similarityTool(ctx);
  const controls = controlsPanel(ctx);
  const view = canvasPanel(ctx, sim);
  const masks = masksPanel(ctx);
  const heads = headsPanel(ctx);
  const prediction = predictionPanel(ctx);
  const brush = brushPanel(ctx);
  const curves = curvesPanel(ctx);
  const compare = comparePanel(ctx, controls.bar.querySelector("[data-testid=vx-compare-toggle]")!);

  const stage = h("div", { class: "vx-stage" });
  stage.append(view.wrap, view.legend, view.readout, view.about, masks.el, controls.row, ...heads.els);
  const side = h("div", { class: "vx-side" });
  side.append(...prediction.els, ...brush.els, ...curves.els);
  const main = h("div", { class: "vx-main" });
  main.append(stage, side);
  root.append(controls.bar, controls.help, controls.methodsBox, controls.error, compare.el, main, live);
  el.append(root);
  signal.addEventListener("abort", () => root.remove());

  // ---------- cross-panel calls ----------
  const syncControls = () => {
    controls.sync();
    brush.sync();
    heads.sync();
  };
  Object.assign(ctx.ui, {
    draw: view.draw,
    drawThumbs: heads.draw,
    drawImap: brush.drawImap,
    showIntervention: brush.showIntervention,
    syncControls,
    exportPng: view.exportPng,
    toggleHelp: controls.toggleHelp,
    commitBrush() {
      debug.strokeEndAt = performance.now();
      ctx.setState({ brushed: sortedCells(ctx.brush.pending) });
      view.draw();
      brush.showIntervention();
    },
  });
  const draw = view.draw;
  const drawExtras = () => {
    compare.draw();
    curves.draw();
    masks.draw();
    brush.drawImap();
  };

  // the canvas's CSS width: as wide as the cell allows, between CANVAS_MIN and CANVAS_MAX
  const fit = () => {
    const avail = root.clientWidth - 18; // padding and border
    const w = Math.round(Math.max(CANVAS_MIN, Math.min(CANVAS_MAX, avail > 0 ? avail : CANVAS_MAX)));
    root.classList.toggle("vx-narrow", avail < CANVAS_MAX + 12 + 260);
    stage.style.width = `${w}px`;
    if (w === ctx.layout.canvasCss) return;
    ctx.layout.canvasCss = w;
    draw();
  };
  if (typeof ResizeObserver !== "undefined") {
    const ro = new ResizeObserver(() => fit());
    ro.observe(root);
    signal.addEventListener("abort", () => ro.disconnect());
  }

  // ---------- keys: one capture-phase listener for everything aimed at this view (see controls.ts) ----------
  window.addEventListener(
    "keydown",
    (e: KeyboardEvent) => {
      const target = e.target as HTMLElement;
      if (!(target instanceof Node) || !root.contains(target)) return;
      let handled = false;
      if (controls.ranges.has(target)) handled = rangeKey(target as HTMLInputElement, e);
      else if (target === view.canvas) handled = view.canvasKey(e);
      if (!handled) handled = controls.rootKey(e);
      if (handled) {
        e.preventDefault();
        e.stopPropagation();
      }
    },
    { capture: true, signal },
  );

  // ---------- model -> view ----------
  const when = (events: TraitEvent[], cb: () => void) => {
    for (const ev of events) ctx.listen(ev, cb);
  };
  when(["change:layer", "change:head", "change:query", "change:colormap", "change:show_grid", "change:smooth"], () => {
    syncControls();
    sim.refresh();
    draw();
    heads.draw();
    drawExtras();
  });
  when(["change:opacity"], () => {
    syncControls();
    draw();
  });
  when(["change:keep", "change:mode"], () => {
    syncControls();
    brush.showIntervention();
    brush.drawImap();
  });
  when(["change:method"], () => {
    controls.syncMethods();
    syncControls();
    draw();
    heads.draw();
    drawExtras();
  });
  when(["change:compare", "change:compare_methods", "change:compare_payload"], compare.draw);
  when(["change:curves"], curves.draw);
  when(["change:cx_masks", "change:cx_mask"], () => {
    masks.draw();
    draw();
  });
  when(["change:recompute"], () => {
    syncControls();
    brush.drawImap();
  });
  when(["change:intervened_map"], brush.drawImap);
  when(["change:methods"], () => {
    controls.buildMethods();
    draw();
  });
  when(["change:map_payload"], () => {
    draw();
    compare.draw();
  });
  when(["change:params_version"], () => {
    draw();
    drawExtras();
  });
  when(["change:image"], () => {
    ctx.buildImage();
    draw();
    drawExtras();
  });
  when(["change:image_index"], () => {
    syncControls();
    sim.refresh();
    draw();
    heads.draw();
    brush.showIntervention();
    drawExtras();
  });
  when(["change:topk", "change:pinned"], prediction.build);
  when(["change:counterfactual", "change:intervention"], brush.showIntervention);
  when(["change:target"], () => {
    prediction.build();
    draw();
    brush.showIntervention();
    drawExtras();
  });
  when(["change:brushed"], () => {
    ctx.brush.pending = new Set(model.get("brushed") ?? []);
    draw();
    brush.showIntervention();
    brush.drawImap();
  });
  when(["change:status"], controls.showStatus);
  when(["change:title", "change:num_images"], syncControls);
  const unsub = store.onChange(() => {
    draw();
    heads.draw();
    compare.draw();
  });
  signal.addEventListener("abort", unsub);

  // theme: canvases don't see CSS, so re-read the variables when the host's theme changes
  const retheme = () => {
    ctx.readTheme();
    draw();
  };
  const mo = new MutationObserver(retheme);
  mo.observe(document.body, { attributes: true, attributeFilter: ["class", "data-jp-theme-light", "data-jp-theme-name", "theme"] });
  signal.addEventListener("abort", () => mo.disconnect());
  const mq = window.matchMedia?.("(prefers-color-scheme: dark)");
  if (mq) ctx.on(mq, "change", retheme);

  ctx.readTheme();
  stage.style.width = `${ctx.layout.canvasCss}px`;
  ctx.buildImage();
  controls.buildMethods();
  prediction.build();
  syncControls();
  controls.showStatus();
  draw();
  heads.draw();
  brush.showIntervention();
  drawExtras();
  // tour, logit lens and patching; a tour step naming the similarity or heads view drives the main view
  renderTeaching(model, root, bus, debug.teaching, signal, (panel) => {
    if (panel === "similarity") brush.setTool("similarity");
    else if (panel === "heads") heads.setMode("direct");
  });
  return debug;
}
