// The front end's side of the shared constants: contract.ts reads vit_explore/widget/contract.json
// (the file Python's _contract.py reads) and builds the same keys (tests/widget/test_contract.py has
// the same hand-written cases).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ATTN, attentionViewKey, mapKey, MODES, TEACHING_KINDS, TOUR_PANELS } from "../src/contract";

// read from disk (npm test runs in js/), not through the bundle
const json = JSON.parse(readFileSync(join(process.cwd(), "..", "vit_explore", "widget", "contract.json"), "utf8"));

test("the constants are the contract file's", () => {
  assert.deepEqual([...MODES], json.modes);
  assert.deepEqual([...MODES], ["noise", "blur", "mean", "zero", "drop"]);
  assert.equal(ATTN, json.attention_method);
  assert.deepEqual([...TEACHING_KINDS], json.teaching_kinds);
  assert.deepEqual([...TOUR_PANELS], json.tour_panels);
});

test("map keys by hand", () => {
  assert.equal(mapKey(3, "rollout", null, 0), "3|rollout|-|0");
  assert.equal(mapKey(0, "chefer_lrp", 7, 2), "0|chefer_lrp|7|2");
  assert.equal(attentionViewKey(1, 4, -1, 12, 5), "1|raw_attention|4|-1|12|5");
});
