// Colormaps and map normalisation (pure; unit-tested in test/colormap.test.ts).

/** Control points (sRGB hex), evenly spaced on [0, 1]; sampled from matplotlib's tables. */
const STOPS: Record<string, string[]> = {
  viridis: ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"],
  magma: ["#000004", "#1c1044", "#4f127b", "#812581", "#b5367a", "#e55064", "#fb8761", "#fec287", "#fcfdbf"],
  inferno: ["#000004", "#1f0c48", "#550f6d", "#88226a", "#ba3655", "#e35933", "#f98e09", "#f9cb35", "#fcffa4"],
  cividis: ["#00224e", "#123570", "#3b496c", "#575d6d", "#707173", "#8a8779", "#a69d75", "#c4b56c", "#fee838"],
  gray: ["#000000", "#ffffff"],
  // Diverging (negative -> blue, 0 -> white, positive -> red): matplotlib RdBu_r.
  rdbu: ["#053061", "#2166ac", "#4393c3", "#92c5de", "#f7f7f7", "#f4a582", "#d6604d", "#b2182b", "#67001f"],
  // Diverging, colour-blind-safe: purple -> white -> orange (PuOr_r).
  puor: ["#2d004b", "#542788", "#8073ac", "#b2abd2", "#f7f7f7", "#fdb863", "#e08214", "#b35806", "#7f3b08"],
};

export const COLORMAPS = Object.keys(STOPS);
export const DIVERGING = new Set(["rdbu", "puor"]);
export const DEFAULT_SEQUENTIAL = "viridis";
export const DEFAULT_DIVERGING = "rdbu";

function hex(h: string): [number, number, number] {
  const v = parseInt(h.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

const lutCache = new Map<string, Uint8ClampedArray>();

/** A 256-entry RGB lookup table (length 768) built by linear interpolation between the stops. */
export function lut(name: string): Uint8ClampedArray {
  const stops = STOPS[name];
  if (!stops) throw new Error(`unknown colormap ${JSON.stringify(name)}; choose one of ${COLORMAPS.join(", ")}`);
  const hit = lutCache.get(name);
  if (hit) return hit;
  const rgb = stops.map(hex);
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (rgb.length - 1);
    const k = Math.min(Math.floor(t), rgb.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) out[i * 3 + c] = Math.round(rgb[k][c] * (1 - f) + rgb[k + 1][c] * f);
  }
  lutCache.set(name, out);
  return out;
}

/** Colour of t in [0, 1] (clamped; NaN maps to 0). */
export function colorAt(name: string, t: number): [number, number, number] {
  const table = lut(name);
  const i = Number.isFinite(t) ? Math.round(Math.min(1, Math.max(0, t)) * 255) : 0;
  return [table[i * 3], table[i * 3 + 1], table[i * 3 + 2]];
}

export interface Normalized {
  t: Float32Array; // values in [0, 1]
  lo: number; // value mapped to 0
  hi: number; // value mapped to 1
}

/**
 * Map raw values to [0, 1] for colouring.
 * Unsigned maps: min-max (a constant map becomes all 0).
 * Signed maps: symmetric around 0, t = 0.5 + v / (2 max|v|), so 0 is the diverging map's centre.
 */
export function normalize(values: ArrayLike<number>, signed: boolean): Normalized {
  const n = values.length;
  const t = new Float32Array(n);
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === Infinity) return { t, lo: 0, hi: 0 };
  if (signed) {
    const m = Math.max(Math.abs(lo), Math.abs(hi));
    for (let i = 0; i < n; i++) t[i] = m > 0 && Number.isFinite(values[i]) ? 0.5 + values[i] / (2 * m) : 0.5;
    return { t, lo: -m, hi: m };
  }
  const span = hi - lo;
  for (let i = 0; i < n; i++) t[i] = span > 0 && Number.isFinite(values[i]) ? (values[i] - lo) / span : 0;
  return { t, lo, hi };
}

/** Whether a map has negative values (and so wants a diverging colormap). */
export function isSigned(values: ArrayLike<number>): boolean {
  for (let i = 0; i < values.length; i++) if (values[i] < 0) return true;
  return false;
}

/** Fill an RGBA buffer (length 4n) with the colours of t at the given alpha (0..255). */
export function colorize(t: ArrayLike<number>, name: string, alpha: number, out?: Uint8ClampedArray): Uint8ClampedArray {
  const table = lut(name);
  const px = out ?? new Uint8ClampedArray(t.length * 4);
  const a = Math.round(Math.min(255, Math.max(0, alpha)));
  for (let i = 0; i < t.length; i++) {
    const v = t[i];
    const j = (Number.isFinite(v) ? Math.round(Math.min(1, Math.max(0, v)) * 255) : 0) * 3;
    px[i * 4] = table[j];
    px[i * 4 + 1] = table[j + 1];
    px[i * 4 + 2] = table[j + 2];
    px[i * 4 + 3] = a;
  }
  return px;
}

/**
 * Signed maps: scale each pixel's alpha by its distance from zero (t = 0.5), full at half the
 * symmetric range, so that a near-zero value shows the image rather than a pale veil and the
 * map reads as "red = for, blue = against" over the picture. Unsigned maps keep their alpha.
 */
export function signedAlpha(t: ArrayLike<number>, px: Uint8ClampedArray): Uint8ClampedArray {
  for (let i = 0; i < t.length; i++) {
    const v = t[i];
    const w = Number.isFinite(v) ? Math.min(1, 2 * Math.abs(2 * v - 1)) : 0;
    px[i * 4 + 3] = Math.round(px[i * 4 + 3] * w);
  }
  return px;
}

/** CIE L* (D65) of an sRGB colour: the lightness used to check a colormap is perceptually even. */
export function lightness([r, g, b]: [number, number, number]): number {
  const lin = (c: number) => {
    const v = c / 255;
    return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  const y = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  return y > 216 / 24389 ? 116 * Math.cbrt(y) - 16 : (24389 / 27) * y;
}
