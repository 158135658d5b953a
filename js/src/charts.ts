// Pure helpers for the Explorer's small charts and ViT-CX mask strip (unit-tested in js/test/charts.test.ts).
import { bytesOf, type Bin } from "./decode";

export interface Box {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

/** Plot coordinates of (x, y) in [0, 1]^2 inside `box` (y up; values outside [0, 1] are clamped). */
export function toPlot(box: Box, x: number, y: number): [number, number] {
  const cx = Math.min(1, Math.max(0, x));
  const cy = Math.min(1, Math.max(0, Number.isFinite(y) ? y : 0));
  const w = box.width - box.left - box.right;
  const h = box.height - box.top - box.bottom;
  return [box.left + cx * w, box.top + (1 - cy) * h];
}

/** An SVG `points` attribute for a polyline through (xs[i], ys[i]), rounded to 0.1 px. */
export function polylinePoints(box: Box, xs: ArrayLike<number>, ys: ArrayLike<number>): string {
  if (xs.length !== ys.length) throw new Error(`curve has ${xs.length} x values but ${ys.length} y values`);
  const out: string[] = [];
  for (let i = 0; i < xs.length; i++) {
    const [px, py] = toPlot(box, xs[i], ys[i]);
    out.push(`${Math.round(px * 10) / 10},${Math.round(py * 10) / 10}`);
  }
  return out.join(" ");
}

/** RISE's AUC rule on a curve: (sum - y0/2 - yn/2) / (n - 1) (what Python reports, for a check). */
export function unitTrapezoid(ys: ArrayLike<number>): number {
  const n = ys.length;
  if (n < 2) return NaN;
  let s = 0;
  for (let i = 0; i < n; i++) s += ys[i];
  return (s - ys[0] / 2 - ys[n - 1] / 2) / (n - 1);
}

/** Mask indices ordered by causal score, highest first (ties: lower index first). */
export function maskOrder(scores: ArrayLike<number>): number[] {
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  const v = (i: number) => (Number.isFinite(scores[i]) ? scores[i] : -Infinity);
  return idx.sort((a, b) => v(b) - v(a) || a - b);
}

/** Mask `k` of a (K, h, w) uint8 stack, as a view (no copy). */
export function maskAt(data: Bin, K: number, h: number, w: number, k: number): Uint8Array {
  const u8 = bytesOf(data);
  if (u8.length !== K * h * w) throw new Error(`mask stack has ${u8.length} bytes but ${K}x${h}x${w} needs ${K * h * w}`);
  if (!(k >= 0 && k < K)) throw new Error(`mask ${k} is out of range 0..${K - 1}`);
  return u8.subarray(k * h * w, (k + 1) * h * w);
}

/**
 * Darken an RGBA image outside a mask: out = rgb * (floor + (1 - floor) * m / 255), the mask
 * resampled (nearest) from (mh, mw) to the image's (h, w). Writes into `out` (same size as rgba).
 */
export function applyMask(
  rgba: Uint8ClampedArray,
  h: number,
  w: number,
  mask: Uint8Array,
  mh: number,
  mw: number,
  floor = 0.2,
  out: Uint8ClampedArray = new Uint8ClampedArray(rgba.length),
): Uint8ClampedArray {
  for (let y = 0; y < h; y++) {
    const my = Math.min(mh - 1, Math.floor(((y + 0.5) * mh) / h));
    for (let x = 0; x < w; x++) {
      const mx = Math.min(mw - 1, Math.floor(((x + 0.5) * mw) / w));
      const f = floor + (1 - floor) * (mask[my * mw + mx] / 255);
      const i = (y * w + x) * 4;
      out[i] = rgba[i] * f;
      out[i + 1] = rgba[i + 1] * f;
      out[i + 2] = rgba[i + 2] * f;
      out[i + 3] = rgba[i + 3];
    }
  }
  return out;
}

/** WCAG 2 contrast ratio of two sRGB colours (0..255 each); >= 4.5 is readable body text. */
export function contrastRatio(a: [number, number, number], b: [number, number, number]): number {
  const lum = (c: [number, number, number]) => {
    const l = c.map((v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
  };
  const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}
