// Greedy turns in the context's native decode loop (runtime/model/decode-loop.ts,
// runtime/sessions/loop-turn.ts, runtime/native/AddonContextDecodeLoop.cpp): the same answers,
// tokens and reuse as node-llama-cpp's LlamaChat, on the real model and on a random-weight one;
// sessions sharing a context alongside hibernates, sampled turns and callers that hang up.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { GenerateOptions } from "../../contract/runtime-api.js";
import { ModelHost } from "../../runtime/model/model-host.js";
import type { Session } from "../../runtime/sessions/session.js";
import { loopable } from "../../runtime/sessions/loop-turn.js";
import { greedy, harness, sharedHost } from "../helpers/in-process-runtime.js";
import { addonBuildable } from "../helpers/runtime-addon.js";
import { realModel, smallModel, swaModel } from "../../testbed/models.js";

/** The shared host with greedy turns left to LlamaChat. */
const withoutLoop = (host: ModelHost): ModelHost => Object.create(host, { decodeLoop: { value: { ok: false, reason: "test: LlamaChat" } } }) as ModelHost;

interface Seen { text: string; streamed: string; finishReason: string; completionTokens: number; cachedTokens: number; tokenCount: number }

/** Four sessions on one context answering the same turns at once; what each turn gave. */
async function conversation(model: () => Promise<string>, loop: boolean, turns: Array<(i: number) => [string, GenerateOptions]>): Promise<Seen[][]> {
  const h = await harness({ sequencesPerContext: 4, gatherBatches: true }, undefined, model, loop ? undefined : withoutLoop);
  const sessions = await Promise.all([0, 1, 2, 3].map((i) => h.manager.register({ namespace: "default", name: `s${i}`, contextSize: 2048 })));
  for (const s of sessions) await s.warm();
  const seen: Seen[][] = [];
  for (const turn of turns) {
    seen.push(await Promise.all(sessions.map(async (s, i) => {
      const [prompt, opts] = turn(i);
      let streamed = "";
      const r = await s.submit(prompt, { ...opts, onText: (t) => { streamed += t; } });
      return { text: r.text, streamed, finishReason: r.finishReason, completionTokens: r.completionTokens, cachedTokens: r.cachedTokens, tokenCount: s.status().tokenCount };
    })));
  }
  await h.manager.close();
  return seen;
}

describe("decode loop", () => {
  for (const [label, model] of [["SmolLM2", realModel], ["random-weight fixture", smallModel]] as const) {
    it(`answers greedy turns as LlamaChat does: text, stop strings, streaming, reuse, tokens held (${label})`, async (t) => {
      if (!addonBuildable) return t.skip("the runtime addon is not built here");
      assert.deepEqual((await sharedHost(model)).decodeLoop, { ok: true });
      // The second turn of the second session stops at a stop string picked from its answer
      // without one; the rest run to the token limit or the model's end of turn.
      const first = (i: number): [string, GenerateOptions] => [`Tell me about lighthouse number ${i}.`, greedy(40)];
      const plain = await conversation(model, false, [first, () => ["And then?", greedy(24)]]);
      const stopAt = plain[1]![1]!.text.slice(12, 15);
      const turns: Array<(i: number) => [string, GenerateOptions]> = [
        first,
        (i) => ["And then?", { ...greedy(24), ...(i === 1 ? { stop: ["never-here", stopAt] } : {}) }],
        (i) => [`Thank you, number ${i}. Say goodbye.`, greedy(i * 8 + 1)],
      ];
      const chat = await conversation(model, false, turns);
      const loop = await conversation(model, true, turns);
      // Stopped by a stop string, the loop counts the tokens that made the stop string (as
      // llama-server's tokens_predicted does; LlamaChat counts those whose text it kept), and has
      // decoded the one that completed it (the next step was under way when the text showed it):
      // a token more held, which the next turn's prompt drops (it ends where the answer was cut).
      const [l, c] = [loop[1]![1]!, chat[1]![1]!];
      assert.ok(l.tokenCount - c.tokenCount >= 0 && l.tokenCount - c.tokenCount <= stopAt.length + 1, `${l.tokenCount} tokens held against ${c.tokenCount}`);
      assert.ok(l.completionTokens >= c.completionTokens && l.completionTokens <= c.completionTokens + stopAt.length, `${l.completionTokens} tokens counted against ${c.completionTokens}`);
      [l.tokenCount, l.completionTokens] = [c.tokenCount, c.completionTokens];
      assert.deepEqual(loop, chat);
      assert.equal(loop[1]![1]!.finishReason, "stop");
      assert.ok(!loop[1]![1]!.text.includes(stopAt) && loop[1]![1]!.completionTokens < 24, `stopped before ${JSON.stringify(stopAt)}`);
      for (const turn of loop) for (const s of turn) assert.equal(s.streamed, s.text, "what was streamed is the answer");
      assert.ok(loop[2]!.every((s) => s.cachedTokens > 0), "later turns reuse the sequence's tokens");
    });
  }

  it("lets a hibernate and a sampled turn of the same context in between steps, and continues exactly", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    const h = await harness({ sequencesPerContext: 4, gatherBatches: true });
    const [a, b, c, d] = await Promise.all(["a", "b", "c", "d"].map((n) => h.manager.register({ namespace: "default", name: n, contextSize: 2048 })));
    const twin = await (await harness({ sequencesPerContext: 4 })).manager.register({ namespace: "default", name: "twin", contextSize: 2048 });
    for (const s of [a!, b!, c!, d!]) await s.warm();
    await d!.submit("Remember the number seven.", greedy(8));
    await twin.submit("Remember the number seven.", greedy(8));
    // a and b generate long answers in the loop while d hibernates and c samples with a temperature.
    const long = Promise.all([a!, b!].map((s, i) => s.submit(`A long story, number ${i}.`, greedy(1000))));
    await untilGenerating([a!, b!]);
    const [hib, sampled] = await Promise.all([d!.hibernate("test"), c!.submit("Pick a word.", { maxTokens: 8, temperature: 0.9, seed: 5 })]);
    assert.equal(hib.outcome, "hibernated");
    assert.ok(sampled.completionTokens > 0);
    assert.ok([a!, b!].some((s) => s.status().phase === "Generating"), "the hibernate and the sampled turn did not wait for the long answers");
    assert.ok((await long).every((r) => r.completionTokens === 1000));
    // d rehydrates and goes on as its twin that never slept.
    const next = await d!.submit("Which number?", greedy(16));
    assert.equal(next.rehydrated, true);
    assert.equal(next.text, (await twin.submit("Which number?", greedy(16))).text);
  });

  it("a sampled turn sharing a context with a greedy one takes turns with it step by step, not a token a run", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    const h = await harness({ sequencesPerContext: 2, gatherBatches: true });
    const [greedyOne, sampledOne] = await Promise.all(["greedy", "sampled"].map((n) => h.manager.register({ namespace: "default", name: n, contextSize: 4096 })));
    for (const s of [greedyOne!, sampledOne!]) await s.warm();
    const long = greedyOne!.submit("A very long story.", greedy(3000));
    await untilGenerating([greedyOne!]);
    const from = greedyOne!.status().tokenCount;
    const sampled = await sampledOne!.submit("Pick some words.", { maxTokens: 60, temperature: 0.8, seed: 3 });
    const steps = greedyOne!.status().tokenCount - from;
    assert.equal(sampled.completionTokens, 60);
    // Waiting a whole run (16 steps) for each of its tokens, the sampled turn would see the greedy
    // one take 16 steps a token; let in by node-llama-cpp's dispatch and left there, it would hold
    // the context to its end (the greedy turn stopped, about a run's steps in all).
    assert.ok(steps >= 60 / 2 && steps < 60 * 4, `the greedy turn took ${steps} steps while the sampled one took 60`);
    assert.equal(greedyOne!.status().phase, "Generating");
    await h.manager.remove("default", "greedy");
    await long.catch(() => undefined);
  });

  it("contexts running at once share the process's CPU threads, as node-llama-cpp's decodes do", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    // Two threads a context, two for the process: two loops at full width would oversubscribe the
    // cores, and ggml's spinning barriers then wait on preempted threads (20x slower here).
    const host = await ModelHost.load({ model: await smallModel(), modelCacheDir: "", gpu: false, gpuLayers: 0, threads: 2 });
    const running = new Map<object, number>();
    let widest = 0, runs = 0;
    const watched = Object.create(host, { createContext: { value: async (...a: Parameters<ModelHost["createContext"]>) => {
      const context = await host.createContext(...a);
      const native = (context as unknown as { _ctx: Record<string, (...x: unknown[]) => unknown> })._ctx;
      let threads = host.threads;
      const setThreads = native.setThreads!.bind(native), run = native.decodeLoopRun!.bind(native);
      Object.defineProperty(native, "setThreads", { value: (n: number) => { threads = n; return setThreads(n); } });
      Object.defineProperty(native, "decodeLoopRun", { value: (...x: unknown[]) => {
        runs++;
        running.set(native, threads);
        widest = Math.max(widest, [...running.values()].reduce((sum, n) => sum + n, 0));
        return (run(...x) as Promise<number>).finally(() => running.delete(native));
      } });
      return context;
    } } }) as ModelHost;
    try {
      const h = await harness({ sequencesPerContext: 1 }, undefined, undefined, () => watched);
      const sessions = await Promise.all(["x", "y"].map((n) => h.manager.register({ namespace: "default", name: n })));
      for (const s of sessions) await s.warm();
      const answers = await Promise.all(sessions.map((s, i) => s.submit(`A story, number ${i}.`, greedy(200))));
      assert.ok(answers.every((r) => r.completionTokens === 200));
      assert.ok(runs >= 2 * Math.ceil(200 / 16), `${runs} runs`);
      assert.ok(widest <= host.llama.maxThreads, `at most ${host.llama.maxThreads} threads at once, saw ${widest}`);
      await h.manager.close();
    } finally {
      await host.model.dispose();
      await host.llama.dispose();
    }
  });

  it("a caller that hangs up stops its turn at the next step; the sequence holds what was decoded and the next turn reuses it", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    const h = await harness({ sequencesPerContext: 2 });
    const s = await h.manager.register({ namespace: "default", name: "hangs-up", contextSize: 4096 });
    const other = await h.manager.register({ namespace: "default", name: "keeps-going", contextSize: 4096 });
    await s.submit("Hello.", greedy(4));
    const stop = new AbortController();
    let seen = 0;
    const otherTurn = other.submit("A long story.", greedy(200));
    const r = await s.submit("A long story.", { ...greedy(3000), signal: stop.signal, onText: () => { if (++seen === 5) stop.abort(); } });
    assert.equal(r.finishReason, "aborted");
    assert.ok(r.completionTokens >= 5 && r.completionTokens < 100, `${r.completionTokens} tokens`);
    assert.equal((await otherTurn).completionTokens, 200, "the other session of the context went on");
    const held = s.status().tokenCount;
    assert.ok(held >= r.promptTokens + r.completionTokens - 1, `${held} tokens held for ${r.promptTokens} + ${r.completionTokens}`);
    const next = await s.submit("Go on.", greedy(4));
    assert.ok(next.cachedTokens >= r.promptTokens, `reused ${next.cachedTokens} of the ${r.promptTokens}-token prompt and the answer so far`);
  });

  it("an answer that fills the context ends at its limit, and the next turn is refused with a reason", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    const h = await harness({ sequencesPerContext: 2 });
    const s = await h.manager.register({ namespace: "default", name: "full", contextSize: 256 });
    const r = await s.submit("Go on forever.", greedy(10_000));
    assert.equal(r.finishReason, "length");
    assert.equal(r.promptTokens + r.completionTokens, 256);
    await assert.rejects(s.submit("More?", greedy(4)), (e: Error & { code?: string }) => e.code === "context_length_exceeded");
  });

  it("is not used where it cannot be: sampled turns, penalties, bias, a sliding-window model", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    const host = await sharedHost(smallModel);
    const context = await host.createContext(512, 1);
    const swaHost = await sharedHost(swaModel);
    const swaContext = await swaHost.createContext(512, 1);
    try {
      const seq = context.getSequence();
      assert.ok(loopable(host, seq, greedy(4)));
      assert.equal(loopable(host, seq, { ...greedy(4), temperature: 0.5 }), undefined);
      assert.equal(loopable(host, seq, { ...greedy(4), frequencyPenalty: 0.5 }), undefined);
      assert.equal(loopable(host, seq, { ...greedy(4), logitBias: [[5, 2]] }), undefined);
      assert.equal(loopable(withoutLoop(host), seq, greedy(4)), undefined);
      assert.equal(loopable(swaHost, swaContext.getSequence(), greedy(4)), undefined, "a sliding-window cache cannot drop its tail as the loop does");
    } finally {
      await context.dispose();
      await swaContext.dispose();
    }
  });

  it("refuses a job it cannot run, before anything is queued", async (t) => {
    if (!addonBuildable) return t.skip("the runtime addon is not built here");
    const host = await sharedHost(smallModel);
    const context = await host.createContext(512, 1);
    try {
      const native = (context as unknown as { _ctx: { decodeLoopJoin(...a: unknown[]): void } })._ctx;
      const none = new Uint32Array(0);
      assert.throws(() => native.decodeLoopJoin(1, 0, 0, none, 4, none), RangeError, "no prompt token");
      assert.throws(() => native.decodeLoopJoin(1, 0, 0, Uint32Array.of(1), 600, none), RangeError, "past the context");
      assert.throws(() => native.decodeLoopJoin(1, 0, 0, Uint32Array.of(4_000_000), 4, none), RangeError, "outside the vocabulary");
      assert.throws(() => native.decodeLoopJoin("x", 0, 0, Uint32Array.of(1), 4, none), TypeError);
    } finally {
      await context.dispose();
    }
  });
});

async function untilGenerating(sessions: Session[]): Promise<void> {
  for (let i = 0; i < 500 && !sessions.every((s) => s.status().phase === "Generating" && s.status().tokenCount > 30); i++) await new Promise((r) => setTimeout(r, 5));
}
