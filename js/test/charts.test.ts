import { test } from "node:test";
import assert from "node:assert/strict";
import { applyMask, contrastRatio, maskAt, maskOrder, polylinePoints, toPlot, unitTrapezoid } from "../src/charts";

const box = { width: 110, height: 70, left: 10, right: 0, top: 0, bottom: 20 }; // 100 x 50 plot area

test("toPlot maps the unit square into the plot area, y up, clamped", () => {
  assert.deepEqual(toPlot(box, 0, 0), [10, 50]);
  assert.deepEqual(toPlot(box, 1, 1), [110, 0]);
  assert.deepEqual(toPlot(box, 0.5, 0.25), [60, 37.5]);
  assert.deepEqual(toPlot(box, 2, -1), [110, 50]);
  assert.deepEqual(toPlot(box, 0, Number.NaN), [10, 50]);
});

test("polylinePoints lists every point and rejects mismatched lengths", () => {
  assert.equal(polylinePoints(box, [0, 0.5, 1], [1, 0.5, 0]), "10,0 60,25 110,50");
  assert.throws(() => polylinePoints(box, [0, 1], [1]), /2 x values but 1 y values/);
});

test("unitTrapezoid is RISE's rule (hand-computed)", () => {
  // (1 + 0.5 + 0 - 0.5 - 0) / 2 = 0.5 ; (0.2+0.4+0.9+1 - 0.1 - 0.5)/3 = 0.6333
  assert.equal(unitTrapezoid([1, 0.5, 0]), 0.5);
  assert.ok(Math.abs(unitTrapezoid([0.2, 0.4, 0.9, 1.0]) - (0.2 / 2 + 0.4 + 0.9 + 1.0 / 2) / 3) < 1e-12);
  assert.ok(Number.isNaN(unitTrapezoid([1])));
});

test("maskOrder sorts by score, highest first, stable on ties, NaN last", () => {
  assert.deepEqual(maskOrder([0.1, 0.5, 0.5, Number.NaN, 0.7]), [4, 1, 2, 0, 3]);
  assert.deepEqual(maskOrder([]), []);
});

test("maskAt slices the (K, h, w) stack and checks its size", () => {
  const data = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]); // K=3, 2x2
  assert.deepEqual(Array.from(maskAt(data, 3, 2, 2, 1)), [5, 6, 7, 8]);
  assert.throws(() => maskAt(data, 2, 2, 2, 0), /12 bytes but 2x2x2 needs 8/);
  assert.throws(() => maskAt(data, 3, 2, 2, 3), /out of range 0..2/);
});

test("applyMask keeps the masked area and darkens the rest to the floor (nearest resampling)", () => {
  // 2x4 image, mask 1x2: left half 255, right half 0
  const rgba = new Uint8ClampedArray(2 * 4 * 4).fill(200);
  const out = applyMask(rgba, 2, 4, new Uint8Array([255, 0]), 1, 2, 0.25);
  for (let y = 0; y < 2; y++)
    for (let x = 0; x < 4; x++) {
      const i = (y * 4 + x) * 4;
      assert.equal(out[i], x < 2 ? 200 : 50);
      assert.equal(out[i + 3], 200); // alpha untouched
    }
});

test("contrastRatio matches WCAG's reference values", () => {
  assert.ok(Math.abs(contrastRatio([0, 0, 0], [255, 255, 255]) - 21) < 1e-9);
  assert.equal(contrastRatio([119, 119, 119], [119, 119, 119]), 1);
  // #767676 on white is the classic 4.54:1
  assert.ok(Math.abs(contrastRatio([0x76, 0x76, 0x76], [255, 255, 255]) - 4.54) < 0.01);
});
