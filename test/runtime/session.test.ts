// Session behaviour on real node-llama-cpp with the generated test model, wired in-process.
import assert from "node:assert/strict";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { TorporError } from "../../contract/errors.js";
import { MAX_SESSION_NAME_LENGTH } from "../../contract/inference-session.js";
import { cpuAllowance } from "../../runtime/model/cpu-allowance.js";
import { ModelHost } from "../../runtime/model/model-host.js";
import type { Session } from "../../runtime/sessions/session.js";
import { counterValue, greedy, harness } from "../helpers/in-process-runtime.js";
import { recordingDecodeBatches } from "../../testbed/decode-batches.js";
import { recurrentModel, smallModel, swaModel } from "../../testbed/models.js";

/** Registers the sessions and gives each a turn in this order, a second apart: the first is the least recently used. */
async function turnsInOrder(h: Awaited<ReturnType<typeof harness>>, names: string[]): Promise<Session[]> {
  const sessions = await Promise.all(names.map((n) => h.manager.register({ namespace: "default", name: n, contextSize: 1024 })));
  for (const [i, s] of sessions.entries()) {
    if (i > 0) h.clock.advance(1000);
    await s.submit(`turn ${i}`, greedy(2));
  }
  return sessions;
}

async function histogramCount(h: Awaited<ReturnType<typeof harness>>, name: string): Promise<number> {
  const m = (await h.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).filter((v) => (v as { metricName?: string }).metricName === `${name}_count`).reduce((a, v) => a + Number(v.value), 0);
}

describe("session lifecycle", () => {
  it("is lazy: no context until the first request", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "lazy" });
    assert.equal(s.residency, "NotCreated");
    assert.equal(h.manager.residentCount, 0);
    const r = await s.submit("hello", greedy(4));
    assert.equal(r.created, true);
    assert.equal(s.residency, "InMemory");
    assert.equal(h.manager.residentCount, 1);
  });

  it("stop sequences end the answer before the first of them, and the conversation goes on", async () => {
    const h = await harness();
    const free = await h.manager.register({ namespace: "default", name: "unstopped" });
    const full = (await free.submit("Tell me a story.", greedy(24))).text;
    // A piece from the middle of the greedy answer: the same prompt, stopped there.
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 2);
    assert.ok(full.indexOf(stop) > 0, `a stop sequence after the answer's start: ${JSON.stringify(stop)} in ${JSON.stringify(full)}`);
    const s = await h.manager.register({ namespace: "default", name: "stopped" });
    const r = await s.submit("Tell me a story.", { ...greedy(24), stop: ["never-in-this-answer", stop] });
    assert.equal(r.text, full.slice(0, full.indexOf(stop)));
    assert.equal(r.finishReason, "stop");
    assert.ok(r.completionTokens < 24);
    const next = await s.submit("Go on.", greedy(4));
    assert.ok(next.promptTokens > r.promptTokens, "the stopped answer is in the history");
  });

  it("continues exactly after hibernate + rehydrate (greedy)", async () => {
    const h = await harness();
    const a = await h.manager.register({ namespace: "default", name: "never-hibernated", systemPrompt: "Be brief." });
    const b = await h.manager.register({ namespace: "default", name: "hibernated", systemPrompt: "Be brief." });
    const turns = ["Tell me about the weather.", "And tomorrow?", "Thanks, and the day after?"];
    const ra1 = await a.submit(turns[0]!, greedy(24));
    const rb1 = await b.submit(turns[0]!, greedy(24));
    assert.equal(rb1.text, ra1.text);
    const outcome = await b.hibernate("test");
    assert.equal(outcome.outcome, "hibernated");
    assert.equal(b.residency, "Hibernated");
    for (const turn of turns.slice(1)) {
      const ra = await a.submit(turn, greedy(24));
      const rb = await b.submit(turn, greedy(24));
      assert.ok(ra.text.length > 0);
      assert.equal(rb.text, ra.text, `turn "${turn}" diverged after rehydrate`);
    }
    assert.deepEqual(b.messages(), a.messages());
  });

  it("gives its conversation back without waking: from memory, and from the manifest on a runtime it was registered on asleep", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "team-a", name: "reader", path: "tenant-1", systemPrompt: "Be brief." });
    assert.deepEqual(await s.conversation(), { history: [], source: "memory" }, "nothing yet");
    const r = await s.submit("My cat is called Tofu.", greedy(8));
    const expected = [{ type: "system", text: "Be brief." }, { type: "user", text: "My cat is called Tofu." }, { type: "model", response: [r.text] }];
    assert.deepEqual(await s.conversation(), { history: expected, source: "memory" });
    await s.hibernate("test");
    assert.deepEqual(await s.conversation(), { history: expected, source: "memory" }, "hibernated here: the history stayed");
    // Another runtime on the volume, as a new pod after a move: asleep, it holds no history yet.
    const other = await harness({}, h.dir);
    const moved = await other.manager.register({ namespace: "team-a", name: "reader", path: "tenant-1", systemPrompt: "Be brief." });
    assert.equal(moved.residency, "Hibernated");
    assert.deepEqual(moved.messages(), []);
    assert.deepEqual(await moved.conversation(), { history: expected, source: "volume" }, "read from the manifest");
    assert.equal(moved.residency, "Hibernated", "reading did not wake it");
    assert.equal(other.manager.residentCount, 0);
    const next = await moved.submit("What is my cat called?", greedy(8));
    assert.equal(next.rehydrated, true, "its state was still there to load");
    assert.equal((await moved.conversation()).source, "memory");
  });

  it("deletes the hibernation files after a successful rehydrate", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "team-a", name: "cleanup", path: "tenant-1" });
    await s.submit("hi", greedy(4));
    const out = await s.hibernate("test");
    const dir = path.join(h.dir, "team-a", "tenant-1");
    assert.deepEqual((await readdir(dir)).sort(), [path.basename(out.record!.stateFile), "cleanup.torpor.json"].sort());
    const r = await s.submit("again", greedy(4));
    assert.equal(r.rehydrated, true);
    assert.ok(r.rehydrateMs !== undefined && r.rehydrateMs >= 0);
    assert.deepEqual((await readdir(dir)).filter((f) => f.endsWith(".torpor.json")), [], "the manifest is gone before the answer: nothing can load the state again");
    await h.store.settled();
    assert.deepEqual(await readdir(dir), [], "the state file follows once its blocks are freed");
  });

  it("the longest name a session may have hibernates and rehydrates under a large epoch; a longer one is refused", async () => {
    const h = await harness();
    // Kubernetes allows 253 characters; file names made from it stop at 255 bytes (MAX_SESSION_NAME_LENGTH).
    const name = `${"a".repeat(98)}.${"b".repeat(100)}z`;
    assert.equal(name.length, MAX_SESSION_NAME_LENGTH);
    const s = await h.manager.register({ namespace: "default", name, epoch: 2 ** 52 });
    const first = await s.submit("hi", greedy(4));
    const out = await s.hibernate("test");
    assert.equal(out.outcome, "hibernated");
    const r = await s.submit("again", greedy(4));
    assert.equal(r.rehydrated, true);
    assert.ok(r.cachedTokens >= first.promptTokens, "the restored conversation was reused");
    await assert.rejects(h.manager.register({ namespace: "default", name: "a".repeat(MAX_SESSION_NAME_LENGTH + 1) }),
      (e: unknown) => e instanceof TorporError && e.code === "bad_request" && /at most 200/.test(e.message));
  });

  it("coalesces concurrent hibernates into one save", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "coalesce" });
    await s.submit("some words to fill the cache", greedy(8));
    const results = await Promise.all(Array.from({ length: 10 }, () => s.hibernate("test")));
    assert.equal(await histogramCount(h, "torpor_runtime_hibernate_duration_seconds"), 1);
    for (const r of results) assert.deepEqual(r, results[0]);
    assert.equal(results[0]!.outcome, "hibernated");
    const again = await s.hibernate("test");
    assert.equal(again.outcome, "already-hibernated");
    assert.equal(await histogramCount(h, "torpor_runtime_hibernate_duration_seconds"), 1);
  });

  it("is a harmless no-op on a NotCreated session", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "noop" });
    assert.deepEqual(await s.hibernate("test"), { outcome: "not-created" });
    assert.equal(s.residency, "NotCreated");
  });

  it("defers a hibernate until the in-flight generation finishes", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "busy" });
    await s.submit("warm up", greedy(2));
    const gen = s.submit("write a long answer", greedy(120));
    await new Promise((r) => setTimeout(r, 5));
    const hib = s.hibernate("test");
    const after = s.submit("and then?", greedy(4)); // queued behind the hibernate: must rehydrate
    const g = await gen;
    assert.equal(g.completionTokens, 120, "generation was cut short by the hibernate");
    const out = await hib;
    assert.equal(out.outcome, "hibernated");
    assert.ok(out.record!.tokenCount >= g.promptTokens + 119, "hibernated state lacks the generated tokens");
    const a = await after;
    assert.equal(a.rehydrated, true);
    assert.equal(s.residency, "InMemory");
  });

  it("keeps one generation at a time and answers queued requests in order", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "order" });
    const order: number[] = [];
    await Promise.all([0, 1, 2, 3].map((i) => s.submit(`message ${i}`, greedy(3)).then(() => order.push(i))));
    assert.deepEqual(order, [0, 1, 2, 3]);
    const users = s.messages().filter((m) => m.type === "user").map((m) => (m as { text: string }).text);
    assert.deepEqual(users, ["message 0", "message 1", "message 2", "message 3"]);
  });

  it("uses evaluated tokens as a prefix cache and restarts at a divergence", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "prefix" });
    const first = [{ type: "user" as const, text: "The quick brown fox jumps over the lazy dog." }];
    const r1 = await s.complete(first, greedy(8));
    assert.equal(r1.cachedTokens, 0);
    const extended = [...first, { type: "model" as const, response: [r1.text] }, { type: "user" as const, text: "Again?" }];
    const r2 = await s.complete(extended, greedy(8));
    assert.ok(r2.cachedTokens > r1.promptTokens * 0.8, `expected most of ${r1.promptTokens} tokens reused, got ${r2.cachedTokens}`);
    const diverged = [{ type: "user" as const, text: "The quick brown cat sleeps." }];
    const r3 = await s.complete(diverged, greedy(8));
    assert.ok(r3.cachedTokens > 0 && r3.cachedTokens < r3.promptTokens, `divergence should reuse only the common prefix (${r3.cachedTokens}/${r3.promptTokens})`);
  });

  it("a changed contextSize applies from the next turn, resident or hibernated, and never below the conversation the session holds", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "grow", contextSize: 256 });
    await s.submit("hello", greedy(4));
    const long = "the quick brown fox jumps over the lazy dog ".repeat(12);
    const tokens = h.host.model.tokenize(long).length;
    assert.ok(tokens > 256 && tokens < 900, `${tokens} tokens`);
    await assert.rejects(s.submit(long, greedy(2)), (e: unknown) => e instanceof TorporError && e.code === "context_length_exceeded" && /raise its spec\.contextSize/.test(e.message));
    // What that error tells the user to do.
    await h.manager.register({ namespace: "default", name: "grow", contextSize: 1024 });
    assert.equal(s.status().contextSize, 256, "resident: the new size waits for the next turn");
    const grown = await s.submit(long, greedy(2));
    assert.equal(s.status().contextSize, 1024);
    assert.ok(grown.cachedTokens > 0, "the conversation moved with its state");
    assert.equal(s.messages().filter((m) => m.type === "user").length, 2);
    await s.hibernate("test");
    await h.manager.register({ namespace: "default", name: "grow", contextSize: 2048 });
    assert.equal((await s.submit("more", greedy(2))).rehydrated, true);
    assert.equal(s.status().contextSize, 2048, "hibernated: applied at the rehydrate");
    await h.manager.register({ namespace: "default", name: "grow", contextSize: 256 });
    await s.submit("again", greedy(2));
    await s.hibernate("test");
    await s.submit("and again", greedy(2));
    assert.equal(s.status().contextSize, 2048, "a size below the conversation it holds is not applied");
  });

  it("refuses a conversation longer than the context with a clear error", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "overflow", contextSize: 256 });
    await assert.rejects(s.submit("x".repeat(1000), greedy(4)), (e: TorporError) => e.code === "context_length_exceeded" && /context holds 256/.test(e.message));
  });
});

describe("bulkhead and idle policy", () => {
  it("evicts the least recently used idle session when the cap is reached", async () => {
    const h = await harness({ maxResident: 2 });
    const [a, b, c] = await Promise.all(["a", "b", "c"].map((n) => h.manager.register({ namespace: "default", name: n })));
    await a!.submit("one", greedy(2));
    h.clock.advance(1000);
    await b!.submit("two", greedy(2));
    h.clock.advance(1000);
    await a!.submit("one again", greedy(2)); // a is now more recent than b
    h.clock.advance(1000);
    await c!.submit("three", greedy(2));
    assert.equal(b!.residency, "Hibernated");
    assert.equal(a!.residency, "InMemory");
    assert.equal(c!.residency, "InMemory");
    assert.equal(h.manager.residentCount, 2);
    assert.equal(await counterValue(h.metrics, "torpor_runtime_evictions_total"), 1);
  });

  it("a pre-warm asked for only if there is room leaves a full runtime's sessions alone", async () => {
    const h = await harness({ maxResident: 1 });
    const [a, b] = await Promise.all(["a", "b"].map((n) => h.manager.register({ namespace: "default", name: n })));
    await b!.submit("moved here", greedy(2));
    await b!.hibernate("test");
    await a!.submit("resident", greedy(2));
    // The operator's pre-warm after a move: no room without evicting a, so b stays hibernated, no error.
    assert.deepEqual(await b!.warm({ ifRoom: true }), { rehydrated: false, created: false, deferred: "no_room" });
    assert.equal(a!.residency, "InMemory");
    assert.equal(b!.residency, "Hibernated");
    assert.equal(b!.status().lastError, undefined);
    assert.equal(await counterValue(h.metrics, "torpor_runtime_evictions_total"), 0);
    // A request (or a kubectl patch) still makes room, and b continues where it was.
    assert.equal((await b!.warm()).rehydrated, true);
    assert.equal(a!.residency, "Hibernated");
    assert.deepEqual(b!.messages().filter((m) => m.type === "user").map((m) => (m as { text: string }).text), ["moved here"]);
  });

  it("a session moved to another pod keeps its idle clock: pre-warmed only within its idle policy, idled out on time", async () => {
    const from = await harness({ idleAfterMs: 60_000 });
    const to = await harness({ idleAfterMs: 60_000 }, from.dir);
    const [a, b] = await Promise.all(["recent", "stale"].map((n) => from.manager.register({ namespace: "default", name: n, epoch: 1 })));
    await b!.submit("last used long ago", greedy(2));
    from.clock.advance(50_000);
    await a!.submit("last used just now", greedy(2));
    const lastUsed = { recent: a!.status().lastActivity, stale: b!.status().lastActivity };
    await from.manager.handOff("default", "recent", 2);
    await from.manager.handOff("default", "stale", 2);
    // The new pod's clock reads what the old one did when the operator moves them (a rolling update).
    to.clock.advance(from.clock.now() - to.clock.now() + 15_000);
    const [ra, rb] = await Promise.all((["recent", "stale"] as const).map((n) => to.manager.register({ namespace: "default", name: n, epoch: 2, lastActivity: Date.parse(lastUsed[n]) })));
    assert.equal(rb!.status().lastActivity, lastUsed.stale, "registering is not activity");
    // Idle 65 s with a 60 s policy: it would have been hibernated on its old pod by now.
    assert.deepEqual(await rb!.warm({ ifActiveWithin: to.manager.idleAfterOf(rb!) }), { rehydrated: false, created: false, deferred: "idle" });
    assert.equal(rb!.residency, "Hibernated");
    assert.equal((await ra!.warm({ ifActiveWithin: to.manager.idleAfterOf(ra!) })).rehydrated, true);
    assert.equal(ra!.status().lastActivity, lastUsed.recent, "the operator's pre-warm is not the user's activity");
    to.clock.advance(46_000);
    await new Promise((r) => setImmediate(r)); // the queue counts the warm until its promise chain settles
    assert.equal(await to.manager.sweepIdle(), 1, "idle 61 s since its last turn, whatever pod it was on");
    assert.equal(ra!.residency, "Hibernated");
    // A time from a clock ahead of this node's is taken as now.
    const ahead = await to.manager.register({ namespace: "default", name: "skewed", lastActivity: to.clock.now() + 3_600_000 });
    assert.equal(Date.parse(ahead.status().lastActivity), to.clock.now());
  });

  it("hands an evicted session's context to the session that needed the room; both continue exactly", async () => {
    const h = await harness({ maxResident: 1 });
    const ref = await harness({ maxResident: 8, contextHandover: false });
    const names = ["swap-a", "swap-b"];
    const live = await Promise.all(names.map((n) => h.manager.register({ namespace: "default", name: n, systemPrompt: "Be brief." })));
    const never = await Promise.all(names.map((n) => ref.manager.register({ namespace: "default", name: n, systemPrompt: "Be brief." })));
    for (const [turn, text] of ["first words", "more words", "last words"].entries()) {
      for (const i of [0, 1]) {
        // Cap 1: every call evicts the other session, whose context this one then takes over.
        const r = await live[i]!.submit(`${text} ${i}`, greedy(12));
        const expected = await never[i]!.submit(`${text} ${i}`, greedy(12));
        assert.equal(r.text, expected.text, `turn ${turn} of ${names[i]}`);
        assert.equal(r.rehydrated, turn > 0);
      }
    }
    assert.equal(await counterValue(h.metrics, "torpor_runtime_context_handovers_total"), 5);
    assert.equal(await counterValue(ref.metrics, "torpor_runtime_context_handovers_total"), 0);
    assert.equal(h.manager.residentCount, 1);
  });

  it("spare contexts: a cold rehydrate loads into one allocated ahead, the pool refills it, within the budget", async () => {
    const h = await harness({ spareContexts: 1, contextGraceMs: 0 });
    const ref = await harness();
    assert.equal(await h.manager.replenishSpares(), 1, "allocated at start");
    assert.deepEqual(h.manager.pool.counts(), { leased: 0, idle: 1 });
    const [s, never] = await Promise.all([h.manager.register({ namespace: "default", name: "cold" }), ref.manager.register({ namespace: "default", name: "cold" })]);
    assert.equal((await s.submit("Remember the number 7.", greedy(6))).text, (await never.submit("Remember the number 7.", greedy(6))).text);
    await h.manager.replenishSpares(); // waits for the refill the session started
    assert.deepEqual(h.manager.pool.counts(), { leased: 1, idle: 1 }, "the first session took the spare; another was made");
    await s.hibernate("test");
    assert.deepEqual(h.manager.pool.counts(), { leased: 0, idle: 1 }, "grace 0: the hibernated session's context is freed, one spare stays");
    const reusesBefore = await counterValue(h.metrics, "torpor_runtime_context_reuses_total");
    const w = await s.warm();
    assert.equal(w.rehydrated, true);
    assert.equal(await counterValue(h.metrics, "torpor_runtime_context_reuses_total"), reusesBefore + 1, "the rehydrate took the spare");
    assert.equal((await s.submit("What number?", greedy(6))).text, (await never.submit("What number?", greedy(6))).text, "continues exactly");
    // Another size does not fit a spare: it gets a context of its own.
    await h.manager.replenishSpares();
    const big = await h.manager.register({ namespace: "default", name: "big", contextSize: 2048 });
    await big.submit("hi", greedy(2));
    assert.deepEqual(h.manager.pool.counts(), { leased: 2, idle: 1 });
    assert.equal(await counterValue(h.metrics, "torpor_runtime_spare_contexts_allocated_total"), 3, "at start, after the first request, after the rehydrate");

    // A budget with room for one context and a half: the spare never takes a session's room.
    const one = await h.host.estimateContextCost(1024, 1);
    const tight = await harness({ spareContexts: 2, contextGraceMs: 0, memoryBudget: { ram: Math.floor(one.ram * 1.5), vram: one.vram ? Math.floor(one.vram * 1.5) : 0 } });
    assert.equal(await tight.manager.replenishSpares(), 1, "only as many spares as the budget holds");
    const t = await tight.manager.register({ namespace: "default", name: "t" });
    await t.submit("hi", greedy(2));
    assert.equal(await tight.manager.replenishSpares(), 0, "no room for another spare beside the session");
    assert.deepEqual(tight.manager.pool.counts(), { leased: 1, idle: 0 });
    // Its hibernate leaves its context as the spare (grace 0 or not): nothing to free, nothing to allocate.
    await t.hibernate("test");
    await tight.manager.replenishSpares();
    assert.deepEqual(tight.manager.pool.counts(), { leased: 0, idle: 1 });
    assert.equal(await counterValue(tight.metrics, "torpor_runtime_spare_contexts_allocated_total"), 1);
  });

  it("frees the evicted context instead when the sizes differ, or when handover is off", async () => {
    for (const [opts, sizes] of [[{}, [512, 1024]], [{ contextHandover: false }, [1024, 1024]]] as const) {
      const h = await harness({ maxResident: 1, ...opts });
      const [a, b] = await Promise.all(sizes.map((contextSize, i) => h.manager.register({ namespace: "default", name: `size-${i}`, contextSize })));
      await a!.submit("one", greedy(2));
      await b!.submit("two", greedy(2));
      assert.equal((await a!.submit("one again", greedy(2))).rehydrated, true);
      assert.equal(await counterValue(h.metrics, "torpor_runtime_context_handovers_total"), 0);
      assert.equal(await counterValue(h.metrics, "torpor_runtime_evictions_total"), 2);
    }
  });

  it("keeps the estimated memory of resident contexts within the budget", async () => {
    const probe = await harness();
    const perContext = (await probe.host.estimateContextCost(1024)).ram;
    assert.ok(perContext > 0);
    const h = await harness({ maxResident: 8, memoryBudget: { ram: Math.floor(perContext * 2.5), vram: 0 } });
    const [a] = await turnsInOrder(h, ["ma", "mb", "mc"]);
    assert.equal(a!.residency, "Hibernated", "the least recently used session makes room under the budget");
    assert.equal(h.manager.residentCount, 2);
    const huge = await h.manager.register({ namespace: "default", name: "huge", contextSize: 8192 });
    const idleSince = huge.status().lastActivity;
    h.clock.advance(5000);
    await assert.rejects(huge.submit("hi", greedy(1)), (e: TorporError) => e.code === "capacity_exhausted" && /whole RAM budget/.test(e.message));
    assert.equal(huge.status().lastActivity, idleSince, "a wake that failed, leaving nothing in memory, is not activity");
  });

  it("when an allocation fails though the estimate fitted (a fragmented card), hibernates the LRU idle session and retries", async () => {
    let pool: { counts(): { leased: number; idle: number } } | undefined;
    let refused = 0;
    // A card with room for one context, whatever the estimates say.
    const oneFits = (host: ModelHost) => Object.create(host, {
      createContext: {
        value: async (size: number, sequences?: number) => {
          const c = pool!.counts();
          if (c.leased + c.idle >= 1) { refused++; throw new TorporError("capacity_exhausted", "cannot allocate a context: simulated cudaMalloc failure"); }
          return host.createContext(size, sequences);
        },
      },
    }) as ModelHost;
    const h = await harness({ maxResident: 8 }, undefined, undefined, oneFits);
    pool = h.manager.pool;
    const a = await h.manager.register({ namespace: "default", name: "frag-a" });
    const b = await h.manager.register({ namespace: "default", name: "frag-b" });
    await a.submit("one", greedy(2));
    const rb = await b.submit("two", greedy(2));
    assert.equal(rb.created, true, "the second session is served, not refused");
    assert.equal(refused, 1);
    assert.equal(a.residency, "Hibernated");
    assert.equal(await counterValue(h.metrics, "torpor_runtime_evictions_total"), 1);
    assert.equal((await a.submit("back", greedy(2))).rehydrated, true, "and the evicted one comes back, evicting in turn");
    assert.equal(b.residency, "Hibernated");
  });

  it("counts VRAM apart from RAM: a full card makes room though RAM has plenty left", async () => {
    const GiB = 2 ** 30;
    // What node-llama-cpp estimates on a GPU: the KV cache in VRAM, a little host RAM per context.
    const onGpu = (host: ModelHost) =>
      Object.create(host, { estimateContextCost: { value: async () => ({ ram: 64 * 2 ** 20, vram: 2 * GiB }) } }) as ModelHost;
    const h = await harness({ maxResident: 8, memoryBudget: { ram: 100 * GiB, vram: 5 * GiB } }, undefined, undefined, onGpu);
    const [a, b] = await turnsInOrder(h, ["va", "vb", "vc"]);
    assert.equal(a!.residency, "Hibernated", "two contexts of 2 GiB fill a 5 GiB card: the least recently used makes room");
    assert.equal(h.manager.residentCount, 2);
    assert.equal(await a!.submit("back", greedy(2)).then((r) => r.rehydrated), true);
    assert.equal(b!.residency, "Hibernated");

    // The same contexts against a RAM budget alone: 64 MiB each, all three stay resident.
    const ramOnly = await harness({ maxResident: 8, memoryBudget: { ram: 1 * GiB, vram: 0 } }, undefined, undefined, onGpu);
    await turnsInOrder(ramOnly, ["ra", "rb", "rc"]);
    assert.equal(ramOnly.manager.residentCount, 3);

    const small = await harness({ memoryBudget: { ram: 0, vram: 1 * GiB } }, undefined, undefined, onGpu);
    const big = await small.manager.register({ namespace: "default", name: "big", contextSize: 1024 });
    await assert.rejects(big.submit("hi", greedy(1)), (e: TorporError) => e.code === "capacity_exhausted" && /whole VRAM budget/.test(e.message) && /2048 MiB of VRAM/.test(e.message));
  });

  it("never evicts a session that is generating", async () => {
    const h = await harness({ maxResident: 1, admissionTimeoutMs: 60_000 });
    const a = await h.manager.register({ namespace: "default", name: "gen-a" });
    const b = await h.manager.register({ namespace: "default", name: "gen-b" });
    await a.submit("warm", greedy(2));
    const long = a.submit("long", greedy(80));
    await new Promise((r) => setTimeout(r, 5));
    const rb = await b.submit("hello", greedy(2));
    const ra = await long;
    assert.equal(ra.completionTokens, 80);
    assert.equal(rb.created, true);
    assert.equal(a.residency, "Hibernated");
  });

  it("gives a waiting session a slot when the resident one never goes idle (time-slicing between turns)", async () => {
    const h = await harness({ maxResident: 1, preemptAfterMs: 200, admissionTimeoutMs: 20_000 });
    const hog = await h.manager.register({ namespace: "default", name: "hog", contextSize: 4096 });
    const other = await h.manager.register({ namespace: "default", name: "starved" });
    await hog.submit("start", greedy(2));
    // Two clients keep a request queued on the hog at all times: it is never idle.
    let stop = false, hogTurns = 0;
    const clients = [0, 1].map(async (c) => { while (!stop) { await hog.submit(`client ${c}`, greedy(3)); hogTurns++; } });
    await new Promise((r) => setTimeout(r, 50));
    const r = await other.submit("my turn?", greedy(2));
    stop = true;
    await Promise.all(clients);
    assert.equal(r.created, true);
    assert.ok(await counterValue(h.metrics, "torpor_runtime_evictions_total") >= 1);
    const hist = hog.messages().filter((m) => m.type === "user").length;
    assert.equal(hist, hogTurns + 1, "every turn of the preempted session is in its history, once");
  });

  it("hibernates sessions idle longer than the policy (injected clock)", async () => {
    const h = await harness({ idleAfterMs: 60_000 });
    const s = await h.manager.register({ namespace: "default", name: "idle" });
    const custom = await h.manager.register({ namespace: "default", name: "idle-custom", idleAfterMs: 600_000 });
    await s.submit("hi", greedy(2));
    await custom.submit("hi", greedy(2));
    h.clock.advance(59_000);
    assert.equal(await h.manager.sweepIdle(), 0);
    h.clock.advance(2_000);
    assert.equal(await h.manager.sweepIdle(), 1);
    assert.equal(s.residency, "Hibernated");
    assert.equal(custom.residency, "InMemory");
  });

  it("delete disposes the context and removes the files", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "gone" });
    await s.submit("hi", greedy(2));
    await s.hibernate("test");
    await h.manager.remove("default", "gone");
    assert.deepEqual(await readdir(path.join(h.dir, "default")), []);
    assert.equal(h.manager.residentCount, 0);
    assert.throws(() => h.manager.get("default", "gone"), (e: TorporError) => e.code === "session_not_found");
  });

  it("deleting a session stops the generation under way: the caller is told, the deletion does not wait for max_tokens", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "cut-short", contextSize: 4096 });
    let chunks = 0;
    let first!: () => void;
    const started = new Promise<void>((r) => { first = r; });
    const answer = s.submit("Write a very long story.", { ...greedy(3000), onText: () => { if (++chunks === 1) first(); } });
    await started;
    await h.manager.remove("default", "cut-short");
    await assert.rejects(answer, (e: unknown) => e instanceof TorporError && e.code === "session_deleted" && /deleted while it was generating/.test(e.message));
    assert.ok(chunks < 1000, `stopped early (${chunks} chunks of up to 3000 tokens)`);
    assert.equal(h.manager.residentCount, 0);
    assert.deepEqual(await readdir(path.join(h.dir, "default")).catch(() => []), []);
  });

  it("a session moved to a newer placement stops generating here: its caller is told to send the turn again", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "moved-away", contextSize: 4096, epoch: 3 });
    let chunks = 0;
    let first!: () => void;
    const started = new Promise<void>((r) => { first = r; });
    const answer = s.submit("Write a very long story.", { ...greedy(3000), onText: () => { if (++chunks === 1) first(); } });
    await started;
    assert.equal(await h.manager.drop("default", "moved-away", 4), true);
    await assert.rejects(answer, (e: unknown) => e instanceof TorporError && e.code === "stale_epoch" && /send the turn again/.test(e.message));
    assert.ok(chunks < 1000, `stopped early (${chunks} chunks of up to 3000 tokens)`);
    assert.equal(h.manager.residentCount, 0);
  });

  it("stopped before its first token (still reading the prompt), a generation says why it stopped", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "early-stop", contextSize: 4096 });
    const answer = s.submit("word ".repeat(600), { ...greedy(100), onText: () => undefined });
    for (const end = performance.now() + 10_000; s.phase !== "Generating" && performance.now() < end;) await new Promise((r) => setImmediate(r));
    assert.equal(s.phase, "Generating");
    s.stopForShutdown();
    await assert.rejects(answer, (e: unknown) => e instanceof TorporError && e.code === "shutting_down");
  });

  it("writes hibernation files owner-only", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "perm" });
    await s.submit("hi", greedy(2));
    const out = await s.hibernate("test");
    assert.equal((await stat(out.record!.manifestFile)).mode & 0o777, 0o600);
    assert.equal((await stat(out.record!.stateFile)).mode & 0o777, 0o600);
    assert.equal((await stat(path.join(h.dir, "default"))).mode & 0o777, 0o700);
  });
});

describe("context pool", () => {
  it("shares one context among sessions (one decode batch), and a state saved there rehydrates on a runtime of another shape", async () => {
    const shared = await harness({ sequencesPerContext: 4, contextGraceMs: 60_000 });
    const twin = await harness({ sequencesPerContext: 1 });
    const prompt = "Tell me about the weather.";
    const sessions = await Promise.all(["a", "b", "c"].map((n) => shared.manager.register({ namespace: "default", name: n })));
    const ref = await twin.manager.register({ namespace: "default", name: "ref" });
    const outs = await Promise.all(sessions.map((s) => s.submit(prompt, greedy(12))));
    const expected = await ref.submit(prompt, greedy(12));
    for (const o of outs) assert.equal(o.text, expected.text, "a sequence of a shared context answers like a context of its own");
    assert.deepEqual(shared.manager.pool.counts(), { leased: 1, idle: 0 }, "three sessions, one context");

    // Saved from a 4-sequence context; the manifest says so, and a 1-sequence runtime allocates that shape.
    await sessions[0]!.hibernate("test");
    const copy = await harness({ sequencesPerContext: 1 }, shared.dir);
    const again = await copy.manager.register({ namespace: "default", name: "a" });
    const next = await again.submit("And tomorrow?", greedy(12));
    const refNext = await ref.submit("And tomorrow?", greedy(12));
    assert.equal(next.rehydrated, true);
    assert.equal(next.text, refNext.text, "greedy output after the move equals the twin's");
    assert.ok(next.cachedTokens > 0, "the restored tokens were reused, not replayed");
    assert.equal(await counterValue(copy.metrics, "torpor_runtime_state_replays_total"), 0);
  });

  it("batch composition: the sessions of a shared context decode in sequence order, and with gathering all join each step", async () => {
    // Each decode's batch, as node-llama-cpp made it (testbed/decode-batches.ts).
    const run = async (gatherBatches: boolean, sampling: { temperature: number; seed?: number } = { temperature: 0 }) => {
      const log: number[] = [], orders: number[][] = [], sampled: number[] = [];
      const h = await harness({ sequencesPerContext: 4, gatherBatches }, undefined, undefined, (host) => recordingDecodeBatches(host, log, undefined, orders, sampled));
      const sessions = await Promise.all(["a", "b", "c", "d"].map((n) => h.manager.register({ namespace: "default", name: n })));
      // Made resident one after another, so a to d hold sequences 0 to 3 (no decode yet).
      for (const s of sessions) await s.warm();
      const outs = await Promise.all(sessions.map((s, i) => s.submit(`Tell me about day ${i}.`, { ...greedy(16), ...sampling })));
      // A session that leaves gives its sequence back; the next one takes the lowest kept id:
      // b's 1, not c's 2 (returned last).
      await sessions[1]!.hibernate("test");
      await sessions[2]!.hibernate("test");
      const e = await h.manager.register({ namespace: "default", name: "e" });
      const moreLog = log.length, moreSampled = sampled.length;
      await Promise.all([sessions[0]!.submit("And then?", greedy(6)), e.submit("Hello.", greedy(6)), sessions[3]!.submit("And then?", greedy(6))]);
      return { texts: outs.map((o) => o.text), tokens: outs.map((o) => o.completionTokens), decodes: log.slice(0, moreLog), orders, laterOrders: orders.slice(moreLog), sampled: sampled.slice(0, moreSampled) };
    };
    const plain = await run(false);
    const gathered = await run(true);
    assert.deepEqual(gathered.texts, plain.texts, "gathering changes when a batch runs, never what it computes");
    // llama.cpp decodes in one compute only sequences whose ids follow each other in batch order.
    for (const r of [plain, gathered]) {
      for (const o of r.orders) assert.deepEqual(o, [...o].sort((a, b) => a - b), `batch in sequence order: ${JSON.stringify(r.orders)}`);
      assert.ok(r.laterOrders.some((o) => o.includes(1)) && !r.laterOrders.some((o) => o.includes(2)), `the new session took the lowest kept id: ${JSON.stringify(r.laterOrders)}`);
    }
    assert.ok(gathered.laterOrders.some((o) => o.length === 3), `three sessions in one batch: ${JSON.stringify(gathered.laterOrders)}`);
    const steps = Math.max(...gathered.tokens);
    // One decode for the four prompts, then one per step while all four generate.
    assert.ok(gathered.decodes.length <= steps + 1, `${gathered.decodes.length} decodes for ${steps} steps: ${gathered.decodes.join(",")}`);
    assert.ok(gathered.decodes.slice(1, Math.min(...gathered.tokens)).every((n) => n === 4), `each step carries all four: ${gathered.decodes.join(",")}`);
    // Greedy tokens come off the logits a batch at a time (greedy-sampling.ts): four at a time while
    // all four generate. If none does, node-llama-cpp stopped calling sampleToken as the hook expects.
    for (const r of [plain, gathered]) assert.ok(r.sampled.filter((n) => n === 4).length >= Math.min(...r.tokens) - 1, `greedy batches: ${r.sampled.join(",")}`);
    // Why gathering exists: sampled by node-llama-cpp (a temperature), each sequence's token comes
    // back on its own, and node-llama-cpp alone leaves a sequence out of most steps. If this stops
    // failing to batch, node-llama-cpp fixed it and the gathering in batch-composition.ts can go.
    const hot = { temperature: 0.8, seed: 7 };
    const [plainHot, gatheredHot] = [await run(false, hot), await run(true, hot)];
    assert.ok(plainHot.decodes.length > gatheredHot.decodes.length, `without gathering: ${plainHot.decodes.join(",")}; with: ${gatheredHot.decodes.join(",")}`);
    assert.deepEqual(gatheredHot.sampled, [], "sampled by node-llama-cpp");
  });

  it("records flash attention with the state: a state is restored with the setting it was saved with, whatever the runtime's now", async () => {
    // Found on the testbed: a rolling update to a runtime with another setting could not load any
    // saved state (llama.cpp keeps V transposed without flash attention) and replayed every session.
    const auto = await harness();
    assert.equal(auto.host.flashAttention, "auto", "node-llama-cpp's default: llama.cpp decides");
    // A runtime on the same volume told `fa` (the shared host is "auto").
    const runtime = (fa: "auto" | boolean) => fa === "auto" ? harness({}, auto.dir)
      : harness({}, auto.dir, undefined, (host) => Object.create(host, { flashAttention: { value: fa } }) as ModelHost);
    const manifest = async (name: string) => JSON.parse(await readFile(path.join(auto.dir, "default", `${name}.torpor.json`), "utf8")) as { flashAttention?: boolean };
    const prompt = "Tell me about the weather.", next = "And tomorrow?";
    // Saved under "auto" (as every file before the setting existed) and restored on a runtime told
    // "off"; saved with it off and restored on one left at "auto" (which turns it on here); on -> off.
    const cases: Array<["auto" | boolean, "auto" | boolean]> = [["auto", false], [false, "auto"], [true, false]];
    for (const [i, [saveWith, restoreWith]] of cases.entries()) {
      const label = `${saveWith} -> ${restoreWith}`;
      const saver = await runtime(saveWith);
      const s = await saver.manager.register({ namespace: "default", name: `fa-${i}` });
      const twin = await saver.manager.register({ namespace: "default", name: `fa-${i}-twin` });
      await s.submit(prompt, greedy(12));
      await twin.submit(prompt, greedy(12));
      await s.hibernate("test");
      assert.equal((await manifest(`fa-${i}`)).flashAttention, saveWith === "auto" ? undefined : saveWith, label);
      const restorer = await runtime(restoreWith);
      const r = await (await restorer.manager.register({ namespace: "default", name: `fa-${i}` })).submit(next, greedy(12));
      assert.equal(r.rehydrated, true, label);
      assert.ok(r.cachedTokens > 0, `${label}: restored, not replayed`);
      assert.equal(r.text, (await twin.submit(next, greedy(12))).text, `${label}: greedy output equals the twin's that never moved`);
      assert.equal(await counterValue(restorer.metrics, "torpor_runtime_state_replays_total"), 0, label);
    }
  });

  it("keeps an emptied context for the grace and gives it to the next rehydrate; a tight budget frees kept contexts before evicting anyone", async () => {
    const h = await harness({ contextGraceMs: 60_000 });
    const s = await h.manager.register({ namespace: "default", name: "kept" });
    await s.submit("hello", greedy(4));
    await s.hibernate("test");
    assert.deepEqual(h.manager.pool.counts(), { leased: 0, idle: 1 });
    const r = await s.submit("again", greedy(4));
    assert.equal(r.rehydrated, true);
    assert.equal(await counterValue(h.metrics, "torpor_runtime_context_reuses_total"), 1);
    assert.deepEqual(h.manager.pool.counts(), { leased: 1, idle: 0 });

    // Room for a 2048 context, not for it and a kept 1024 one: the kept one goes, nobody is evicted.
    const small = (await h.host.estimateContextCost(1024)).ram, large = (await h.host.estimateContextCost(2048)).ram;
    const tight = await harness({ contextGraceMs: 60_000, memoryBudget: { ram: Math.ceil(large + small / 2), vram: 0 } });
    const big = await tight.manager.register({ namespace: "default", name: "big", contextSize: 1024 });
    await big.submit("hello", greedy(4));
    await big.hibernate("test");
    assert.deepEqual(tight.manager.pool.counts(), { leased: 0, idle: 1 });
    const other = await tight.manager.register({ namespace: "default", name: "other", contextSize: 2048 });
    assert.equal((await other.submit("hello", greedy(4))).created, true);
    assert.equal(tight.manager.pool.counts().idle, 0, "the kept context was freed for the new one");
    assert.equal(await counterValue(tight.metrics, "torpor_runtime_evictions_total"), 0);
  });
});

describe("shutdown", () => {
  it("saves a session that a request queued behind an eviction made resident again (found in a helm upgrade)", async () => {
    const h = await harness({ maxResident: 1, contextHandover: true });
    const a = await h.manager.register({ namespace: "default", name: "a" });
    const b = await h.manager.register({ namespace: "default", name: "b" });
    await a.submit("first turn of a", greedy(4));
    // b needs a's slot: a is evicted; while that save runs, a request for a queues behind it.
    const bTurn = b.submit("first turn of b", greedy(4));
    // Polled every event-loop turn (the save spans many), for up to 10 s. A count of 5,000 turns ran
    // out once in the full suite before the eviction had started.
    for (const end = performance.now() + 10_000; a.phase !== "Hibernating" && performance.now() < end;) await new Promise((r) => setImmediate(r));
    assert.equal(a.phase, "Hibernating");
    const aTurn = a.submit("second turn of a", greedy(4));
    const down = await h.manager.shutdown();
    await Promise.all([bTurn, aTurn]);
    assert.equal(down.failed, 0);
    assert.equal(a.residency, "Hibernated", "a was resident again after its eviction: shutdown must save it again");
    assert.equal(b.residency, "Hibernated");
    const again = await harness({}, h.dir);
    const moved = await again.manager.register({ namespace: "default", name: "a" });
    assert.equal(moved.residency, "Hibernated");
    await moved.submit("third", greedy(2));
    assert.ok(moved.messages().some((m) => m.type === "user" && m.text === "second turn of a"), "the turn answered during shutdown is in the saved conversation");
  });

  it("stops a generation still under way at the deadline, so its session is saved with the answer so far", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "long-answer", contextSize: 4096 });
    const plain = await h.manager.register({ namespace: "default", name: "not-streamed", contextSize: 4096 });
    const other = await h.manager.register({ namespace: "default", name: "idle" });
    await other.submit("hello", greedy(2));
    await plain.submit("hello", greedy(2));
    let chunks = 0;
    let first!: () => void;
    const started = new Promise<void>((r) => { first = r; });
    const answer = s.submit("Write a very long story.", { ...greedy(3000), onText: () => { if (++chunks === 1) first(); } });
    const unstreamed = plain.submit("Write a very long poem.", greedy(3000));
    await started;
    const down = await h.manager.shutdown(300);
    await assert.rejects(answer, (e: unknown) => e instanceof TorporError && e.code === "shutting_down" && /conversation up to this point is saved/.test(e.message));
    // Its caller got nothing: the turn is not kept, so sending it again does not ask it twice.
    await assert.rejects(unstreamed, (e: unknown) => e instanceof TorporError && e.code === "shutting_down" && /turn is not kept/.test(e.message));
    assert.deepEqual(plain.messages().map((m) => m.type), ["user", "model"]);
    assert.ok(chunks < 1000, `stopped at the deadline (${chunks} chunks of up to 3000 tokens)`);
    assert.deepEqual(down, { hibernated: 3, failed: 0 });
    // Another pod takes it over with the answer so far: the next turn continues after it.
    const again = await harness({}, h.dir);
    const moved = await again.manager.register({ namespace: "default", name: "long-answer" });
    assert.equal(moved.residency, "Hibernated");
    const r = await moved.submit("Go on.", greedy(2));
    assert.equal(r.rehydrated, true);
    const said = moved.messages().find((m) => m.type === "model");
    assert.ok(said && said.type === "model" && String(said.response[0]).length > 0, "the partial answer is in the saved conversation");
  });
});

describe("threads", () => {
  it("left to choose (TORPOR_THREADS=0, the chart's default), contexts use the CPUs the container may use, all together too", async () => {
    // node-llama-cpp alone ran 4 threads per context on this 2-core machine: 16 tokens took 3.5 s
    // instead of 28 ms, every thread waiting at spin barriers for one without a CPU.
    const host = await ModelHost.load({ model: await smallModel(), modelCacheDir: "", gpu: false, gpuLayers: 0, threads: 0 });
    try {
      const cpus = await cpuAllowance();
      assert.equal(host.threads, cpus);
      assert.equal(host.llama.maxThreads, cpus, "contexts decoding at once share the same CPUs");
      const context = await host.createContext(256);
      assert.equal(context.idealThreads, cpus);
      await context.dispose();
    } finally {
      await host.dispose();
    }
  });
});

describe("context pool under a budget", () => {
  it("a rehydrate within the grace reuses the kept context even when the budget has room for only one", async () => {
    const host = (await harness()).host;
    const one = (await host.estimateContextCost(1024)).ram;
    const h = await harness({ contextGraceMs: 60_000, memoryBudget: { ram: Math.ceil(one * 1.2), vram: 0 } });
    const s = await h.manager.register({ namespace: "default", name: "tight" });
    await s.submit("hello", greedy(4));
    await s.hibernate("test");
    assert.equal((await s.submit("again", greedy(4))).rehydrated, true);
    assert.equal(await counterValue(h.metrics, "torpor_runtime_context_reuses_total"), 1, "the kept context was reused, not freed for a new one");
  });
});

describe("architectures beyond llama", () => {
  // A conversation of ~700 tokens: far past the 64-token sliding window, so the restored state is
  // the trimmed window cache and not a full one.
  const long = Array.from({ length: 30 }, (_, i) => `Item ${i} is on shelf ${i % 7}.`).join(" ");
  for (const [label, model] of [["sliding-window attention (gemma2)", swaModel], ["a recurrent state-space model (mamba2)", recurrentModel]] as const) {
    it(`${label}: greedy continuation after a rehydrate equals a twin's, with every restored token reused`, async () => {
      const h = await harness({}, undefined, model);
      const s = await h.manager.register({ namespace: "default", name: "arch", contextSize: 1024 });
      const twin = await h.manager.register({ namespace: "default", name: "arch-twin", contextSize: 1024 });
      assert.equal((await s.submit(long, greedy(16))).text, (await twin.submit(long, greedy(16))).text);
      await s.hibernate("test");
      assert.equal(s.residency, "Hibernated");
      for (const turn of ["Where is item 3?", "And item 12?"]) {
        const a = await s.submit(turn, greedy(16));
        assert.equal(a.text, (await twin.submit(turn, greedy(16))).text, `"${turn}" diverged after the rehydrate`);
      }
      const r = s.status().lastRehydrate!;
      assert.ok(r.tokenCount > 64, `the state holds ${r.tokenCount} tokens, more than the window`);
      assert.equal(r.reusedTokens, r.tokenCount, "every restored token reused, none evaluated again");
      assert.equal(r.restoreVerified, true);
      assert.equal(await counterValue(h.metrics, "torpor_runtime_state_replays_total"), 0);
    });
  }
});
