// The verified-restore rule, case by case.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkRestore } from "../../runtime/sessions/restore-check.js";

describe("restore check", () => {
  const restored = [1, 2, 3, 4, 5, 6];
  it("a restore whose tokens the next evaluation reused is verified", () => {
    assert.deepEqual(checkRestore(restored, [1, 2, 3, 4, 5, 6, 7, 8], 6), { restoredTokens: 6, commonPrefix: 6, reusedTokens: 6, verified: true, diverged: false });
    assert.equal(checkRestore(restored, [1, 2, 3, 4, 5, 6, 7], 5).verified, true, "the last token evaluated again for its logits");
  });
  it("a restore that did nothing (evaluation from zero) is caught", () => {
    const c = checkRestore(restored, [1, 2, 3, 4, 5, 6, 7], 0);
    assert.equal(c.verified, false);
    assert.equal(c.diverged, false);
  });
  it("a client that changed an earlier message diverges: reuse up to the change is correct", () => {
    const c = checkRestore(restored, [1, 2, 9, 4, 5, 6, 7], 2);
    assert.deepEqual([c.commonPrefix, c.verified, c.diverged], [2, true, true]);
    assert.equal(checkRestore(restored, [1, 2, 9, 4], 0).verified, false, "but not below it");
  });
});
