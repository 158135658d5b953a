// The brush panel: tools (brush, erase, query patch, similarity), intervention modes, keep-only and
// recompute switches, Clear and Find counterfactual, the before/after probabilities of the marked
// patches, and the map recomputed on the intervened image.
import { sortedCells } from "./brush";
import { MODES } from "./contract";
import { decodeMap, type MapPayload } from "./decode";
import { h } from "./dom";
import { fmt, signedFmt as signed } from "./format";
import { rgbCanvas } from "./rgb_canvas";
import type { Tool, ViewCtx } from "./view_context";

const TOOLS: [Tool, string, string][] = [
  ["brush", "Brush", "Drag over the image to mark patches"],
  ["erase", "Erase", "Drag over marked patches to unmark them"],
  ["query", "Pick query patch", "Click a patch: the attention map shows its row instead of the CLS row"],
  ["similarity", "Similarity", "Click a patch: its token's cosine similarity to every patch token after the current layer"],
];

export function brushPanel(ctx: ViewCtx) {
  const { model } = ctx;
  const head = h("h4", {}, "Brush patches, see what changes");
  const toolBox = h("div", { class: "vx-seg", role: "radiogroup", "aria-label": "Tool" });
  const toolBtns = TOOLS.map(([k, label, title]) => {
    const b = h("button", { class: "vx-btn", role: "radio", "data-tool": k, "aria-checked": "false", "data-testid": `vx-tool-${k}`, title }, label);
    toolBox.append(b);
    return b;
  });
  const modeBox = h("div", { class: "vx-seg", role: "radiogroup", "aria-label": "Intervention", "data-testid": "vx-modes" });
  const modeBtns = MODES.map((m) => {
    const b = h("button", { class: "vx-btn", role: "radio", "data-mode": m, "aria-checked": "false" }, m);
    modeBox.append(b);
    return b;
  });
  const keepLabel = h("label", { class: "vx-check" });
  const keepBox = h("input", { type: "checkbox", "data-testid": "vx-keep" });
  keepLabel.append(keepBox, document.createTextNode(" keep only the brushed patches"));
  const actions = h("div", { class: "vx-row" });
  const clearBtn = h("button", { class: "vx-btn", "data-testid": "vx-clear" }, "Clear");
  const cfBtn = h("button", { class: "vx-btn", "data-testid": "vx-counterfactual", title: "Brush the smallest set of patches whose removal flips the prediction" }, "Find counterfactual");
  actions.append(clearBtn, cfBtn);
  const recomputeLabel = h("label", { class: "vx-check" });
  const recomputeBox = h("input", { type: "checkbox", "data-testid": "vx-recompute" });
  recomputeLabel.append(recomputeBox, document.createTextNode(" recompute the map on the intervened image"));
  const result = h("div", { class: "vx-result", "data-testid": "vx-result" });
  const imapBox = h("figure", { class: "vx-imap", "data-testid": "vx-imap-box", hidden: "" });
  const imapCanvas = h("canvas", { class: "vx-imapcanvas", "data-testid": "vx-imap", role: "img" });
  const imapCap = h("figcaption", { class: "vx-muted" });
  imapBox.append(imapCanvas, imapCap);

  const { on, setState } = ctx;
  on(keepBox, "change", () => setState({ keep: keepBox.checked }));
  on(recomputeBox, "change", () => setState({ recompute: recomputeBox.checked }));
  on<MouseEvent>(modeBox, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-mode]") as HTMLElement | null;
    if (b?.dataset.mode) setState({ mode: b.dataset.mode });
  });
  on<MouseEvent>(toolBox, "click", (e) => {
    const b = (e.target as HTMLElement).closest("[data-tool]") as HTMLElement | null;
    if (b) setTool(b.dataset.tool as Tool);
  });
  on(clearBtn, "click", () => {
    ctx.brush.pending = new Set();
    ctx.ui.commitBrush();
  });
  on(cfBtn, "click", () => model.send({ kind: "counterfactual" }));

  function setTool(tool: Tool): void {
    if (ctx.brush.tool === tool) return;
    ctx.brush.tool = tool;
    sync();
    ctx.ui.draw();
  }

  function sync(): void {
    keepBox.checked = !!model.get("keep");
    recomputeBox.checked = !!model.get("recompute");
    const mode = model.get("mode");
    for (const b of modeBtns) b.setAttribute("aria-checked", String(b.dataset.mode === mode));
    // a model without token attention (CNN, hierarchical transformer): no token drop
    const tokens = model.get("token_attention") !== false;
    for (const b of modeBtns) if (b.dataset.mode === "drop") b.hidden = !tokens;
    // query and similarity act on the token attention view only
    const isAttn = ctx.isAttn() && tokens;
    // (similarity needs a running kernel: not on a saved page)
    const simOk = isAttn && !ctx.offline();
    for (const b of toolBtns) if (b.dataset.tool === "query") b.hidden = !isAttn;
    for (const b of toolBtns) if (b.dataset.tool === "similarity") b.hidden = !simOk;
    if ((!isAttn && ctx.brush.tool === "query") || (!simOk && ctx.brush.tool === "similarity")) ctx.brush.tool = "brush";
    for (const b of toolBtns) b.setAttribute("aria-checked", String(b.dataset.tool === ctx.brush.tool));
    const off = ctx.offline();
    for (const b of [...modeBtns, clearBtn, cfBtn]) b.disabled = off;
    keepBox.disabled = off;
    recomputeBox.disabled = off;
  }

  /** What the last counterfactual search found, while its patches are the ones marked (or it found none). */
  function counterfactualNote(cur: number[]): HTMLElement | null {
    const cf = model.get("counterfactual") ?? {};
    if (cf.image_index === undefined || cf.image_index !== model.get("image_index")) return null;
    const p = h("p", { class: "vx-cf", "data-testid": "vx-cf", role: "status" });
    if (!cf.found) {
      p.classList.add("vx-errtext");
      p.textContent = `No counterfactual: removing up to ${cf.tried} patches (${cf.order_by} order, ${cf.mode}) never changes the prediction “${cf.target_name}”.`;
      return p;
    }
    const same = !!cf.patches && cf.patches.length === cur.length && cf.patches.every((q, i) => q === cur[i]);
    if (!same) return null;
    const n = cf.patches!.length;
    p.textContent = `Counterfactual: removing these ${n} patch${n === 1 ? "" : "es"} (${cf.mode}) flips the prediction from “${cf.target_name}” (${fmt(cf.target_before)} → ${fmt(cf.target_after)}) to “${cf.new_name}” (${fmt(cf.new_prob)}).`;
    return p;
  }

  let lastAnnounced = -1;
  function showIntervention(): void {
    const r = model.get("intervention") ?? {};
    result.textContent = "";
    const cur = sortedCells(ctx.brush.pending);
    const cfNote = ctx.offline() ? null : counterfactualNote(cur);
    if (cfNote) result.append(cfNote);
    if (ctx.offline()) {
      result.append(h("p", { class: "vx-muted" }, "Interventions need a running kernel (this is a static export)."));
      return;
    }
    const plural = `${cur.length} patch${cur.length === 1 ? "" : "es"}`;
    if (cur.length === 0) {
      result.append(h("p", { class: "vx-muted" }, "Drag over the image to mark patches; when you let go, they are perturbed and the prediction is re-run."));
      return;
    }
    const fresh =
      r.patches &&
      r.patches.length === cur.length &&
      r.patches.every((p, i) => p === cur[i]) &&
      r.mode === model.get("mode") &&
      !!r.keep === !!model.get("keep") &&
      r.image_index === model.get("image_index") &&
      r.target === model.get("target");
    if (!fresh) {
      result.append(h("p", { class: "vx-muted", "data-testid": "vx-pending" }, `${plural} marked — computing…`));
      return;
    }
    if (r.error) {
      result.append(h("p", { class: "vx-errtext" }, r.error));
      return;
    }
    const sum = h("p", { class: "vx-summary", "data-testid": "vx-summary" });
    const tn = h("strong");
    tn.textContent = `“${r.target_name ?? ctx.className(r.target ?? 0)}”`;
    sum.append(document.createTextNode("Target "), tn, document.createTextNode(`: ${fmt(r.target_before)} → ${fmt(r.target_after)} (Δ ${signed(r.delta)})`));
    if (r.causal_score !== undefined && r.causal_score !== null) sum.append(document.createTextNode(` · causal score ${fmt(r.causal_score)}`));
    const sub = h("p", { class: "vx-muted" }, `${plural} · ${r.keep ? "keep only" : "remove"} · ${r.mode}${r.ms !== undefined ? ` · ${r.ms.toFixed(0)} ms` : ""}`);
    const table = h("table", { class: "vx-table", "data-testid": "vx-probs" });
    const thead = h("tr");
    thead.append(h("th", {}, "class"), h("th", {}, "before"), h("th", {}, "after"));
    table.append(thead);
    const before = new Map((r.before ?? []).map((c) => [c.index, c]));
    const after = new Map((r.after ?? []).map((c) => [c.index, c]));
    const ids = Array.from(new Set([...after.keys(), ...before.keys()]));
    ids.sort((a, b) => (after.get(b)?.prob ?? -1) - (after.get(a)?.prob ?? -1));
    for (const i of ids) {
      const tr = h("tr");
      if (i === r.target) tr.className = "vx-target";
      const name = h("td");
      name.textContent = after.get(i)?.name ?? before.get(i)?.name ?? ctx.className(i);
      const cell = (p?: number) => {
        const td = h("td");
        const bw = h("span", { class: "vx-pbar" });
        const f = h("span", { class: "vx-pfill" });
        f.style.width = `${Math.max(0, Math.min(1, p ?? 0)) * 100}%`;
        bw.append(f);
        td.append(bw, h("span", { class: "vx-pval" }, p === undefined ? "–" : p.toFixed(3)));
        return td;
      };
      tr.append(name, cell(before.get(i)?.prob), cell(after.get(i)?.prob));
      table.append(tr);
    }
    result.append(sum, sub, table);
    if (r.id !== undefined && r.id !== lastAnnounced) {
      lastAnnounced = r.id;
      const top = r.after?.[0];
      ctx.live.textContent = `After perturbing ${cur.length} patches: ${r.target_name ?? ""} ${fmt(r.target_before, 2)} → ${fmt(r.target_after, 2)}${top ? `; top class ${top.name} ${fmt(top.prob, 2)}` : ""}.`;
      ctx.debug.resultAt = performance.now();
      ctx.debug.results++;
      ctx.debug.lastResultId = r.id;
    }
  }

  // ---------- the map recomputed on the intervened image ----------
  let imapBase: { src: unknown; c: HTMLCanvasElement | null } = { src: null, c: null };
  function drawImap(): void {
    const r = model.get("intervened_map") ?? {};
    const cur = sortedCells(ctx.brush.pending);
    const fresh =
      !!model.get("recompute") &&
      !!r.patches &&
      r.patches.length === cur.length &&
      cur.length > 0 &&
      r.patches.every((p, i) => p === cur[i]) &&
      r.mode === model.get("mode") &&
      !!r.keep === !!model.get("keep") &&
      r.image_index === model.get("image_index") &&
      r.target === model.get("target") &&
      r.key === ctx.viewKey();
    imapBox.hidden = !fresh;
    if (!fresh) return;
    if (r.error || !r.data || !r.shape) {
      imapCap.textContent = r.error ?? "no map";
      imapCanvas.hidden = true;
      return;
    }
    imapCanvas.hidden = false;
    if (imapBase.src !== r.image) imapBase = { src: r.image, c: rgbCanvas(r.image) };
    const { w, h: hh } = ctx.size();
    const cw = 192;
    ctx.paint(imapCanvas, cw, Math.round((cw * hh) / w), imapBase.c, decodeMap(r as MapPayload), r.shape, !!r.signed);
    const text = `${r.label ?? ""} on the intervened image (${r.keep ? "keep only" : "remove"}, ${r.mode})`;
    imapCap.textContent = text;
    imapCanvas.setAttribute("aria-label", text);
    imapCanvas.setAttribute("data-map", r.label ?? "");
  }

  return { els: [head, toolBox, modeBox, keepLabel, recomputeLabel, actions, result, imapBox], setTool, sync, showIntervention, drawImap };
}
