// The runtime's parts wired in-process for the benchmarks: a generated model and a session manager
// on a folder, with the options a figure varies.
import { ManualClock } from "../common/clock.js";
import { ensureTestModel, type TestModelParams } from "../fixtures/gguf/test-model.js";
import { HibernationStore } from "../runtime/storage/hibernation-store.js";
import { createLogger } from "../common/logger.js";
import { RuntimeMetrics } from "../runtime/metrics.js";
import { ModelHost } from "../runtime/model/model-host.js";
import { SessionManager, type ManagerOptions } from "../runtime/sessions/session-manager.js";
import { MODEL_DIR } from "../testbed/paths.js";

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
