// The prediction panel: the top classes with their probabilities (click one to pin it) and the pin bar.
import { h } from "./dom";
import type { ViewCtx } from "./view_context";

export function predictionPanel(ctx: ViewCtx) {
  const { model } = ctx;
  const head = h("h4", { id: ctx.id("pred") }, "Prediction — click a class to explain it");
  const classes = h("div", { class: "vx-classes", role: "radiogroup", "aria-labelledby": ctx.id("pred"), "data-testid": "vx-classes" });
  const pinBar = h("div", { class: "vx-pin", "data-testid": "vx-pin", hidden: "" });
  const pinText = h("span", { class: "vx-pintext" });
  const unpinBtn = h("button", { class: "vx-btn", "data-testid": "vx-unpin", title: "Explain each image for its own top-1 class again" }, "back to top-1");
  pinBar.append(pinText, unpinBtn);
  ctx.on<MouseEvent>(classes, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-class]") as HTMLElement | null;
    if (b) ctx.setState({ target: Number(b.dataset.class), pinned: true });
  });
  ctx.on(unpinBtn, "click", () => ctx.setState({ pinned: false }));

  function build(): void {
    classes.textContent = "";
    const topk = model.get("topk") ?? [];
    const tgt = model.get("target");
    const list = topk.some((c) => c.index === tgt) ? topk : [...topk, { index: tgt, name: ctx.className(tgt), prob: NaN }];
    const pinned = !!model.get("pinned");
    pinBar.hidden = !pinned;
    pinText.textContent = `Pinned: every image is explained for “${ctx.className(tgt)}”.`;
    head.textContent = pinned ? "Prediction — the pinned class is outlined" : "Prediction — explaining the top-1 class; click another to pin it";
    for (const c of list) {
      const b = h("button", { class: "vx-class", role: "radio", "aria-checked": String(c.index === tgt), "data-class": String(c.index), "data-testid": `vx-class-${c.index}` });
      if (pinned && c.index === tgt) b.classList.add("vx-pinned");
      const name = h("span", { class: "vx-cname" });
      name.textContent = c.name; // user-supplied: text only
      const barw = h("span", { class: "vx-pbar" });
      const fill = h("span", { class: "vx-pfill" });
      fill.style.width = `${Math.max(0, Math.min(1, c.prob || 0)) * 100}%`;
      barw.append(fill);
      const val = h("span", { class: "vx-pval" }, Number.isFinite(c.prob) ? c.prob.toFixed(3) : "");
      b.append(name, barw, val);
      classes.append(b);
    }
  }
  return { els: [head, pinBar, classes], build };
}
