// The Explorer's teaching section: a guided tour bar and two tabbed panels (logit lens, patching),
// mounted by one call from view.ts. Similarity and head attribution live in the main view (the
// "Similarity" tool, the head grid's attribution toggle); a tour step naming them is passed to
// `showElsewhere`. Kernel answers arrive through the view's TeachBus (vit_explore/widget/_teaching.py).
import "./teaching.css";
import { lensPanel } from "./lens";
import { patchingPanel } from "./patching";
import { h, type TeachBus, type TeachContext, type TeachDebug } from "./teach_common";
import { tourBar } from "./tour";
import type { Model } from "./traits";

const TABS: [string, string][] = [
  ["lens", "Logit lens"],
  ["patching", "Patching"],
];

export function renderTeaching(model: Model, root: HTMLElement, bus: TeachBus, debug: TeachDebug, signal: AbortSignal,
  showElsewhere: (panel: string) => void): void {
  let current = "lens";
  const ctxFor = (name: string): TeachContext => ({ model, signal, debug, request: bus.request, active: () => current === name });
  const panels: Record<string, ReturnType<typeof lensPanel>> = {
    lens: lensPanel(ctxFor("lens")),
    patching: patchingPanel(ctxFor("patching")),
  };
  for (const p of Object.values(panels)) bus.subscribe((m, b) => p.onMessage(m, b));

  const section = h("section", { class: "vx-teach", "data-testid": "vx-teach", "aria-label": "How the model sees" });
  const tabs = h("div", { class: "vx-seg", role: "tablist", "aria-label": "Teaching views" });
  const body = h("div", { class: "vx-teach-body" });
  const tabBtns = TABS.map(([k, label]) => {
    const b = h("button", { class: "vx-btn", role: "tab", "data-testid": `vx-tab-${k}`, "aria-selected": "false" }, label);
    b.addEventListener("click", () => show(k), { signal });
    tabs.append(b);
    return b;
  });
  function show(name: string): void {
    if (!(name in panels)) {
      showElsewhere(name);
      return;
    }
    current = name;
    TABS.forEach(([k], i) => tabBtns[i].setAttribute("aria-selected", String(k === name)));
    body.replaceChildren(panels[name].el);
    panels[name].refresh();
  }
  section.append(tourBar(ctxFor("tour"), root, show), tabs, body);
  // a saved page (Explorer.to_html) has no kernel to answer: only the tour stays
  tabs.hidden = body.hidden = !!model.get("offline");
  root.append(section);
  signal.addEventListener("abort", () => section.remove());

  const redraw = () => panels[current].refresh();
  const evs = ["change:layer", "change:target", "change:image_index", "change:image"] as const;
  for (const ev of evs) model.on(ev, redraw);
  signal.addEventListener("abort", () => {
    for (const ev of evs) model.off(ev, redraw);
  });
  show(current);
}
