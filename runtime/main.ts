// The runtime pod's entry point: load the model, serve the API, run the idle policy, and on
// SIGTERM stop taking work, finish generations and hibernate every resident session before exit.
import { mkdir } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { systemClock } from "../common/clock.js";
import { loadConfig } from "./config.js";
import { PROCESS_TUNING_ENV, PROCESS_TUNING_REASONS, missingProcessTuning } from "./model/process-tuning.js";
import { HibernationStore } from "./storage/hibernation-store.js";
import { SealingKeys } from "./storage/sealing.js";
import express from "express";
import { mountHealthRoutes } from "../common/health-server.js";
import { cgroupMemoryLimit, defaultMemoryBudget, defaultVramBudget } from "./model/memory-budget.js";
import { NamespaceLimits } from "./sessions/namespace-limits.js";
import { createRuntimeApp } from "./http/app.js";
import { createLogger } from "../common/logger.js";
import { RuntimeMetrics } from "./metrics.js";
import { ModelHost } from "./model/model-host.js";
import { SessionManager } from "./sessions/session-manager.js";

const log = createLogger("runtime");

async function main(): Promise<void> {
  // Hibernation files hold users' conversations: owner-only, whatever creates them (llama.cpp too).
  process.umask(0o077);
  const cfg = loadConfig();
  const untuned = missingProcessTuning(process.env);
  if (untuned.length) {
    const recommended = Object.fromEntries(untuned.map((k) => [k, PROCESS_TUNING_ENV[k]]));
    const effects = [...new Set(untuned.map((k) => PROCESS_TUNING_REASONS[k]))].join("; ");
    log.warn({ missing: untuned, recommended }, `started without the runtime's process settings (set them in its environment): ${effects}`);
  }
  await mkdir(cfg.hibernationDir, { recursive: true, mode: 0o700 });
  const t0 = performance.now();
  const host = await ModelHost.load(cfg);
  // Which backend loaded and how many layers went to the GPU: a CUDA image on a node without the
  // nvidia runtime silently falls back to the CPU, and gpuLayers: max then means 0.
  log.info({ model: host.name, fingerprint: host.fingerprint.slice(0, 16), ms: Math.round(performance.now() - t0), gpu: host.llama.gpu, gpuLayers: host.model.gpuLayers, flashAttention: host.flashAttention, threads: host.threads, maxThreads: host.llama.maxThreads, nativeStateIo: host.stateFiles.ok ? true : host.stateFiles.reason, cpuThreadpool: host.cpuThreadpool.ok ? true : host.cpuThreadpool.reason, decodeLoop: host.decodeLoop.ok ? true : host.decodeLoop.reason }, "model loaded");
  if (cfg.gpuLayers !== 0 && host.llama.gpu === false) {
    // "max" or a layer count is a request for a GPU: a pool sized for VRAM would run out of host
    // memory and time on the CPU, so it stops unless told that the CPU will do.
    const explicit = cfg.gpuLayers === "max" || (typeof cfg.gpuLayers === "number" && cfg.gpuLayers > 0);
    const message = "GPU layers were requested but no GPU backend loaded (no GPU, missing CUDA libraries, or no nvidia runtimeClassName)";
    if (explicit && !cfg.allowCpuFallback) {
      log.fatal({ requested: cfg.gpuLayers }, `${message}: refusing to start on the CPU (set TORPOR_ALLOW_CPU_FALLBACK=true, or gpuLayers "0" or "auto", to run on the CPU)`);
      await host.dispose();
      process.exit(1);
    }
    log.warn({ requested: cfg.gpuLayers }, `${message}: running on the CPU`);
  }
  const sealing = cfg.sealingKeys ? { keys: SealingKeys.parse(cfg.sealingKeys), stagingDir: cfg.stagingDir, ...(cfg.sealingThreads >= 0 ? { threads: cfg.sealingThreads } : {}) } : undefined;
  if (sealing) await mkdir(sealing.stagingDir, { recursive: true, mode: 0o700 });
  else log.warn("TORPOR_SEALING_KEYS is not set: hibernation files are written unsealed (readable and forgeable by anyone with access to the volume). The chart always sets it.");
  const store = new HibernationStore(cfg.hibernationDir, { onWarning: (err, message) => log.warn({ err }, message), ...(sealing ? { sealing } : {}) });
  const leftovers = await store.sweepStaging();
  if (leftovers.length) log.warn({ files: leftovers.length }, "removed staged plaintext that a killed runtime left in the staging folder");
  const memoryBudgetBytes = cfg.memoryBudgetBytes >= 0 ? cfg.memoryBudgetBytes : await defaultMemoryBudget(host.modelPath, await cgroupMemoryLimit());
  const vram = await host.vramState();
  const vramBudgetBytes = cfg.vramBudgetBytes >= 0 ? cfg.vramBudgetBytes : defaultVramBudget(vram.free, host.onGpu);
  log.info({ memoryBudgetMiB: Math.round(memoryBudgetBytes / 2 ** 20), derived: cfg.memoryBudgetBytes < 0 }, memoryBudgetBytes ? "RAM budget for resident contexts" : "no RAM budget (no container memory limit and TORPOR_MEMORY_BUDGET_MIB unset)");
  if (host.onGpu) log.info({ vramBudgetMiB: Math.round(vramBudgetBytes / 2 ** 20), vramFreeMiB: Math.round(vram.free / 2 ** 20), vramTotalMiB: Math.round(vram.total / 2 ** 20), derived: cfg.vramBudgetBytes < 0 }, "VRAM budget for resident contexts");
  const metrics = new RuntimeMetrics();
  // Where a decode's threads are kept (GPU, or the addon's CPU threadpool), a batch of all the
  // generating sessions costs less than a batch short of one plus a batch of one; without the
  // threadpool each decode starts its threads anyway, and gathering measured slower (README).
  const gatherBatches = cfg.batchGathering === "auto" ? host.onGpu || host.cpuThreadpool.ok : cfg.batchGathering;
  const manager = new SessionManager(host, store, systemClock, metrics, log, {
    maxResident: cfg.maxResident, memoryBudget: { ram: memoryBudgetBytes, vram: vramBudgetBytes }, idleAfterMs: cfg.idleAfterMs,
    defaultContextSize: cfg.defaultContextSize, maxContextSize: cfg.maxContextSize, podName: cfg.podName,
    contextHandover: cfg.contextHandover, preemptAfterMs: cfg.preemptAfterMs,
    sequencesPerContext: cfg.sequencesPerContext, contextGraceMs: cfg.contextGraceMs, spareContexts: cfg.spareContexts,
    gatherBatches,
    namespaceLimits: NamespaceLimits.parse(cfg.namespaceLimits),
    checkpoint: { afterTurns: cfg.checkpointAfterTurns, intervalMs: cfg.checkpointIntervalMs },
  });
  if (cfg.spareContexts > 0) void manager.replenishSpares().then((made) => log.info({ spares: made, contextSize: cfg.defaultContextSize }, "spare contexts allocated"));
  const app = createRuntimeApp({
    manager, store, host, metrics, log, token: cfg.token, maxBodyBytes: cfg.maxBodyBytes,
    defaultMaxTokens: cfg.defaultMaxTokens, podName: cfg.podName, nodeName: cfg.nodeName,
    ...(cfg.modelName ? { modelName: cfg.modelName } : {}),
  });
  const server = app.listen(cfg.port, cfg.host);
  await new Promise<void>((resolve, reject) => { server.once("listening", resolve); server.once("error", reject); });
  const addr = server.address() as AddressInfo;
  const metricsServer = cfg.metricsPort > 0 ? (() => {
    const m = express();
    m.disable("x-powered-by");
    mountHealthRoutes(m, { registry: metrics.registry });
    return m.listen(cfg.metricsPort, cfg.host);
  })() : undefined;
  log.info({
    host: addr.address, port: addr.port, maxResident: cfg.maxResident, idleAfterMs: cfg.idleAfterMs,
    checkpointAfterTurns: cfg.checkpointAfterTurns, checkpointIntervalMs: cfg.checkpointIntervalMs,
    sequencesPerContext: cfg.sequencesPerContext, batchGathering: gatherBatches,
  }, "runtime listening");

  const idleTimer = setInterval(() => {
    manager.sweepIdle().catch((err) => log.error({ err }, "idle sweep failed"));
  }, Math.max(1000, Math.min(cfg.idleAfterMs || 10_000, 10_000)));
  // Temp and unreferenced state files older than an hour are leftovers of crashes.
  const orphanTimer = setInterval(() => {
    store.sweepOrphans(3600_000).then((removed) => {
      if (removed.length) log.info({ removed }, "removed orphaned hibernation files");
    }).catch((err) => log.error({ err }, "orphan sweep failed"));
  }, 600_000);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    clearInterval(idleTimer);
    clearInterval(orphanTimer);
    log.info({ signal }, "shutting down: finishing generations and hibernating resident sessions");
    const result = await manager.shutdown(cfg.shutdownGenerationMs);
    log.info(result, "sessions hibernated");
    const handOffs = await manager.handOffsCollected(cfg.shutdownHandOffWaitMs);
    if (handOffs.unasked.length) log.warn({ ...handOffs, waitedMs: cfg.shutdownHandOffWaitMs }, "the operator did not ask for every session saved at shutdown; their status says so once a runtime pod reads the volume");
    else if (handOffs.asked) log.info(handOffs, "every session saved at shutdown was handed off");
    server.close();
    server.closeAllConnections();
    metricsServer?.close();
    await manager.close();
    await store.settled();
    await store.close();
    await host.dispose();
    process.exit(result.failed > 0 ? 1 : 0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((err) => {
  log.fatal({ err }, "runtime failed to start");
  process.exit(1);
});
