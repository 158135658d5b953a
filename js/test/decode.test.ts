import { test } from "node:test";
import assert from "node:assert/strict";
import { attnRow, blobView, bytesOf, decodeMap, fromBase64, gunzipBase64, halfToFloat, makeAttnLayer, typed } from "../src/decode";

test("typed honours byteOffset and copies misaligned views", () => {
  const buf = new ArrayBuffer(12);
  new Float32Array(buf).set([1, 2, 3]);
  const aligned = typed(new DataView(buf, 4, 8), Float32Array);
  assert.deepEqual(Array.from(aligned), [2, 3]);
  // misaligned: 4 floats written at byte offset 1 of a bigger buffer
  const big = new Uint8Array(17);
  big.set(new Uint8Array(new Float32Array([1.5, -2, 0.25, 8]).buffer), 1);
  const mis = typed(new DataView(big.buffer, 1, 16), Float32Array);
  assert.deepEqual(Array.from(mis), [1.5, -2, 0.25, 8]);
  assert.throws(() => typed(new DataView(buf, 0, 6), Float32Array), /not a whole number/);
});

test("decodeMap float32 and float16", () => {
  const f = new Float32Array([0.5, -1, 2, 4]);
  const m = decodeMap({ data: new DataView(f.buffer), shape: [2, 2], dtype: "float32" });
  assert.deepEqual(Array.from(m), [0.5, -1, 2, 4]);
  // float16: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, 65504 = 0x7bff
  const h = new Uint16Array([0x3c00, 0xc000, 0x3800, 0x7bff]);
  const m16 = decodeMap({ data: new DataView(h.buffer), shape: [4], dtype: "float16" });
  assert.deepEqual(Array.from(m16), [1, -2, 0.5, 65504]);
  assert.equal(halfToFloat(0x0001), 2 ** -24); // subnormal
  assert.equal(halfToFloat(0x7c00), Infinity);
  assert.throws(() => decodeMap({ data: new DataView(f.buffer), shape: [3, 3] }), /shape 3x3/);
});

test("attention rows dequantise as u8 / 255 * row scale", () => {
  // 2 heads, 2 rows, 3 cols
  const q = new Uint8Array([255, 0, 51, 0, 255, 255, 10, 20, 30, 255, 255, 255]);
  const scales = new Float32Array([0.8, 0.5, 2.0, 0.1]);
  const layer = makeAttnLayer(2, 2, 3, new DataView(q.buffer), new DataView(scales.buffer));
  const r = attnRow(layer, 0, 0);
  assert.ok(Math.abs(r[0] - 0.8) < 1e-6 && r[1] === 0 && Math.abs(r[2] - 0.16) < 1e-6);
  const r2 = attnRow(layer, 1, 0);
  const want = [10, 20, 30].map((v) => (v / 255) * 2.0);
  r2.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6));
  assert.throws(() => attnRow(layer, 2, 0), /head 2 out of range/);
  assert.throws(() => makeAttnLayer(2, 2, 2, new DataView(q.buffer), new DataView(scales.buffer)), /expected 2x2x2/);
});

test("base64 and bytesOf", () => {
  assert.deepEqual(Array.from(fromBase64("AAH/")), [0, 1, 255]);
  const u = new Uint8Array([9, 8, 7, 6]);
  assert.deepEqual(Array.from(bytesOf(new DataView(u.buffer, 1, 2))), [8, 7]);
});

test("gunzipBase64 reads what Python's gzip + base64 wrote; blobView checks its range", async () => {
  // python: base64.b64encode(gzip.compress(bytes(range(10)) * 3, 6, mtime=0))
  const { gzipSync } = await import("node:zlib");
  const raw = new Uint8Array(30).map((_, i) => i % 10);
  const text = Buffer.from(gzipSync(raw)).toString("base64");
  const blob = await gunzipBase64(`\n${text}\n`);
  assert.deepEqual(Array.from(new Uint8Array(blob)), Array.from(raw));
  const v = blobView(blob, [8, 4]);
  assert.deepEqual([v.getUint8(0), v.getUint8(3)], [8, 1]);
  assert.throws(() => blobView(blob, [28, 4]), /outside the 30-byte export blob/);
  assert.throws(() => blobView(blob, [-1, 2]), /outside/);
  await assert.rejects(gunzipBase64(Buffer.from("not gzip").toString("base64")));
});
