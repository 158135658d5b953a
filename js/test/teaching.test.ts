import { test } from "node:test";
import assert from "node:assert/strict";
import { headPairs, headScale, layerAtX, topClasses, tourStep, xOfLayer } from "../src/teach_geom";

test("topClasses ranks by the last block and adds the target", () => {
  // L = 2 blocks, C = 4 classes; the last block's probabilities are 0.1 0.5 0.3 0.1
  const r = [0.7, 0.1, 0.1, 0.1, 0.1, 0.5, 0.3, 0.1];
  assert.deepEqual(topClasses(r, 2, 4, 1, 2), [1, 2]);
  assert.deepEqual(topClasses(r, 2, 4, 0, 2), [1, 2, 0]);
  assert.deepEqual(topClasses(r, 2, 4, 3, 5), [1, 2, 0, 3]); // ties by index
  assert.throws(() => topClasses(r, 3, 4, 0), /expected 3 x 4/);
});

test("layerAtX inverts xOfLayer and clamps", () => {
  for (let l = 0; l < 12; l++) assert.equal(layerAtX(xOfLayer(l, 12, 260, 22), 12, 260, 22), l);
  assert.equal(layerAtX(-50, 12, 260, 22), 0);
  assert.equal(layerAtX(999, 12, 260, 22), 11);
  assert.equal(layerAtX(100, 1, 260, 22), 0);
  assert.equal(xOfLayer(0, 1, 260, 22), 130);
});

test("tourStep stays within -1..n-1", () => {
  assert.equal(tourStep(-1, 1, 7), 0);
  assert.equal(tourStep(6, 1, 7), 6);
  assert.equal(tourStep(0, -1, 7), -1);
  assert.equal(tourStep(-1, -1, 7), -1);
  assert.equal(tourStep(-1, 1, 0), -1);
});

test("headPairs sorts numerically", () => {
  assert.deepEqual(headPairs(new Set(["10,1", "2,3", "2,0"])), [[2, 0], [2, 3], [10, 1]]);
});

test("headScale: one symmetric scale over every block", () => {
  // L = 2 blocks, H = 2 heads; the largest |value| (2, block 1) sets the scale for block 0 too
  const all = [-1, 0.5, 2, -2];
  const a = headScale(all, 0, 2);
  assert.equal(a.max, 2);
  assert.deepEqual(Array.from(a.t), [0.25, 0.625]);
  assert.deepEqual(Array.from(headScale(all, 1, 2).t), [1, 0]);
  assert.deepEqual(Array.from(headScale([0, 0], 0, 2).t), [0.5, 0.5]);
  assert.throws(() => headScale(all, 2, 2), /block 2 is out of range/);
  assert.throws(() => headScale([1, 2, 3], 0, 2), /expected \(L, 2\)/);
});
