// Pure helpers of the teaching panels (unit-tested in js/test/teaching.test.ts).

/** The `k` classes with the highest probability after the last block, plus `target` if not among them. */
export function topClasses(readout: ArrayLike<number>, L: number, C: number, target: number, k = 5): number[] {
  if (readout.length !== L * C) throw new Error(`expected ${L} x ${C} read-out values, got ${readout.length}`);
  const last = Array.from({ length: C }, (_, c) => readout[(L - 1) * C + c]);
  const order = Array.from(last.keys()).sort((a, b) => last[b] - last[a] || a - b).slice(0, k);
  if (target >= 0 && target < C && !order.includes(target)) order.push(target);
  return order;
}

/** Chart x (viewBox units) of block `l` of `L`, between `pad` and `W - pad`. */
export function xOfLayer(l: number, L: number, W: number, pad: number): number {
  return pad + (L > 1 ? (l / (L - 1)) * (W - 2 * pad) : (W - 2 * pad) / 2);
}

/** The block nearest to chart x (viewBox units), clamped to 0..L-1. */
export function layerAtX(x: number, L: number, W: number, pad: number): number {
  if (L <= 1 || !Number.isFinite(x)) return 0;
  return Math.max(0, Math.min(L - 1, Math.round(((x - pad) / (W - 2 * pad)) * (L - 1))));
}

/** Tour step after moving by `delta` from `k` (-1 = before the first step), clamped to -1..n-1. */
export function tourStep(k: number, delta: number, n: number): number {
  return Math.max(-1, Math.min(n - 1, k + delta));
}

/** A set of switched-off heads ("layer,head" keys) as the sorted [layer, head] pairs sent to the kernel. */
export function headPairs(off: Iterable<string>): number[][] {
  return Array.from(off, (s) => s.split(",").map(Number)).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
}

/** Colour positions in [0, 1] (0.5 = zero) of the heads of block `layer` from the (L, H) attributions
 *  `all`, on one symmetric scale over every block (so colours compare across layers); and that scale. */
export function headScale(all: ArrayLike<number>, layer: number, H: number): { t: Float32Array; max: number } {
  if (H <= 0 || all.length % H !== 0) throw new Error(`expected (L, ${H}) attributions, got ${all.length} values`);
  if (layer < 0 || layer >= all.length / H) throw new Error(`block ${layer} is out of range (0..${all.length / H - 1})`);
  let max = 0;
  for (let i = 0; i < all.length; i++) max = Math.max(max, Math.abs(all[i]));
  const t = new Float32Array(H);
  for (let h = 0; h < H; h++) t[h] = max > 0 ? 0.5 + all[layer * H + h] / (2 * max) : 0.5;
  return { t, max };
}
