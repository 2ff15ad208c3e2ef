// The runtime's HTTP API, used by the operator and the gateway (see docs/runtime-api.md): health
// routes, the bearer-token check, the two route sets, and one error mapping for all of them.
import { timingSafeEqual } from "node:crypto";
import express, { type NextFunction, type Request, type Response } from "express";
import { mountHealthRoutes } from "../../common/health-server.js";
import { TorporError, asTorporError } from "../../contract/errors.js";
import { bodyParserError } from "../../contract/request-validation.js";
import { mountAdminRoutes } from "./admin-routes.js";
import type { ApiDeps } from "./api-deps.js";
import { mountGenerationRoutes } from "./generation-routes.js";

export { REHYDRATED_HEADER, REHYDRATE_MS_HEADER, type ApiDeps } from "./api-deps.js";

function sendError(res: Response, err: TorporError): void {
  if (err.code === "capacity_exhausted" || err.code === "shutting_down") res.setHeader("retry-after", "1");
  res.status(err.status).json(err.toJSON());
}

export function createRuntimeApp(d: ApiDeps): express.Express {
  const app = express();
  app.disable("x-powered-by");
  const expected = Buffer.from(`Bearer ${d.token}`);

  mountHealthRoutes(app, { registry: d.metrics.registry, ready: () => ({ ready: !d.manager.shuttingDown, ...(d.manager.shuttingDown ? { reason: "shutting down" } : {}) }) });

  app.use("/v1", (req: Request, _res: Response, next: NextFunction) => {
    const got = Buffer.from(req.headers.authorization ?? "");
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
      return next(new TorporError("unauthorized", "missing or wrong bearer token (the runtime token from the torpor Secret)"));
    }
    next();
  });
  app.use(express.json({ limit: d.maxBodyBytes, type: () => true }));

  mountAdminRoutes(app, d);
  mountGenerationRoutes(app, d);

  app.use((req: Request, _res: Response, next: NextFunction) => {
    next(new TorporError("bad_request", `no route ${req.method} ${req.path}`));
  });

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const e = bodyParserError(err) ?? asTorporError(err);
    d.metrics.errors.inc({ code: e.code });
    if (e.status >= 500) d.log.error({ err, path: req.path, code: e.code }, "request failed");
    if (res.headersSent) { res.end(); return; }
    sendError(res, e);
  });
  return app;
}
