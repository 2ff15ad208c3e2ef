// What each llama_decode carried: a ModelHost whose contexts record, per decode, how many
// sequences' tokens node-llama-cpp put in the batch (its native context is wrapped; nothing else
// changes). For tests and benchmarks of batching (runtime/sessions/batch-gathering.ts).
import type { ModelHost } from "../runtime/model/model-host.js";

/** `host`, with each new context appending to `log` the number of batch items of every decode. */
export function recordingDecodeBatches(host: ModelHost, log: number[]): ModelHost {
  return Object.create(host, { createContext: { value: async (...a: Parameters<ModelHost["createContext"]>) => {
    const context = await host.createContext(...a);
    const internals = context as unknown as { _ctx: Record<string, (...x: unknown[]) => unknown> };
    const native = internals._ctx;
    let items = 0;
    internals._ctx = new Proxy(native, { get: (t, k) => {
      if (k === "addToBatch") return (...x: unknown[]) => { items++; return t.addToBatch!(...x); };
      if (k === "decodeBatch") return () => { log.push(items); items = 0; return t.decodeBatch!(); };
      const v = t[k as string];
      return typeof v === "function" ? v.bind(t) : v;
    } });
    return context;
  } } }) as ModelHost;
}
