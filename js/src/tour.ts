// Guided tour: steps (data from Python, `Explorer(tour=...)`) that drive the existing views, one short
// text each; Back / Next buttons, and the keys n / b (or PageDown / PageUp) anywhere in the widget.
import { h, type TeachContext } from "./teach_common";
import { tourStep } from "./teach_geom";
import type { TourStep } from "./traits";

export type { TourStep };

const VIEW_KEYS = ["method", "layer", "head", "query", "opacity", "show_grid"] as const;

export function tourBar(ctx: TeachContext, root: HTMLElement, showPanel: (p: string) => void): HTMLElement {
  const { model } = ctx;
  const el = h("div", { class: "vx-tour", "data-testid": "vx-tour", role: "region", "aria-label": "Guided tour" });
  const back = h("button", { class: "vx-btn", "data-testid": "vx-tour-back", "aria-label": "Previous tour step" }, "◀ Back");
  const next = h("button", { class: "vx-btn", "data-testid": "vx-tour-next", "aria-label": "Next tour step" }, "Next ▶");
  const count = h("span", { class: "vx-muted", "data-testid": "vx-tour-count" });
  const title = h("strong", { "data-testid": "vx-tour-title" });
  const text = h("span", { class: "vx-tour-text", "data-testid": "vx-tour-text", "aria-live": "polite" });
  el.append(back, count, next, title, text);

  const steps = () => model.get("tour") ?? [];
  function show(): void {
    const s = steps();
    el.hidden = s.length === 0;
    const k = model.get("tour_step");
    back.disabled = k <= -1;
    next.disabled = k >= s.length - 1;
    if (k < 0 || k >= s.length) {
      count.textContent = s.length ? `tour: ${s.length} steps` : "";
      title.textContent = "";
      text.textContent = s.length ? "Press Next (or n) to start the guided tour." : "";
      return;
    }
    count.textContent = `${k + 1} / ${s.length}`;
    title.textContent = s[k].title ?? "";
    text.textContent = s[k].text ?? "";
  }
  function go(k: number): void {
    const s = steps();
    if (k === model.get("tour_step")) return;
    model.set("tour_step", k);
    const step = s[k];
    if (step) {
      for (const key of VIEW_KEYS) if (step[key] !== undefined) model.set(key, step[key] as never);
      if (step.panel) showPanel(step.panel);
    }
    model.save_changes();
    show();
  }
  const move = (delta: number) => go(tourStep(model.get("tour_step"), delta, steps().length));
  back.addEventListener("click", () => move(-1), { signal: ctx.signal });
  next.addEventListener("click", () => move(1), { signal: ctx.signal });
  window.addEventListener("keydown", (e: KeyboardEvent) => {
    const t = e.target as HTMLElement;
    if (!(t instanceof Node) || !root.contains(t) || steps().length === 0) return;
    if (e.altKey || e.ctrlKey || e.metaKey || t.tagName === "INPUT" || t.tagName === "SELECT") return;
    const d = e.key === "n" || e.key === "PageDown" ? 1 : e.key === "b" || e.key === "PageUp" ? -1 : 0;
    if (!d) return;
    move(d);
    e.preventDefault();
    e.stopPropagation();
  }, { capture: true, signal: ctx.signal });
  const onChange = () => show();
  model.on("change:tour", onChange);
  model.on("change:tour_step", onChange);
  ctx.signal.addEventListener("abort", () => {
    model.off("change:tour", onChange);
    model.off("change:tour_step", onChange);
  });
  show();
  return el;
}
