import { test } from "node:test";
import assert from "node:assert/strict";
import { applyStroke, cellAt, cellsOnSegment, describeCell, moveCursor, rectCells, sortedCells } from "../src/brush";

const g = { gh: 4, gw: 6, width: 120, height: 80 }; // 20 x 20 px cells

test("cellAt maps pixels to row-major patch indices, -1 outside", () => {
  assert.equal(cellAt(g, 0, 0), 0);
  assert.equal(cellAt(g, 19.9, 19.9), 0);
  assert.equal(cellAt(g, 20, 0), 1);
  assert.equal(cellAt(g, 119.9, 79.9), 23);
  assert.equal(cellAt(g, 45, 30), 1 * 6 + 2);
  assert.equal(cellAt(g, -1, 5), -1);
  assert.equal(cellAt(g, 120, 5), -1);
  assert.equal(cellAt(g, Number.NaN, 5), -1);
});

test("a horizontal stroke marks each crossed cell once, in order", () => {
  assert.deepEqual(cellsOnSegment(g, 10, 30, 70, 30), [6, 7, 8, 9]);
  assert.deepEqual(cellsOnSegment(g, 70, 30, 10, 30), [9, 8, 7, 6]);
  assert.deepEqual(cellsOnSegment(g, 5, 5, 5, 5), [0]);
});

test("a fast diagonal move leaves no gaps (4-connected path)", () => {
  const cells = cellsOnSegment(g, 5, 5, 115, 75);
  assert.equal(cells[0], 0);
  assert.equal(cells[cells.length - 1], 23);
  for (let i = 1; i < cells.length; i++) {
    const [r0, c0] = [Math.floor(cells[i - 1] / 6), cells[i - 1] % 6];
    const [r1, c1] = [Math.floor(cells[i] / 6), cells[i] % 6];
    assert.equal(Math.abs(r1 - r0) + Math.abs(c1 - c0), 1, `gap between ${cells[i - 1]} and ${cells[i]}`);
  }
  // the segment's own sample points are all included
  for (let k = 0; k <= 100; k++) {
    const x = 5 + (110 * k) / 100;
    const y = 5 + (70 * k) / 100;
    assert.ok(cells.includes(cellAt(g, x, y)), `missing the cell under (${x}, ${y})`);
  }
});

test("segments leaving the image keep only the cells inside", () => {
  assert.deepEqual(cellsOnSegment(g, -30, 10, 30, 10), [0, 1]);
  assert.deepEqual(cellsOnSegment(g, -10, -10, -5, -5), []);
});

test("applyStroke adds, erases, and never mutates its input", () => {
  const a = new Set([1, 2]);
  const b = applyStroke(a, [2, 3], false);
  assert.deepEqual(sortedCells(b), [1, 2, 3]);
  assert.deepEqual(sortedCells(a), [1, 2]);
  assert.deepEqual(sortedCells(applyStroke(b, [1, 9], true)), [2, 3]);
  assert.deepEqual(sortedCells([5, 1, 5, 3]), [1, 3, 5]);
});

test("keyboard cursor and rectangles", () => {
  assert.equal(moveCursor(0, "ArrowLeft", 4, 6), 0);
  assert.equal(moveCursor(0, "ArrowRight", 4, 6), 1);
  assert.equal(moveCursor(5, "ArrowRight", 4, 6), 5);
  assert.equal(moveCursor(5, "ArrowDown", 4, 6), 11);
  assert.equal(moveCursor(23, "ArrowDown", 4, 6), 23);
  assert.equal(moveCursor(8, "Home", 4, 6), 6);
  assert.equal(moveCursor(8, "End", 4, 6), 11);
  assert.deepEqual(rectCells(7, 14, 6), [7, 8, 13, 14]);
  assert.deepEqual(rectCells(14, 7, 6), [7, 8, 13, 14]);
  assert.equal(describeCell(14, 6), "patch 14 (row 2, col 2)");
});
