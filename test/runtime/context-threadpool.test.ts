// Persistent CPU threads per context (runtime/native/AddonContextThreadpool.cpp): attached to every
// context the host creates where the addon is built, given back with the context, and invisible in
// what the model generates.
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import type { LlamaContext, Token } from "node-llama-cpp";
import { attachThreadpool } from "../../runtime/model/context-threadpool.js";
import { ModelHost } from "../../runtime/model/model-host.js";
import { smallModel } from "../../testbed/models.js";
import { addonBuildable } from "../helpers/runtime-addon.js";

const threadsNow = () => readdirSync("/proc/self/task").length;

async function greedyTokens(context: LlamaContext, prompt: Token[], n: number): Promise<number[]> {
  const sequence = context.getSequence();
  const out: number[] = [];
  for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
    out.push(token);
    if (out.length >= n) break;
  }
  sequence.dispose();
  return out;
}

describe("a context's persistent CPU threads", () => {
  let host: ModelHost;
  const prompt = Array.from({ length: 40 }, (_, i) => 10 + ((i * 37) % 200)) as Token[];

  // Two threads per context, so each pool has a worker thread of its own to count.
  before(async () => { host = await ModelHost.load({ model: await smallModel(), modelCacheDir: "", gpu: false, gpuLayers: 0, threads: 2 }); });
  after(async () => { await host?.model.dispose(); await host?.llama.dispose(); });

  it("are attached where the addon builds, and the host says why where not", () => {
    if (addonBuildable) assert.deepEqual(host.cpuThreadpool, { ok: true });
    else assert.ok(!host.cpuThreadpool.ok && host.cpuThreadpool.reason.length > 0);
  });

  it("live as long as their context and are given back with it", async (t) => {
    if (!host.cpuThreadpool.ok) return t.skip(host.cpuThreadpool.reason);
    // The first context and decode start whatever the process starts once (libuv's pool, say).
    const warm = await host.createContext(512);
    await greedyTokens(warm, prompt, 2);
    await warm.dispose();
    const baseline = threadsNow();
    const contexts = await Promise.all([0, 1, 2].map(() => host.createContext(512)));
    assert.equal(threadsNow(), baseline + 3, "one worker thread for each context of 2 threads");
    for (const c of contexts) await greedyTokens(c, prompt, 3);
    assert.equal(threadsNow(), baseline + 3, "decodes reuse the context's threads instead of starting new ones");
    for (const c of contexts) await c.dispose();
    assert.equal(threadsNow(), baseline, "disposing a context joins its threads");
  });

  it("change nothing the model generates", async (t) => {
    if (!host.cpuThreadpool.ok) return t.skip(host.cpuThreadpool.reason);
    const pooled = await host.createContext(512);
    const plain = await host.model.createContext({ contextSize: 512, threads: 2 });
    try {
      assert.deepEqual(await greedyTokens(pooled, prompt, 24), await greedyTokens(plain, prompt, 24));
    } finally {
      await pooled.dispose();
      await plain.dispose();
    }
  });

  it("are attached once, and bad arguments are refused", async (t) => {
    if (!host.cpuThreadpool.ok) return t.skip(host.cpuThreadpool.reason);
    const context = await host.createContext(512);
    try {
      assert.equal(attachThreadpool(context, 2), false, "a second pool is not attached over the first");
      const ctx = (context as unknown as { _ctx: { attachThreadpool(threads: unknown, poll: unknown): boolean } })._ctx;
      assert.throws(() => ctx.attachThreadpool(0, 0), RangeError);
      assert.throws(() => ctx.attachThreadpool(2, 101), RangeError);
      assert.throws(() => ctx.attachThreadpool("2", 0), TypeError);
    } finally { await context.dispose(); }
    assert.throws(() => attachThreadpool(context, 2), /disposed/);
  });
});
