// The runtime's parts wired in-process (real node-llama-cpp), for tests that need an injected clock.
import { tempDir } from "../../testbed/temp-dir.js";
import { ManualClock } from "../../common/clock.js";
import { HibernationStore } from "../../runtime/storage/hibernation-store.js";
import { createLogger } from "../../common/logger.js";
import { RuntimeMetrics } from "../../runtime/metrics.js";
import { ModelHost } from "../../runtime/model/model-host.js";
import { SessionManager, type ManagerOptions } from "../../runtime/sessions/session-manager.js";
import { smallModel } from "../../testbed/models.js";

const hosts = new Map<string, Promise<ModelHost>>();

/** One host per model and test process: loading it is the slow part and it is read-only. */
export function sharedHost(model?: () => Promise<string>): Promise<ModelHost> {
  const key = model?.name ?? "small";
  let host = hosts.get(key);
  if (!host) {
    host = (model ?? smallModel)().then((m) => ModelHost.load({ model: m, modelCacheDir: "", gpu: false, gpuLayers: 0, threads: 1 }));
    hosts.set(key, host);
  }
  return host;
}

export interface Harness {
  manager: SessionManager;
  store: HibernationStore;
  clock: ManualClock;
  metrics: RuntimeMetrics;
  dir: string;
  host: ModelHost;
}

/**
 * `hostAs` stands in for what the test cannot have here (a GPU's VRAM estimates, say): it returns
 * the host the manager gets, usually one that inherits the shared host and overrides one method.
 */
export async function harness(opts: Partial<ManagerOptions> = {}, dir?: string, model?: () => Promise<string>, hostAs?: (h: ModelHost) => ModelHost): Promise<Harness> {
  const shared = await sharedHost(model);
  const host = hostAs ? hostAs(shared) : shared;
  const root = dir ?? await tempDir("torpor-hib-");
  const store = new HibernationStore(root);
  const clock = new ManualClock(1_000_000);
  const metrics = new RuntimeMetrics(false);
  const manager = new SessionManager(host, store, clock, metrics, createLogger("test", "silent"), {
    maxResident: 8, idleAfterMs: 0, defaultContextSize: 1024, maxContextSize: 8192, podName: "test", ...opts,
  });
  return { manager, store, clock, metrics, dir: root, host };
}

export const greedy = (maxTokens = 16) => ({ maxTokens, temperature: 0 });

export async function counterValue(metrics: RuntimeMetrics, name: string): Promise<number> {
  const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).reduce((a, v) => a + Number(v.value), 0);
}
