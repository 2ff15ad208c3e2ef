// Removes hibernation files that belong to no InferenceSession (deleted while the operator was
// down, say). One Ready runtime per model lists and deletes: they all mount the same volume.
import type { Logger } from "../common/logger.js";
import type { RuntimePod } from "./decisions.js";
import type { ClusterView } from "./cluster-view.js";
import type { OperatorMetrics } from "./metrics.js";

/** Files younger than minAgeMs are left alone: their session may not have reached the cache yet. */
export async function sweepOrphans(view: ClusterView, minAgeMs: number, metrics: OperatorMetrics, log: Logger): Promise<number> {
  const byModel = new Map<string, RuntimePod>();
  for (const p of view.runtimePods()) if (p.ready && !byModel.has(p.model)) byModel.set(p.model, p);
  let removed = 0;
  for (const pod of byModel.values()) {
    const { files } = await view.client(pod).files().catch(() => ({ files: [] }));
    for (const f of files) {
      if (view.sessions.has(`${f.namespace}/${f.name}`) || Date.now() - Date.parse(f.hibernatedAt) < minAgeMs) continue;
      await view.client(pod).delete(f.namespace, f.name, f.path).catch(() => undefined);
      metrics.sweptFiles.inc();
      log.info({ namespace: f.namespace, name: f.name, file: f.manifestFile }, "swept hibernation file of a deleted session");
      removed++;
    }
  }
  return removed;
}
