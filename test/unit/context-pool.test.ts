// The context pool's shutdown against a spare it is still allocating: a freed context starts a
// refill in the background, and a pool closed meanwhile must not leave the new context behind
// (the model's dispose then never finished: a benchmark exited half-way, and a runtime with spare
// contexts would hang at SIGTERM until it was killed).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLogger } from "../../common/logger.js";
import { RuntimeMetrics } from "../../runtime/metrics.js";
import type { ModelHost } from "../../runtime/model/model-host.js";
import { ContextPool } from "../../runtime/sessions/context-pool.js";

function fakeContext() {
  return { disposed: false, sequencesLeft: 1, async dispose() { this.disposed = true; } };
}

describe("context pool", () => {
  it("close() waits for a spare being allocated and frees it too", async () => {
    const allocations: Array<() => void> = [];
    const made: Array<ReturnType<typeof fakeContext>> = [];
    const host = {
      flashAttention: "auto",
      estimateContextCost: async () => ({ ram: 1, vram: 0 }),
      createContext: () => new Promise((resolve) => allocations.push(() => { const c = fakeContext(); made.push(c); resolve(c); })),
    } as unknown as ModelHost;
    const pool = new ContextPool(host, new RuntimeMetrics(false), createLogger("test", "silent"), { sequencesPerContext: 1, graceMs: 0, spares: 1, spareContextSize: 512 });
    const refill = pool.refill();
    while (allocations.length === 0) await new Promise((r) => setImmediate(r));
    const closing = pool.close();
    allocations[0]!(); // the spare comes out only after close() began
    await Promise.all([refill, closing]);
    assert.equal(made.length, 1);
    assert.ok(made[0]!.disposed, "the spare allocated during close() is disposed");
    assert.deepEqual(pool.counts(), { leased: 0, idle: 0 });
    assert.equal(await pool.refill(), 0, "a closed pool allocates nothing");
    assert.equal(made.length, 1);
  });
});
