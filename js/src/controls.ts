// The controls: the top bar (title, image navigation, status, Compare, PNG, help), the method buttons,
// the error banner, and the view row (layer, head, opacity, colormap, grid, smooth, CLS row).
import { COLORMAPS } from "./colormap";
import { h } from "./dom";
import type { ViewCtx } from "./view_context";

// Notebook hosts take arrow keys for themselves (JupyterLab's notebook calls preventDefault while
// they bubble; Notebook 7 stops them in the capture phase), so a native range input never moves.
// Every key aimed at our elements is therefore routed by one window capture-phase listener
// (view.ts; it runs before any host listener), handled here, and kept from the notebook.
const STEP_KEYS: Record<string, number> = { ArrowLeft: -1, ArrowDown: -1, ArrowRight: 1, ArrowUp: 1, PageDown: -5, PageUp: 5 };
export function rangeKey(input: HTMLInputElement, e: KeyboardEvent): boolean {
  if (e.altKey || e.ctrlKey || e.metaKey) return false;
  const step = Number(input.step) || 1;
  const min = Number(input.min);
  const max = Number(input.max);
  let v = Number(input.value);
  if (e.key in STEP_KEYS) v += STEP_KEYS[e.key] * step;
  else if (e.key === "Home") v = min;
  else if (e.key === "End") v = max;
  else return false;
  v = Math.min(max, Math.max(min, Math.round(v / step) * step));
  if (String(v) !== input.value) {
    input.value = String(v);
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }
  return true;
}

const KEYS: [string, string][] = [
  ["[ / ]", "previous / next layer (attention)"],
  [", / .", "previous / next head, before head 0 the mean (attention)"],
  ["arrows", "move the patch cursor (canvas focused)"],
  ["Shift+arrows", "extend a rectangle of marked patches"],
  ["Space", "mark / unmark the patch under the cursor"],
  ["Enter", "run the intervention on the marked patches"],
  ["Delete / Esc", "clear the marked patches"],
  ["q", "use the cursor's patch as the attention query"],
];

export function controlsPanel(ctx: ViewCtx) {
  const { model, id } = ctx;
  // ---------- top bar ----------
  const bar = h("div", { class: "vx-bar" });
  const title = h("span", { class: "vx-title" });
  const prevImg = h("button", { class: "vx-btn", "aria-label": "Previous image", "data-testid": "vx-prev-image" }, "◀");
  const imgLabel = h("span", { class: "vx-imglabel", "aria-live": "polite" });
  const nextImg = h("button", { class: "vx-btn", "aria-label": "Next image", "data-testid": "vx-next-image" }, "▶");
  const status = h("span", { class: "vx-status", role: "status", "data-testid": "vx-status" });
  const spinner = h("span", { class: "vx-spinner", "aria-hidden": "true" });
  const statusText = h("span");
  status.append(spinner, statusText);
  const helpBtn = h("button", { class: "vx-btn", "aria-expanded": "false", "aria-controls": id("help"), "data-testid": "vx-help-btn", title: "Keyboard shortcuts" }, "?");
  const pngBtn = h("button", { class: "vx-btn", "data-testid": "vx-png", title: "Save what is on screen (image, map, colour scale) as PNG" }, "PNG");
  const compareBtn = h("button", { class: "vx-btn", "aria-pressed": "false", "data-testid": "vx-compare-toggle", title: "Show several methods side by side for this image and class" }, "Compare");
  bar.append(title, prevImg, imgLabel, nextImg, status, h("span", { class: "vx-grow" }), compareBtn, pngBtn, helpBtn);

  const methodsBox = h("div", { class: "vx-methods", role: "group", "aria-label": "Explanation method", "data-testid": "vx-methods" });

  const error = h("div", { class: "vx-error", role: "alert", "data-testid": "vx-error", hidden: "" });
  const errorText = h("span");
  const errorClose = h("button", { class: "vx-btn", "aria-label": "Dismiss" }, "×");
  error.append(errorText, errorClose);
  const help = h("div", { class: "vx-help", id: id("help"), role: "dialog", "aria-label": "Keyboard shortcuts", "data-testid": "vx-help", hidden: "" });
  const dl = h("dl");
  for (const [k, v] of KEYS) dl.append(h("dt", {}, k), h("dd", {}, v));
  help.append(h("strong", {}, "Keyboard"), dl);

  // ---------- view row ----------
  const row = h("div", { class: "vx-controls" });
  const mkRange = (key: string, label: string, min: number, max: number, step = 1) => {
    const wrap = h("div", { class: "vx-field", "data-testid": `vx-field-${key}` });
    const lab = h("label", { for: id(key) }, label);
    const input = h("input", { type: "range", id: id(key), min: String(min), max: String(max), step: String(step), "data-testid": `vx-${key}` });
    const out = h("output", { for: id(key) });
    wrap.append(lab, input, out);
    row.append(wrap);
    return { input, out, wrap };
  };
  const layerR = mkRange("layer", "Layer", 0, 0);
  const headR = mkRange("head", "Head", -1, 0);
  const opacityR = mkRange("opacity", "Opacity", 0, 1, 0.05);
  const ranges = new Set<EventTarget>([layerR.input, headR.input, opacityR.input]);
  const cmapWrap = h("div", { class: "vx-field" });
  const cmapSel = h("select", { id: id("cmap"), "data-testid": "vx-colormap" });
  for (const c of ["auto", ...COLORMAPS]) cmapSel.append(h("option", { value: c }, c));
  cmapWrap.append(h("label", { for: id("cmap") }, "Colormap"), cmapSel);
  const check = (text: string) => {
    const label = h("label", { class: "vx-check" });
    const box = h("input", { type: "checkbox" });
    label.append(box, document.createTextNode(text));
    return { label, box };
  };
  const gridC = check(" grid");
  const smoothC = check(" smooth");
  const clsBtn = h("button", { class: "vx-btn", "data-testid": "vx-cls", title: "Show the CLS (read-out) row instead of a patch's row" }, "CLS row");
  row.append(cmapWrap, gridC.label, smoothC.label, clsBtn);

  // ---------- events ----------
  const { on, setState } = ctx;
  const stepLayer = (d: number) => ctx.toAttention({ layer: Math.max(0, Math.min(model.get("num_layers") - 1, model.get("layer") + d)) });
  const stepHead = (d: number) => ctx.toAttention({ head: Math.max(-1, Math.min(model.get("num_heads") - 1, model.get("head") + d)) });
  on(layerR.input, "input", () => ctx.toAttention({ layer: Number(layerR.input.value) }));
  on(headR.input, "input", () => ctx.toAttention({ head: Number(headR.input.value) }));
  on(opacityR.input, "input", () => setState({ opacity: Number(opacityR.input.value) }));
  on(cmapSel, "change", () => setState({ colormap: cmapSel.value }));
  on(gridC.box, "change", () => setState({ show_grid: gridC.box.checked }));
  on(smoothC.box, "change", () => setState({ smooth: smoothC.box.checked }));
  on(compareBtn, "click", () => setState({ compare: !model.get("compare") }));
  on(clsBtn, "click", () => setState({ query: -1 }));
  on(prevImg, "click", () => setState({ image_index: Math.max(0, model.get("image_index") - 1) }));
  on(nextImg, "click", () => setState({ image_index: Math.min(model.get("num_images") - 1, model.get("image_index") + 1) }));
  on<MouseEvent>(methodsBox, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-method]") as HTMLElement | null;
    if (b?.dataset.method) setState({ method: b.dataset.method });
  });
  on(errorClose, "click", () => {
    error.hidden = true;
  });
  const toggleHelp = () => {
    help.hidden = !help.hidden;
    helpBtn.setAttribute("aria-expanded", String(!help.hidden));
  };
  on(helpBtn, "click", toggleHelp);
  on(pngBtn, "click", () => ctx.ui.exportPng());

  /** Keys anywhere in the view: layer, head, help. True when handled. */
  function rootKey(e: KeyboardEvent): boolean {
    if ((e.target as HTMLElement).tagName === "SELECT") return false;
    if (e.key === "[" || e.key === "]") stepLayer(e.key === "]" ? 1 : -1);
    else if (e.key === "," || e.key === ".") stepHead(e.key === "." ? 1 : -1);
    else if (e.key === "?") helpBtn.click();
    else return false;
    return true;
  }

  // ---------- model -> view ----------
  function showStatus(): void {
    const s = model.get("status") ?? {};
    spinner.hidden = !s.busy;
    statusText.textContent = s.busy ? s.label || "working…" : "";
    ctx.root.setAttribute("aria-busy", String(!!s.busy));
    if (s.error) {
      errorText.textContent = s.error;
      error.hidden = false;
    } else error.hidden = true;
  }

  function buildMethods(): void {
    methodsBox.textContent = "";
    const cur = model.get("method");
    for (const m of ctx.methods()) {
      const info = ctx.methodInfo(m);
      const b = h("button", { class: "vx-btn vx-method", "data-method": m, "aria-pressed": String(m === cur), "data-testid": `vx-method-${m}` });
      b.textContent = info.label ?? m;
      if (info.class_specific) b.title = "class-specific";
      methodsBox.append(b);
    }
  }

  function syncMethods(): void {
    const cur = model.get("method");
    for (const b of Array.from(methodsBox.children) as HTMLElement[]) b.setAttribute("aria-pressed", String(b.dataset.method === cur));
  }

  function sync(): void {
    const nl = model.get("num_layers");
    const nh = model.get("num_heads");
    const layer = model.get("layer");
    const head = model.get("head");
    layerR.input.max = String(nl - 1);
    layerR.input.value = String(layer);
    layerR.out.textContent = `${layer}`;
    layerR.input.setAttribute("aria-valuetext", `Layer ${layer} of ${nl - 1}`);
    headR.input.max = String(nh - 1);
    headR.input.value = String(head);
    headR.out.textContent = head < 0 ? "mean" : String(head);
    headR.input.setAttribute("aria-valuetext", head < 0 ? "mean of heads" : `head ${head} of ${nh - 1}`);
    const op = Number(model.get("opacity") ?? 0.6);
    opacityR.input.value = String(op);
    opacityR.out.textContent = op.toFixed(2);
    cmapSel.value = model.get("colormap") || "auto";
    gridC.box.checked = !!model.get("show_grid");
    smoothC.box.checked = !!model.get("smooth");
    const ni = model.get("num_images");
    const ii = model.get("image_index");
    imgLabel.textContent = `image ${ii + 1} of ${ni}`;
    prevImg.disabled = ii <= 0;
    nextImg.disabled = ii >= ni - 1;
    title.textContent = model.get("title") || "";
    clsBtn.disabled = model.get("query") < 0;
    // layer, head and query act on raw attention only, and need token attention (not a CNN or a
    // hierarchical transformer): shown only there
    const show = ctx.isAttn() && model.get("token_attention") !== false;
    layerR.wrap.hidden = !show;
    headR.wrap.hidden = !show;
    clsBtn.hidden = !show;
  }

  return { bar, methodsBox, error, help, row, ranges, rootKey, toggleHelp, showStatus, buildMethods, syncMethods, sync };
}
