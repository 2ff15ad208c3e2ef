import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { WorkQueue } from "../../operator/work-queue.js";
import { SerialQueue } from "../../runtime/sessions/serial-queue.js";

describe("work queue", () => {
  it("de-duplicates keys and never hands one key to two workers", async () => {
    const q = new WorkQueue();
    q.add("a"); q.add("a"); q.add("b");
    assert.equal(q.depth, 2);
    const k1 = await q.get();
    q.add("a"); // while processing: remembered, not handed out
    const k2 = await q.get();
    assert.deepEqual([k1, k2], ["a", "b"]);
    assert.equal(q.depth, 0);
    q.done("a");
    assert.equal(await q.get(), "a");
    q.shutdown();
    assert.equal(await q.get(), undefined);
  });

  it("backs off exponentially per key and forgets on success", () => {
    const q = new WorkQueue(100, 1000);
    assert.deepEqual([q.addRateLimited("k"), q.addRateLimited("k"), q.addRateLimited("k"), q.addRateLimited("k"), q.addRateLimited("k")], [100, 200, 400, 800, 1000]);
    q.forget("k");
    assert.equal(q.addRateLimited("k"), 100);
    q.shutdown();
  });
});

describe("serial queue", () => {
  it("runs tasks one at a time in order, and survives a failing task", async () => {
    const q = new SerialQueue();
    const log: string[] = [];
    let running = 0;
    const task = (name: string, fail = false) => q.run(async () => {
      running++;
      assert.equal(running, 1);
      await new Promise((r) => setTimeout(r, 5));
      log.push(name);
      running--;
      if (fail) throw new Error(name);
    });
    const results = await Promise.allSettled([task("a"), task("b", true), task("c")]);
    assert.deepEqual(log, ["a", "b", "c"]);
    assert.equal(results[1]!.status, "rejected");
    assert.equal(q.depth, 0);
  });
});
