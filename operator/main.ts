// The operator's entry point: leader election, then the InferenceSession controller. Serves
// /healthz, /readyz and /metrics. Exits when it loses leadership, so a restart re-joins cleanly.
import { loadKubeConfig, requireRuntimeToken } from "../common/kube-client.js";
import express from "express";
import { mountHealthRoutes } from "../common/health-server.js";
import { runtimePodScope } from "../common/runtime-pods.js";
import { createLogger } from "../common/logger.js";
import { SessionController } from "./controller.js";
import { LeaderElector } from "./leader-election.js";
import { OperatorMetrics } from "./metrics.js";

const log = createLogger("operator");

async function main(): Promise<void> {
  const token = requireRuntimeToken();
  const kc = loadKubeConfig();
  const metrics = new OperatorMetrics();
  let leading = false;
  const app = express();
  // Ready while standing by too: a follower is healthy, and the Service needs no leader to scrape it.
  mountHealthRoutes(app, { registry: metrics.registry, ready: () => ({ ready: true, leader: leading }) });
  const port = Number(process.env.TORPOR_OPERATOR_PORT ?? 8081);
  const server = app.listen(port, process.env.TORPOR_HOST ?? "0.0.0.0");

  const controller = new SessionController({
    kc, runtimeToken: token, log, metrics,
    runtimePods: runtimePodScope(),
    resyncMs: Number(process.env.TORPOR_RESYNC_SECONDS ?? 60) * 1000,
    sweepMs: Number(process.env.TORPOR_SWEEP_SECONDS ?? 600) * 1000,
    sweepMinAgeMs: Number(process.env.TORPOR_SWEEP_MIN_AGE_SECONDS ?? 300) * 1000,
    ...(process.env.TORPOR_HIBERNATION_CLAIM && process.env.TORPOR_CLEANUP_IMAGE ? {
      cleanup: { namespace: process.env.POD_NAMESPACE ?? "default", claim: process.env.TORPOR_HIBERNATION_CLAIM, image: process.env.TORPOR_CLEANUP_IMAGE },
    } : {}),
  });
  const elector = process.env.TORPOR_LEADER_ELECT !== "false" ? new LeaderElector(kc, {
    namespace: process.env.POD_NAMESPACE ?? "default", name: process.env.TORPOR_LEASE_NAME ?? "torpor-operator",
    identity: process.env.POD_NAME ?? `operator-${process.pid}`,
  }, log) : undefined;
  const stop = async (code: number) => {
    const drained = await controller.stop();
    // A rolling update of the operator: the next replica leads at once, not after the lease ran out.
    if (drained && code === 0) await elector?.release();
    else elector?.stop();
    server.close();
    process.exit(code);
  };
  process.on("SIGTERM", () => void stop(0));
  process.on("SIGINT", () => void stop(0));

  if (elector) {
    log.info("waiting for leadership");
    await elector.run(() => void stop(1));
  }
  leading = true;
  await controller.start();
  log.info("controller started");
}

main().catch((err) => { log.fatal({ err }, "operator failed"); process.exit(1); });
