// The Explorer's teaching section: a guided tour bar and four panels (logit lens, similarity, head
// attribution, patching), mounted by one call from view.ts. Kernel answers arrive as custom messages
// of the request's kind (vit_explore/widget/_teaching.py).
import "./teaching.css";
import { headsPanel } from "./headattr";
import { lensPanel } from "./lens";
import { patchingPanel } from "./patching";
import { similarityPanel } from "./similarity";
import { h, type TeachContext, type TeachDebug, type TeachMsg } from "./teach_common";
import { tourBar } from "./tour";
import type { Model } from "./view";

const KINDS = new Set(["lens_request", "lens_class", "similarity", "head_attr", "ablate", "patch"]);
const TABS: [string, string][] = [
  ["lens", "Logit lens"],
  ["similarity", "Similarity"],
  ["heads", "Head attribution"],
  ["patching", "Patching"],
];

export function renderTeaching(model: Model, root: HTMLElement, signal: AbortSignal): TeachDebug {
  const debug: TeachDebug = { clickAt: 0, resultAt: 0, results: 0, lensMessages: 0 };
  let current = "lens";
  let nextId = 1;
  let clickId = -1;
  const ctxFor = (name: string): TeachContext => ({
    model,
    signal,
    debug,
    request(content, click = false) {
      const id = nextId++;
      if (click) {
        clickId = id;
        debug.clickAt = performance.now();
      }
      model.send({ ...content, id });
      return id;
    },
    active: () => current === name,
  });
  const panels: Record<string, ReturnType<typeof lensPanel>> = {
    lens: lensPanel(ctxFor("lens")),
    similarity: similarityPanel(ctxFor("similarity")),
    heads: headsPanel(ctxFor("heads")),
    patching: patchingPanel(ctxFor("patching")),
  };

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
    if (!(name in panels)) return;
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

  const onMsg = (msg: TeachMsg, buffers: DataView[]) => {
    if (!msg || !KINDS.has(msg.kind)) return;
    for (const p of Object.values(panels)) p.onMessage(msg, buffers ?? []);
    if (msg.id === clickId) {
      debug.resultAt = performance.now();
      debug.results++;
    }
  };
  model.on("msg:custom", onMsg);
  const redraw = () => panels[current].refresh();
  const evs = ["change:layer", "change:target", "change:image_index", "change:image"];
  for (const ev of evs) model.on(ev, redraw);
  signal.addEventListener("abort", () => {
    model.off("msg:custom", onMsg);
    for (const ev of evs) model.off(ev, redraw);
  });
  show(current);
  return debug;
}
