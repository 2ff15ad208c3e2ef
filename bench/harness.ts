// The runtime's parts wired in-process for the benchmarks: a generated model and a session manager
// on a folder, with the options a figure varies.
import { ManualClock } from "../runtime/clock.js";
import { ensureTestModel, type TestModelParams } from "../runtime/gguf/test-model.js";
import { HibernationStore } from "../runtime/hibernation-store.js";
import { createLogger } from "../runtime/logger.js";
import { RuntimeMetrics } from "../runtime/metrics.js";
import { ModelHost } from "../runtime/model-host.js";
import { SessionManager, type ManagerOptions } from "../runtime/session-manager.js";
import { MODEL_DIR } from "../test/helpers/paths.js";

export function loadHost(model: TestModelParams): Promise<ModelHost> {
  return ensureTestModel(MODEL_DIR, model).then((file) => ModelHost.load({ model: file, modelCacheDir: "", gpu: false, gpuLayers: 0, threads: 1 }));
}

export function benchManager(host: ModelHost, dir: string, opts: Partial<ManagerOptions> = {}): SessionManager {
  return new SessionManager(host, new HibernationStore(dir), new ManualClock(), new RuntimeMetrics(false), createLogger("bench", "silent"), {
    maxResident: 64, idleAfterMs: 0, defaultContextSize: 1024, maxContextSize: 65536, podName: "bench", ...opts,
  });
}

export async function harness(model: TestModelParams, dir: string, maxResident = 64): Promise<{ host: ModelHost; manager: SessionManager }> {
  const host = await loadHost(model);
  return { host, manager: benchManager(host, dir, { maxResident }) };
}
