import { test } from "node:test";
import assert from "node:assert/strict";
import { colorAt, colorize, COLORMAPS, DIVERGING, isSigned, lut, normalize } from "../src/colormap";

test("every colormap has 256 RGB entries and hits its end stops exactly", () => {
  for (const name of COLORMAPS) assert.equal(lut(name).length, 768);
  assert.deepEqual(colorAt("viridis", 0), [0x44, 0x01, 0x54]);
  assert.deepEqual(colorAt("viridis", 1), [0xfd, 0xe7, 0x25]);
  assert.deepEqual(colorAt("gray", 0.5), [128, 128, 128]); // round(127.5)
  assert.deepEqual(colorAt("gray", -3), [0, 0, 0]); // clamped
  assert.deepEqual(colorAt("gray", Number.NaN), [0, 0, 0]);
});

test("diverging maps are white-ish at the centre and listed as diverging", () => {
  for (const name of ["rdbu", "puor"]) {
    assert.ok(DIVERGING.has(name));
    // 0.5 falls between LUT entries 127 and 128, a hair off the centre stop #f7f7f7
    for (const v of colorAt(name, 0.5)) assert.ok(Math.abs(v - 0xf7) <= 3, `${name}: ${v}`);
  }
  // rdbu: negative side blue, positive side red
  const neg = colorAt("rdbu", 0);
  const pos = colorAt("rdbu", 1);
  assert.ok(neg[2] > neg[0] && pos[0] > pos[2]);
});

test("linear interpolation between two stops (gray: i/255 -> i)", () => {
  const t = lut("gray");
  for (let i = 0; i < 256; i++) assert.equal(t[i * 3], i);
});

test("unknown colormap names raise", () => {
  assert.throws(() => lut("jet"), /unknown colormap "jet"/);
});

test("normalize: min-max for unsigned maps, symmetric around 0 for signed maps", () => {
  const u = normalize([2, 4, 6], false);
  assert.deepEqual(Array.from(u.t), [0, 0.5, 1]);
  assert.equal(u.lo, 2);
  assert.equal(u.hi, 6);
  const c = normalize([3, 3], false); // constant -> 0
  assert.deepEqual(Array.from(c.t), [0, 0]);
  const s = normalize([-2, 0, 1], true);
  assert.deepEqual(Array.from(s.t), [0, 0.5, 0.75]);
  assert.equal(s.lo, -2);
  assert.equal(s.hi, 2);
  const n = normalize([Number.NaN, 1, 3], false);
  assert.deepEqual(Array.from(n.t), [0, 0, 1]);
  assert.ok(isSigned([0, -1e-9]));
  assert.ok(!isSigned([0, 1]));
});

test("colorize writes RGBA with the requested alpha", () => {
  const px = colorize([0, 1], "gray", 128);
  assert.deepEqual(Array.from(px), [0, 0, 0, 128, 255, 255, 255, 128]);
});
