// What each llama_decode carried: a ModelHost whose contexts record, per decode, how many
// sequences' tokens node-llama-cpp put in the batch (its native context is wrapped; nothing else
// changes). For tests and benchmarks of batching (runtime/sessions/batch-composition.ts).
import type { ModelHost } from "../runtime/model/model-host.js";

/** Where a generation step's time went: llama_decode calls, and token sampling (a native job per sequence on libuv's pool, or one call per batch where greedy-sampling.ts answers greedy samples). */
export interface StepTimes { decodes: number; decodeMs: number; samples: number; sampleMs: number }

/**
 * `host`, with each new context appending to `log` the number of batch items of every decode, to
 * `orders` (if given) the sequence ids of those items in batch order, to `sampled` (if given) the
 * number of tokens of every greedy batch read off the logits (runtime/sessions/greedy-sampling.ts),
 * and adding to `times`. Its greedy turns go through node-llama-cpp too (no decode loop), whose
 * batches are what this records.
 */
export function recordingDecodeBatches(host: ModelHost, log: number[], times?: StepTimes, orders?: number[][], sampled?: number[]): ModelHost {
  return Object.create(host, { decodeLoop: { value: { ok: false, reason: "recording node-llama-cpp's batches" } }, createContext: { value: async (...a: Parameters<ModelHost["createContext"]>) => {
    const context = await host.createContext(...a);
    const internals = context as unknown as { _ctx: Record<string, (...x: unknown[]) => unknown> };
    const native = internals._ctx;
    let items = 0, order: number[] = [];
    const timed = <T>(p: Promise<T>, what: "decode" | "sample"): Promise<T> => {
      if (!times) return p;
      const t0 = performance.now();
      return p.finally(() => {
        if (what === "decode") { times.decodes++; times.decodeMs += performance.now() - t0; } else { times.samples++; times.sampleMs += performance.now() - t0; }
      });
    };
    internals._ctx = new Proxy(native, { get: (t, k) => {
      if (k === "addToBatch") return (...x: unknown[]) => { items++; order.push(Number(x[0])); return t.addToBatch!(...x); };
      if (k === "decodeBatch") return () => { log.push(items); orders?.push(order); items = 0; order = []; return timed(t.decodeBatch!() as Promise<unknown>, "decode"); };
      if (k === "sampleToken" && times) return (...x: unknown[]) => timed(t.sampleToken!(...x) as Promise<unknown>, "sample");
      if (k === "sampleGreedy") return (...x: unknown[]) => {
        const t0 = performance.now();
        const tokens = t.sampleGreedy!(...x) as number[] | null;
        if (tokens) {
          sampled?.push(tokens.length);
          if (times) { times.samples++; times.sampleMs += performance.now() - t0; }
        }
        return tokens;
      };
      const v = t[k as string];
      return typeof v === "function" ? v.bind(t) : v;
    } });
    return context;
  } } }) as ModelHost;
}
