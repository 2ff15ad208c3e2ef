// Figure 10: what checkpoints cost the next turn. Two sessions with the same long history take
// turns back to back (a person would pause; this is the worst case): one checkpoints after every
// turn, the other never. Time to first token includes waiting behind a checkpoint still running.
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { TestModelParams } from "../fixtures/gguf/test-model.js";
import { benchManager, loadHost } from "./harness.js";

export interface CheckpointResult { stateMiB: number; withMs: number[]; withoutMs: number[] }

export async function checkpointCost(model: TestModelParams, historyTokens: number, turns: number): Promise<CheckpointResult> {
  const host = await loadHost(model);
  const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-ckpt-"));
  const manager = benchManager(host, dir);
  const out: CheckpointResult = { stateMiB: 0, withMs: [], withoutMs: [] };
  try {
    const contextSize = historyTokens + turns * 16 + 512;
    const withCkpt = await manager.register({ namespace: "bench", name: "ckpt", contextSize, checkpoint: { afterTurns: 1 } });
    const without = await manager.register({ namespace: "bench", name: "plain", contextSize });
    const history = Array.from({ length: historyTokens }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
    for (const s of [withCkpt, without]) await s.submit(history, { maxTokens: 1, temperature: 0 });
    for (let i = 0; i < turns; i++) {
      for (const [s, into] of (i % 2 ? [[without, out.withoutMs], [withCkpt, out.withMs]] : [[withCkpt, out.withMs], [without, out.withoutMs]]) as Array<[typeof withCkpt, number[]]>) {
        const t0 = performance.now();
        let first = 0;
        await s.submit(`turn ${i}`, { maxTokens: 4, temperature: 0, onText: () => { first ||= performance.now(); } });
        into.push((first || performance.now()) - t0);
      }
    }
    await withCkpt.warm();
    out.stateMiB = (withCkpt.status().lastCheckpoint?.bytes ?? 0) / 2 ** 20;
  } finally {
    for (const s of manager.list()) await manager.remove(s.ref.namespace, s.ref.name).catch(() => undefined);
    await manager.close();
    await host.dispose();
    await rm(dir, { recursive: true, force: true });
  }
  return out;
}
