// /healthz, /readyz and /metrics, the same way in every program.
import type express from "express";
import type { Registry } from "prom-client";

export interface HealthRoutes {
  registry: Registry;
  /** Readiness and any fields worth showing (leader, draining); ready false answers 503. */
  ready?: () => { ready: boolean } & Record<string, unknown>;
}

export function mountHealthRoutes(app: express.Express, h: HealthRoutes): void {
  app.get("/healthz", (_q, r) => { r.json({ ok: true }); });
  app.get("/readyz", (_q, r) => {
    const { ready, ...rest } = h.ready?.() ?? { ready: true };
    r.status(ready ? 200 : 503).json({ ok: ready, ...rest });
  });
  app.get("/metrics", async (_q, r) => { r.setHeader("content-type", h.registry.contentType); r.send(await h.registry.metrics()); });
}
