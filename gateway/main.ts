// The gateway's entry point (its own Deployment). TORPOR_GATEWAY_AUTH=disabled turns off
// authentication for the local demo only, and says so loudly.
import { loadKubeConfig, requireRuntimeToken } from "../common/kube-client.js";
import { createLogger } from "../common/logger.js";
import { EventRecorder } from "../common/events.js";
import { KubernetesAccessControl, allowEveryone } from "./access.js";
import { createGatewayApp } from "./app.js";
import { GracefulShutdown } from "./graceful-shutdown.js";
import { runtimePodScope } from "../common/runtime-pods.js";
import { RuntimePodCache } from "./runtime-pod-cache.js";
import { InformerSessionSource, SessionRouter } from "./session-router.js";

const log = createLogger("gateway");

async function main(): Promise<void> {
  const runtimeToken = requireRuntimeToken();
  const kc = loadKubeConfig();
  const authDisabled = process.env.TORPOR_GATEWAY_AUTH === "disabled";
  if (authDisabled) {
    for (let i = 0; i < 3; i++) log.warn("AUTHENTICATION IS DISABLED (TORPOR_GATEWAY_AUTH=disabled): anyone who reaches this gateway can use every session. Local demos only.");
  }
  const wakeTimeoutMs = Number(process.env.TORPOR_GATEWAY_WAKE_TIMEOUT_SECONDS ?? 60) * 1000;
  const source = new InformerSessionSource(kc, log);
  await source.start();
  const pods = new RuntimePodCache(kc, runtimePodScope(), log);
  await pods.start();
  const router = new SessionRouter(kc, source, new EventRecorder(kc, "torpor-gateway", log), log, {
    wakeTimeoutMs, runtimePort: Number(process.env.TORPOR_RUNTIME_PORT ?? 8080),
  }, pods);
  // Long enough for the longest answer a client waits for (a wake from zero, then a generation).
  const shutdown = new GracefulShutdown({
    drainMs: Number(process.env.TORPOR_GATEWAY_DRAIN_SECONDS ?? 5) * 1000,
    inFlightMs: Number(process.env.TORPOR_GATEWAY_SHUTDOWN_SECONDS ?? 300) * 1000,
  }, log);
  const app = createGatewayApp({
    router, source, access: authDisabled ? allowEveryone : new KubernetesAccessControl(kc, {
      audiences: (process.env.TORPOR_GATEWAY_AUDIENCES ?? "torpor").split(",").map((a) => a.trim()).filter(Boolean),
      reviewsPerSecond: Number(process.env.TORPOR_GATEWAY_REVIEWS_PER_SECOND ?? 5),
      requestsPerSecond: Number(process.env.TORPOR_GATEWAY_REQUESTS_PER_SECOND ?? 0),
    }),
    runtimeToken, log,
    trustedProxies: (process.env.TORPOR_GATEWAY_TRUSTED_PROXIES ?? "").split(",").map((a) => a.trim()).filter(Boolean),
    maxBodyBytes: Number(process.env.TORPOR_MAX_BODY_BYTES ?? 1 << 20), wakeTimeoutMs, shutdown,
  });
  const port = Number(process.env.TORPOR_GATEWAY_PORT ?? 8000);
  const server = app.listen(port, process.env.TORPOR_HOST ?? "0.0.0.0", () => log.info({ port, auth: !authDisabled }, "gateway listening"));
  process.on("SIGTERM", (signal) => shutdown.begin(server, signal));
  process.on("SIGINT", (signal) => shutdown.begin(server, signal));
}

main().catch((err) => { log.fatal({ err }, "gateway failed to start"); process.exit(1); });
