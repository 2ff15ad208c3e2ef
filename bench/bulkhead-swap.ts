// Figure 8: a full bulkhead. Three sessions share two resident slots, so every turn evicts the
// least recently used session and rehydrates the one being asked. Measured with and without context
// handover (the evicted session's emptied context goes to the one that needed the room), turns
// interleaved so that both modes see the same machine noise.
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { TestModelParams } from "../fixtures/gguf/test-model.js";
import { benchManager, loadHost } from "./harness.js";

/** 64 KiB of KV per token: a 4096-token context is a 256 MiB buffer that llama.cpp clears on allocation. */
const SWAP_MODEL: TestModelParams = { layers: 16, embedding: 256, feedForward: 256, heads: 4, headDim: 256, contextLength: 8192, seed: 11 };
const CONTEXT = 4096;
const HISTORY_TOKENS = 1000;

export interface SwapResult {
  contextMiB: number;
  stateMiB: number;
  turns: number;
  handover: { turnMs: number[]; rehydrateMs: number[] };
  fresh: { turnMs: number[]; rehydrateMs: number[] };
}

export async function bulkheadSwap(rounds: number): Promise<SwapResult> {
  const host = await loadHost(SWAP_MODEL);
  const contextMiB = (await host.estimateContextCost(CONTEXT)).ram / 2 ** 20;
  const dirs: string[] = [];
  const modes = await Promise.all([true, false].map(async (contextHandover) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-swap-"));
    dirs.push(dir);
    const manager = benchManager(host, dir, { maxResident: 2, defaultContextSize: CONTEXT, contextHandover });
    return { manager, turnMs: [] as number[], rehydrateMs: [] as number[] };
  }));
  let stateBytes = 0;
  try {
    const filler = Array.from({ length: HISTORY_TOKENS }, (_, i) => String.fromCharCode(97 + ((i * 5) % 26))).join("");
    for (const m of modes) {
      for (let i = 0; i < 3; i++) {
        const s = await m.manager.register({ namespace: "bench", name: `swap-${i}`, contextSize: CONTEXT });
        await s.submit(filler, { maxTokens: 1, temperature: 0 });
      }
    }
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < 3; i++) {
        for (const m of modes) {
          const s = m.manager.get("bench", `swap-${i}`);
          const start = performance.now();
          let first = 0;
          const res = await s.submit(`turn ${r}`, { maxTokens: 2, temperature: 0, onText: () => { first ||= performance.now() - start; } });
          m.turnMs.push(first || performance.now() - start);
          if (res.rehydrated) m.rehydrateMs.push(res.rehydrateMs!);
          stateBytes = Math.max(stateBytes, s.status().lastRehydrate?.bytes ?? 0);
        }
      }
    }
  } finally {
    for (const m of modes) for (const s of m.manager.list()) await m.manager.remove(s.ref.namespace, s.ref.name).catch(() => undefined);
    for (const m of modes) await m.manager.close();
    await host.dispose();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
  const [handover, fresh] = modes as [typeof modes[0], typeof modes[0]];
  return {
    contextMiB,
    stateMiB: stateBytes / 2 ** 20, turns: rounds * 3,
    handover: { turnMs: handover.turnMs, rehydrateMs: handover.rehydrateMs },
    fresh: { turnMs: fresh.turnMs, rehydrateMs: fresh.rehydrateMs },
  };
}
