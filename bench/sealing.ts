// Figure 9: what sealing costs. The same session hibernated and rehydrated through a sealed store
// and an unsealed one (xxHash64 checked), interleaved, in one run; states of tens of MB. Sealed
// twice where the runtime addon is built: in the addon as llama.cpp streams the state, and through
// a staged plaintext file (node-llama-cpp's own file calls, as without the addon). Then the AEAD
// pass alone over a staged file, on one thread and on the default count.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ManualClock } from "../common/clock.js";
import { createLogger } from "../common/logger.js";
import type { TestModelParams } from "../fixtures/gguf/test-model.js";
import { RuntimeMetrics } from "../runtime/metrics.js";
import { ModelHost } from "../runtime/model/model-host.js";
import { SessionManager } from "../runtime/sessions/session-manager.js";
import { HibernationStore } from "../runtime/storage/hibernation-store.js";
import { openSealedFile, sealFile, SealingKeys } from "../runtime/storage/sealing.js";
import { defaultSealingThreads, SealingThreads } from "../runtime/storage/sealing-threads.js";
import { loadHost } from "./harness.js";

export interface SealingResult {
  stateMiB: number;
  sealed: { hibernateMs: number[]; rehydrateMs: number[] };
  /** Sealed through a staged file; empty where the addon is not built (then `sealed` is staged too). */
  staged: { hibernateMs: number[]; rehydrateMs: number[] };
  plain: { hibernateMs: number[]; rehydrateMs: number[] };
  /** true where `sealed` sealed in the addon; else why not. */
  nativeStateIo: true | string;
  /** Where a sealed hibernate's and rehydrate's extra goes: the AEAD pass alone (staged file to volume with fsync, and back), by thread count. */
  aead: Array<{ threads: number; sealMs: number[]; openMs: number[] }>;
}

/** `model`: a generated model loaded on the CPU here, or a host the caller loaded (and disposes), e.g. on a GPU. */
export async function sealingCost(model: TestModelParams | ModelHost, tokens: number, runs: number): Promise<SealingResult> {
  const host = model instanceof ModelHost ? model : await loadHost(model);
  const base = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-seal-"));
  // Where the runtime would stage (TORPOR_STAGING_DIR): a disk-backed or a memory-backed emptyDir.
  const staging = await mkdtemp(path.join(process.env.TORPOR_STAGING_DIR || os.tmpdir(), "torpor-bench-staging-"));
  for (const d of ["sealed", "staged", "plain"]) await mkdir(path.join(base, d));
  const keys = SealingKeys.parse(`k1:${randomBytes(32).toString("base64")}`);
  const stores = {
    sealed: new HibernationStore(path.join(base, "sealed"), { sealing: { keys, stagingDir: staging } }),
    staged: new HibernationStore(path.join(base, "staged"), { sealing: { keys, stagingDir: staging } }),
    plain: new HibernationStore(path.join(base, "plain")),
  };
  const stagedHost = Object.create(host, { stateFiles: { value: { ok: false, reason: "bench: staged" } } }) as ModelHost;
  type Mode = "sealed" | "staged" | "plain";
  const managers: SessionManager[] = [];
  const mk = (mode: Mode) => {
    const manager = new SessionManager(mode === "staged" ? stagedHost : host, stores[mode],
      new ManualClock(), new RuntimeMetrics(false), createLogger("bench", "silent"),
      { maxResident: 4, idleAfterMs: 0, defaultContextSize: 1024, maxContextSize: 65536, podName: "bench" });
    managers.push(manager);
    return manager;
  };
  const nativeStateIo = host.stateFiles.ok ? true : host.stateFiles.reason;
  const modes: Mode[] = nativeStateIo === true ? ["sealed", "staged", "plain"] : ["sealed", "plain"];
  const pools = [...new Set([1, defaultSealingThreads()])].map((n) => new SealingThreads(n));
  const out: SealingResult = { stateMiB: 0, nativeStateIo, sealed: { hibernateMs: [], rehydrateMs: [] }, staged: { hibernateMs: [], rehydrateMs: [] }, plain: { hibernateMs: [], rehydrateMs: [] }, aead: pools.map((p) => ({ threads: p.threads, sealMs: [], openMs: [] })) };
  const text = Array.from({ length: tokens }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
  try {
    const sessions = new Map<Mode, Awaited<ReturnType<SessionManager["register"]>>>();
    for (const m of modes) sessions.set(m, await mk(m).register({ namespace: "bench", name: "s", contextSize: tokens + 256 }));
    for (const s of sessions.values()) await s.submit(text, { maxTokens: 1, temperature: 0 });
    for (let i = 0; i < runs; i++) {
      // Each run starts with the next mode, so none always goes first.
      for (const mode of modes.map((_, k) => modes[(i + k) % modes.length]!)) {
        const s = sessions.get(mode)!;
        const h = await s.hibernate("bench");
        out.stateMiB = h.record!.bytes / 2 ** 20;
        out[mode].hibernateMs.push(h.record!.durationMs);
        const w = await s.warm();
        out[mode].rehydrateMs.push(w.rehydrateMs!);
      }
    }
    const plain = path.join(staging, "plain");
    await writeFile(plain, randomBytes(Math.round(out.stateMiB * 2 ** 20)));
    const id = { namespace: "bench", name: "s", path: "", modelFingerprint: host.fingerprint };
    for (let i = 0; i < runs; i++) {
      for (const [k, pool] of pools.entries()) {
        const sealed = path.join(base, "sealed", `aead-${i}-${k}`), back = path.join(staging, "back");
        let t = performance.now();
        await sealFile(keys, id, "s", plain, sealed, pool);
        out.aead[k]!.sealMs.push(performance.now() - t);
        t = performance.now();
        await openSealedFile(keys, id, "s", sealed, back, pool);
        out.aead[k]!.openMs.push(performance.now() - t);
        await Promise.all([rm(sealed), rm(back)]);
      }
    }
  } finally {
    for (const m of managers) await m.close();
    await Promise.all([...Object.values(stores), ...pools].map((x) => x.close()));
    if (host !== model) await host.dispose();
    await rm(base, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
  return out;
}
