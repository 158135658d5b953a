// The PNG export: what is on screen (the canvas with its map), a caption saying what it is, and
// the colour scale with its range. All strings are drawn as canvas text.
import { colorize } from "./colormap";

export interface ExportSpec {
  title: string; // "toy shapes · image 2 of 4"
  label: string; // the map's label as shown ("Rollout", "Grad-CAM · class “square”", …)
  legend: { cmap: string; lo: number; hi: number; signed: boolean } | null;
  fg: string;
  bg: string;
}

/** A new canvas: caption lines, then `view` at its own pixel size, then the colour scale. */
export function composeExport(view: HTMLCanvasElement, spec: ExportSpec): HTMLCanvasElement {
  const W = view.width;
  const s = Math.max(1, W / 384); // device-pixel scale of the drawn text
  const line = Math.round(16 * s);
  const pad = Math.round(6 * s);
  const top = pad + 2 * line;
  const scaleH = spec.legend ? Math.round(28 * s) : 0;
  const out = document.createElement("canvas");
  out.width = W;
  out.height = top + view.height + scaleH + pad;
  const ctx = out.getContext("2d")!;
  ctx.fillStyle = spec.bg;
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.fillStyle = spec.fg;
  ctx.textBaseline = "top";
  ctx.font = `600 ${Math.round(12 * s)}px sans-serif`;
  ctx.fillText(spec.title, pad, pad, W - 2 * pad);
  ctx.font = `${Math.round(12 * s)}px sans-serif`;
  ctx.fillText(spec.label, pad, pad + line, W - 2 * pad);
  ctx.drawImage(view, 0, top);
  if (spec.legend) {
    const { cmap, lo, hi, signed } = spec.legend;
    const y = top + view.height + Math.round(6 * s);
    const bw = Math.round(W / 2);
    const bx = Math.round((W - bw) / 2);
    const bar = ctx.createImageData(bw, 1);
    colorize(new Float32Array(bw).map((_, i) => i / Math.max(1, bw - 1)), cmap, 255, bar.data);
    for (let r = 0; r < Math.round(8 * s); r++) ctx.putImageData(bar, bx, y + r);
    ctx.font = `${Math.round(11 * s)}px sans-serif`;
    ctx.textAlign = "right";
    ctx.fillText(lo.toPrecision(3), bx - pad, y - Math.round(2 * s));
    ctx.textAlign = "left";
    ctx.fillText(hi.toPrecision(3), bx + bw + pad, y - Math.round(2 * s));
    if (signed) {
      ctx.textAlign = "center";
      ctx.fillText("0", bx + bw / 2, y + Math.round(10 * s));
    }
    ctx.textAlign = "left";
  }
  return out;
}
