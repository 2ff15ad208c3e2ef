// Figure 9: what sealing costs. The same session hibernated and rehydrated through a sealed store
// and an unsealed one (SHA-256 checked), interleaved, in one run; states of tens of MB.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ManualClock } from "../common/clock.js";
import { createLogger } from "../common/logger.js";
import type { TestModelParams } from "../fixtures/gguf/test-model.js";
import { RuntimeMetrics } from "../runtime/metrics.js";
import { SessionManager } from "../runtime/sessions/session-manager.js";
import { HibernationStore } from "../runtime/storage/hibernation-store.js";
import { SealingKeys } from "../runtime/storage/sealing.js";
import { loadHost } from "./harness.js";

export interface SealingResult { stateMiB: number; sealed: { hibernateMs: number[]; rehydrateMs: number[] }; plain: { hibernateMs: number[]; rehydrateMs: number[] } }

export async function sealingCost(model: TestModelParams, tokens: number, runs: number): Promise<SealingResult> {
  const host = await loadHost(model);
  const base = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-seal-"));
  const staging = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-staging-"));
  for (const d of ["sealed", "plain"]) await mkdir(path.join(base, d));
  const keys = SealingKeys.parse(`k1:${randomBytes(32).toString("base64")}`);
  const mk = (sealed: boolean) => new SessionManager(host,
    new HibernationStore(path.join(base, sealed ? "sealed" : "plain"), sealed ? { sealing: { keys, stagingDir: staging } } : {}),
    new ManualClock(), new RuntimeMetrics(false), createLogger("bench", "silent"),
    { maxResident: 4, idleAfterMs: 0, defaultContextSize: 1024, maxContextSize: 65536, podName: "bench" });
  const out: SealingResult = { stateMiB: 0, sealed: { hibernateMs: [], rehydrateMs: [] }, plain: { hibernateMs: [], rehydrateMs: [] } };
  const text = Array.from({ length: tokens }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
  try {
    const sessions = { sealed: await mk(true).register({ namespace: "bench", name: "s", contextSize: tokens + 256 }), plain: await mk(false).register({ namespace: "bench", name: "s", contextSize: tokens + 256 }) };
    for (const s of Object.values(sessions)) await s.submit(text, { maxTokens: 1, temperature: 0 });
    for (let i = 0; i < runs; i++) {
      for (const mode of (i % 2 ? ["plain", "sealed"] : ["sealed", "plain"]) as Array<"sealed" | "plain">) {
        const s = sessions[mode];
        const h = await s.hibernate("bench");
        out.stateMiB = h.record!.bytes / 2 ** 20;
        out[mode].hibernateMs.push(h.record!.durationMs);
        const w = await s.warm();
        out[mode].rehydrateMs.push(w.rehydrateMs!);
      }
    }
  } finally {
    await host.dispose();
    await rm(base, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
  return out;
}
