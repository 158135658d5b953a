import { test } from "node:test";
import assert from "node:assert/strict";
import { exportName, fmt, signedFmt, slug } from "../src/format";
import { colorAt, lightness, signedAlpha } from "../src/colormap";

test("scores that round to zero never read -0.000", () => {
  assert.equal(fmt(-0.0001), "0.000");
  assert.equal(fmt(-0), "0.000");
  assert.equal(fmt(-0.0004, 3), "0.000");
  assert.equal(fmt(-0.0006, 3), "-0.001");
  assert.equal(fmt(-0.04, 1), "0.0");
  assert.equal(fmt(0.9834), "0.983");
  assert.equal(fmt(Number.NaN), "–");
  assert.equal(signedFmt(-0.0001), "+0.000");
  assert.equal(signedFmt(-0.25), "−0.250");
  assert.equal(signedFmt(0.125), "+0.125");
});

test("export names say what is on screen and are safe file names", () => {
  assert.equal(exportName(2, "rollout", "square"), "vit-explore_image2_rollout_square.png");
  assert.equal(exportName(1, "raw_attention", null), "vit-explore_image1_raw_attention.png");
  assert.equal(slug("../a b/c?"), "a-b-c");
  assert.equal(slug("///"), "x");
});

test("the diverging default is perceptually even: lightness symmetric about 0 and monotone to the ends", () => {
  for (const name of ["rdbu"]) { // (puor is not: its orange half is lighter; it stays an explicit choice)
    let prev = Infinity;
    for (let i = 0; i <= 50; i++) {
      const a = lightness(colorAt(name, 0.5 - i / 100));
      const b = lightness(colorAt(name, 0.5 + i / 100));
      assert.ok(Math.abs(a - b) < 8, `${name} at ±${i / 100}: L* ${a.toFixed(1)} vs ${b.toFixed(1)}`);
      assert.ok(a <= prev + 0.5, `${name}: lightness must fall away from the centre`);
      prev = a;
    }
  }
});

test("signed maps are transparent at zero and opaque from half the range", () => {
  const px = new Uint8ClampedArray(4 * 5).fill(200);
  signedAlpha([0.5, 0.625, 0.75, 1, 0], px);
  assert.deepEqual([px[3], px[7], px[11], px[15], px[19]], [0, 100, 200, 200, 200]);
});
