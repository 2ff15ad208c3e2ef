// Per-namespace limits on a shared runtime: a tenant at its cap makes room among its own sessions,
// never its neighbours'; a context above the namespace's maximum is refused with the reason.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TorporError } from "../../contract/errors.js";
import { NamespaceLimits } from "../../runtime/sessions/namespace-limits.js";
import { greedy, harness } from "../helpers/in-process-runtime.js";

describe("namespace limits", () => {
  it("a noisy namespace at its resident cap evicts its own sessions, and cannot ask for a larger context", async () => {
    const h = await harness({ maxResident: 8, namespaceLimits: NamespaceLimits.parse(JSON.stringify({ noisy: { maxResidentSessions: 2, maxContextSize: 1024 } })) });
    const quiet = await h.manager.register({ namespace: "quiet", name: "q" });
    await quiet.submit("hello", greedy(2));
    const noisy = await Promise.all([0, 1, 2, 3].map((i) => h.manager.register({ namespace: "noisy", name: `n${i}` })));
    for (const s of noisy) await s.submit("hi", greedy(2));
    assert.equal(noisy.filter((s) => s.residency === "InMemory").length, 2, "at most 2 resident for noisy");
    assert.equal(quiet.residency, "InMemory", "the neighbour was never evicted for noisy");
    await assert.rejects(h.manager.register({ namespace: "noisy", name: "big", contextSize: 4096 }),
      (e: unknown) => e instanceof TorporError && e.code === "bad_request" && /limit of 1024 tokens for namespace "noisy"/.test(e.message));
    assert.throws(() => NamespaceLimits.parse('{"x": {"maxContextSize": -1}}'), /positive integer/);
  });
});
