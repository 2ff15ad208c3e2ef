// Greedy tokens read off the logits (runtime/sessions/greedy-sampling.ts and
// runtime/native/AddonContextSampleGreedy.cpp): the same tokens node-llama-cpp's own sampler picks,
// for one sequence and for a batch of several, on a random-weight model and on the real one; every
// other kind of sampling left to node-llama-cpp.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { LlamaContext, Token } from "node-llama-cpp";
import { ModelHost } from "../../runtime/model/model-host.js";
import { greedyFromLogits } from "../../runtime/sessions/greedy-sampling.js";
import { realModel, smallModel } from "../../testbed/models.js";
import { addonBuildable } from "../helpers/runtime-addon.js";

interface Sampling { temperature: number; seed?: number; repeatPenalty?: { penalty: number; punishTokens: () => Token[] } }
interface Counts { batches: number[]; declined: number }

/** A context of `sequences` sequences, hooked when `counts` is given (counting what the fast path answered). */
async function context(host: ModelHost, sequences: number, counts?: Counts): Promise<LlamaContext> {
  const c = await host.model.createContext({ contextSize: 512 * sequences, sequences, threads: 2 });
  if (counts) {
    const native = (c as unknown as { _ctx: Record<string, unknown> })._ctx;
    const greedy = native.sampleGreedy as (i: number[], s: object[]) => number[] | null;
    Object.defineProperty(native, "sampleGreedy", { value: (i: number[], s: object[]) => {
      const r = greedy.call(native, i, s);
      if (r) counts.batches.push(r.length); else counts.declined++;
      return r;
    } });
    assert.equal(greedyFromLogits(c), true, "the addon has sampleGreedy");
  }
  return c;
}

/** `n` tokens for each prompt, the prompts generating at once on one context's sequences. */
async function generate(c: LlamaContext, prompts: Token[][], n: number, sampling: Sampling): Promise<number[][]> {
  return Promise.all(prompts.map(async (prompt) => {
    const sequence = c.getSequence();
    const out: number[] = [];
    for await (const token of sequence.evaluate(prompt, { ...sampling, yieldEogToken: true })) {
      out.push(token);
      if (out.length >= n) break;
    }
    return out;
  }));
}

for (const [label, model] of [["random-weight fixture", smallModel], ["SmolLM2", realModel]] as const) {
  describe(`greedy sampling off the logits (${label})`, () => {
    let host: ModelHost;
    const texts = ["Tell me about the sea.", "Write a poem about a lighthouse keeper.", "What is two plus two? Explain.", "List three colours and say why."];
    let prompts: Token[][] = [];

    before(async () => {
      host = await ModelHost.load({ model: await model(), modelCacheDir: "", gpu: false, gpuLayers: 0, threads: 2 });
      prompts = texts.map((t) => host.model.tokenize(t));
    });
    after(async () => { await host?.model.dispose(); await host?.llama.dispose(); });

    it("picks node-llama-cpp's greedy tokens, one sequence or four decoding together", async (t) => {
      if (!addonBuildable) return t.skip("the runtime addon is not built here");
      for (const sequences of [1, 4]) {
        const counts: Counts = { batches: [], declined: 0 };
        const own = await context(host, sequences);
        const fast = await context(host, sequences, counts);
        try {
          const batch = prompts.slice(0, sequences);
          const expected = await generate(own, batch, 32, { temperature: 0 });
          assert.deepEqual(await generate(fast, batch, 32, { temperature: 0 }), expected, `${sequences} sequence(s)`);
          assert.equal(counts.declined, 0);
          assert.ok(counts.batches.length >= 31, `every token off the logits: ${counts.batches.length} calls`);
          if (sequences === 4) assert.ok(counts.batches.filter((b) => b === 4).length >= 30, `four tokens a call while four generate: ${counts.batches.join(",")}`);
        } finally {
          await own.dispose();
          await fast.dispose();
        }
      }
    });

    it("leaves temperature and penalties to node-llama-cpp's sampler, with the same results", async (t) => {
      if (!addonBuildable) return t.skip("the runtime addon is not built here");
      // One sequence for the seeded draw: nothing but the seed and the logits decides it.
      const cases: Array<[number, Sampling]> = [[1, { temperature: 0.8, seed: 42 }], [2, { temperature: 0, repeatPenalty: { penalty: 1.3, punishTokens: () => prompts[0]!.slice(0, 16) } }]];
      for (const [sequences, sampling] of cases) {
        const counts: Counts = { batches: [], declined: 0 };
        const own = await context(host, sequences);
        const fast = await context(host, sequences, counts);
        try {
          const batch = prompts.slice(0, sequences);
          assert.deepEqual(await generate(fast, batch, 16, sampling), await generate(own, batch, 16, sampling), JSON.stringify(sampling));
          assert.deepEqual(counts.batches, [], "never answered off the logits");
          assert.ok(counts.declined >= 15, `declined, and node-llama-cpp sampled: ${counts.declined}`);
        } finally {
          await own.dispose();
          await fast.dispose();
        }
      }
    });
  });
}
