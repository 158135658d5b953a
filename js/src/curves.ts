// The deletion / insertion chart: the target's probability as the most relevant patches are deleted
// (or inserted into a blank image), computed by the kernel on request.
import { polylinePoints, type Box } from "./charts";
import { h, svg } from "./dom";
import { fmt } from "./format";
import type { ViewCtx } from "./view_context";

export function curvesPanel(ctx: ViewCtx) {
  const { model } = ctx;
  const head = h("h4", { id: ctx.id("curves") }, "Deletion / insertion");
  const btn = h("button", { class: "vx-btn", "data-testid": "vx-curves-btn", title: "Delete (or insert) patches from the most relevant down and watch the target's probability" }, "Compute curves");
  const box = h("div", { class: "vx-curves", "data-testid": "vx-curves", role: "group", "aria-labelledby": ctx.id("curves") });
  ctx.on(btn, "click", () => model.send({ kind: "curves" }));

  function draw(): void {
    const cv = model.get("curves") ?? {};
    const mine = cv.key === `${ctx.viewKey()}@${model.get("target")}`;
    const offline = ctx.offline();
    box.textContent = "";
    btn.disabled = offline || (mine && (!!cv.pending || !!cv.deletion));
    btn.hidden = offline && !mine;
    if (!mine) {
      box.append(h("p", { class: "vx-muted" }, offline ? "Not computed for this export." : "Delete the most relevant patches first (or insert them into a blank image) and plot the target's probability."));
      return;
    }
    if (cv.pending) {
      box.append(h("p", { class: "vx-muted" }, "computing the curves…"));
      return;
    }
    if (cv.error || !cv.x || !cv.deletion || !cv.insertion) {
      box.append(h("p", { class: "vx-errtext" }, cv.error ?? "no curve"));
      return;
    }
    const b: Box = { width: 300, height: 170, left: 36, right: 10, top: 8, bottom: 32 };
    const sv = svg("svg", { viewBox: `0 0 ${b.width} ${b.height}`, width: b.width, height: b.height, class: "vx-chart", role: "img",
      "aria-label": `Deletion AUC ${fmt(cv.auc_deletion)} (lower is better), insertion AUC ${fmt(cv.auc_insertion)} (higher is better) for “${cv.target_name ?? ""}”` });
    const x0 = b.left, x1 = b.width - b.right, y0 = b.height - b.bottom, y1 = b.top;
    for (const t of [0, 0.5, 1]) {
      const gy = y0 + (y1 - y0) * t;
      const gx = x0 + (x1 - x0) * t;
      sv.append(svg("line", { x1: x0, x2: x1, y1: gy, y2: gy, class: "vx-gridline" }));
      sv.append(svg("text", { x: x0 - 4, y: gy + 3, "text-anchor": "end", class: "vx-ticklabel" }, String(t)));
      sv.append(svg("text", { x: gx, y: y0 + 12, "text-anchor": "middle", class: "vx-ticklabel" }, String(t)));
    }
    sv.append(svg("line", { x1: x0, x2: x0, y1: y0, y2: y1, class: "vx-axis" }));
    sv.append(svg("line", { x1: x0, x2: x1, y1: y0, y2: y0, class: "vx-axis" }));
    sv.append(svg("text", { x: (x0 + x1) / 2, y: b.height - 4, "text-anchor": "middle", class: "vx-axislabel" }, "fraction of patches deleted / inserted"));
    sv.append(svg("text", { x: 10, y: (y0 + y1) / 2, "text-anchor": "middle", class: "vx-axislabel", transform: `rotate(-90 10 ${(y0 + y1) / 2})` }, "p(target)"));
    sv.append(svg("polyline", { points: polylinePoints(b, cv.x, cv.deletion), class: "vx-del", "data-testid": "vx-curve-deletion" }));
    sv.append(svg("polyline", { points: polylinePoints(b, cv.x, cv.insertion), class: "vx-ins", "data-testid": "vx-curve-insertion" }));
    const legendEl = h("div", { class: "vx-curvelegend" });
    const item = (cls: string, text: string) => {
      const s = h("span", { class: "vx-legenditem" });
      const sw = svg("svg", { width: 22, height: 8, "aria-hidden": "true" });
      sw.append(svg("line", { x1: 0, x2: 22, y1: 4, y2: 4, class: cls }));
      s.append(sw, document.createTextNode(text));
      return s;
    };
    legendEl.append(
      item("vx-del", ` deletion · AUC ${fmt(cv.auc_deletion)} (lower is better)`),
      item("vx-ins", ` insertion · AUC ${fmt(cv.auc_insertion)} (higher is better)`),
    );
    const capt = h("p", { class: "vx-muted" });
    capt.textContent = `${cv.label ?? ""} · class “${cv.target_name ?? ""}” · ${cv.patches} patches, ${cv.step} per step (patch preset)`;
    box.append(sv, legendEl, capt);
  }
  return { els: [head, btn, box], draw };
}
