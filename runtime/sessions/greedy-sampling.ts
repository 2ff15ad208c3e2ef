// Greedy tokens for a whole decoded batch read off the logits in one native call, through the method
// scripts/build-runtime-addon.sh adds to node-llama-cpp's addon (runtime/native/AddonContextSampleGreedy.cpp).
//
// After a batch, node-llama-cpp 3.22.1 calls the addon's sampleToken once per sequence that wants a
// token, all in the same run of the event loop (each sequence's sampler lock is free then, so
// withLock calls straight through), and each call is a job on Node's pool that copies the whole
// vocabulary before its chain picks a token. Four greedy sessions sharing a context spent 0.39-0.46
// ms of each step's 0.7 ms between decodes in those jobs (2 pool threads, 2 cores). The calls made
// in one run are gathered until the microtasks after them and, when every sampler is plain greedy,
// answered by one call that takes each row's first highest logit, as llama.cpp's greedy sampler
// does. Any other sampling (temperature, penalties, bias, grammar, probabilities asked for) goes to
// node-llama-cpp's own jobs, as before. The test "batch composition" in test/runtime/session.test.ts
// fails if node-llama-cpp stops calling sampleToken this way.
import type { LlamaContext } from "node-llama-cpp";

type SampleToken = (batchLogitIndex: number, sampler: object, ...rest: unknown[]) => Promise<unknown>;
type SampleGreedy = (batchLogitIndexes: number[], samplers: object[]) => number[] | null;
interface AddonContext { sampleToken?: SampleToken; sampleGreedy?: SampleGreedy }
interface Pending { index: number; sampler: object; resolve: (token: unknown) => void; reject: (err: unknown) => void }

/**
 * Makes the context answer greedy samples from the logits, a batch at a time. False where the addon
 * has no such method (node-llama-cpp's own addon): the context samples as node-llama-cpp does.
 */
export function greedyFromLogits(context: LlamaContext): boolean {
  const ctx = (context as unknown as { _ctx?: AddonContext })._ctx;
  const single = ctx?.sampleToken, greedy = ctx?.sampleGreedy;
  if (!ctx || typeof single !== "function" || typeof greedy !== "function") return false;
  let pending: Pending[] = [];
  const flush = () => {
    const items = pending;
    pending = [];
    let tokens: number[] | null;
    try {
      tokens = greedy.call(ctx, items.map((i) => i.index), items.map((i) => i.sampler));
    } catch {
      // Disposed under us, or a row the context does not have: node-llama-cpp's own call says which.
      tokens = null;
    }
    items.forEach((item, i) => {
      if (tokens) item.resolve(tokens[i]);
      else single.call(ctx, item.index, item.sampler).then(item.resolve, item.reject);
    });
  };
  // An own property shadows the addon's prototype method for this context only.
  Object.defineProperty(ctx, "sampleToken", {
    configurable: true,
    writable: true,
    value: (batchLogitIndex: number, sampler: object, ...rest: unknown[]) => {
      // Probabilities, confidence or logits asked for: node-llama-cpp's own job returns them.
      if (rest.length > 0) return single.call(ctx, batchLogitIndex, sampler, ...rest);
      return new Promise((resolve, reject) => {
        if (pending.push({ index: batchLogitIndex, sampler, resolve, reject }) === 1) queueMicrotask(flush);
      });
    },
  });
  return true;
}
