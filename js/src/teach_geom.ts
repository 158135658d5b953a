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
