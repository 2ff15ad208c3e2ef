// The gateway: one stable, OpenAI-compatible base URL per session. Authenticates and authorises
// the caller, wakes the session if needed, and proxies to the runtime pod holding it, streaming
// responses through unbuffered. See docs/gateway.md.
import type { IncomingMessage } from "node:http";
import express, { type NextFunction, type Request, type Response } from "express";
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { TorporError, asTorporError } from "../contract/errors.js";
import type { Logger } from "../common/logger.js";
import { asObject, bodyParserError, parseMessages, parseSampling, requiredPrompt } from "../contract/request-validation.js";
import { mountHealthRoutes } from "../common/health-server.js";
import type { AccessControl } from "./access.js";
import type { SessionRouter, SessionSource } from "./session-router.js";
import { EPOCH_HEADER } from "../contract/runtime-api.js";
import { RuntimeClient, sessionPath } from "../contract/runtime-client.js";
import type { GracefulShutdown } from "./graceful-shutdown.js";

export interface GatewayDeps {
  router: SessionRouter;
  source: SessionSource;
  access: AccessControl;
  runtimeToken: string;
  log: Logger;
  maxBodyBytes: number;
  wakeTimeoutMs: number;
  /** Peers whose X-Forwarded-For is believed (ingress controllers, load balancers). */
  trustedProxies?: string[];
  /** How the process leaves on SIGTERM: readiness and connection reuse while it drains. */
  shutdown?: GracefulShutdown;
}

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({ name: "torpor_gateway_requests_total", help: "Requests by route and status code.", labelNames: ["route", "code"], registers: [this.registry] });
  readonly duration = new Histogram({
    name: "torpor_gateway_request_duration_seconds", help: "Time to the end of the response.", labelNames: ["route"], registers: [this.registry],
    buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  });
  readonly rehydrations = new Counter({ name: "torpor_gateway_rehydrations_total", help: "Responses that reported a rehydrate.", registers: [this.registry] });
  constructor(defaults = true) { if (defaults) collectDefaultMetrics({ register: this.registry }); }
}

const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"]);

export function createGatewayApp(d: GatewayDeps, metrics = new GatewayMetrics()): express.Express {
  const app = express();
  app.disable("x-powered-by");
  const shutdown = d.shutdown;
  if (shutdown) app.use(shutdown.closeConnections);
  mountHealthRoutes(app, { registry: metrics.registry, ...(shutdown ? { ready: () => ({ ready: shutdown.ready, ...(shutdown.ready ? {} : { draining: true }) }) } : {}) });
  // Parsed only after the caller is authenticated and authorised: an anonymous megabyte costs
  // nothing but the socket.
  const json = express.json({ limit: d.maxBodyBytes, type: () => true });
  const parseBody = (req: Request, res: Response) => new Promise<void>((resolve, reject) => json(req, res, (err?: unknown) => (err ? reject(err) : resolve())));
  const trusted = new Set(d.trustedProxies ?? []);
  /** The caller's address: a forwarded one only when the connection comes from a trusted proxy. */
  const source = (req: Request) => {
    const peer = req.socket.remoteAddress ?? "unknown";
    const fwd = trusted.has(peer) ? String(req.headers["x-forwarded-for"] ?? "").split(",")[0]?.trim() : "";
    return fwd || peer;
  };

  const ref = (req: Request) => ({ namespace: String(req.params.namespace), name: String(req.params.name) });

  /** The session, for a caller allowed to `get` it. */
  const readable = async (req: Request) => {
    const { namespace, name } = ref(req);
    await d.access.check(req.headers.authorization, { namespace, name, verb: "get" }, source(req));
    const s = await d.source.get(namespace, name);
    if (!s) throw new TorporError("session_not_found", `InferenceSession ${namespace}/${name} does not exist`);
    return s;
  };

  app.get("/v1/sessions/:namespace/:name", async (req, res) => {
    const s = await readable(req);
    res.json({ ...ref(req), model: s.spec.model, desired: s.spec.residency ?? "InMemory", ...s.status });
  });

  // OpenAI clients list models at their base URL (`client.models.list()`); a session's base URL
  // serves one: its pool's model, by the name the session's spec uses.
  const sessionModel = async (req: Request) => {
    const s = await readable(req);
    const created = Math.floor(Date.parse(s.metadata?.creationTimestamp ? String(s.metadata.creationTimestamp) : "") / 1000);
    return { id: s.spec.model, object: "model", created: Number.isFinite(created) ? created : 0, owned_by: "torpor" };
  };
  app.get("/v1/sessions/:namespace/:name/models", async (req, res) => {
    res.json({ object: "list", data: [await sessionModel(req)] });
  });
  app.get("/v1/sessions/:namespace/:name/models/:model", async (req, res) => {
    const model = await sessionModel(req);
    if (req.params.model !== model.id) throw new TorporError("model_not_found", `this session serves the model ${JSON.stringify(model.id)}, not ${JSON.stringify(req.params.model)}`);
    res.json(model);
  });

  // The conversation a session holds, for a chat UI to reload what it shows. Its own permission
  // (a conversation says more than a status does): `get` on `inferencesessions/messages`.
  app.get("/v1/sessions/:namespace/:name/messages", async (req, res) => {
    const { namespace, name } = ref(req);
    await d.access.check(req.headers.authorization, { namespace, name, verb: "get", subresource: "messages" }, source(req));
    const target = await d.router.locate(namespace, name);
    const r = await new RuntimeClient(target.url, d.runtimeToken).raw("GET", `${sessionPath(namespace, name)}/messages`)
      .catch((err: unknown) => { throw new TorporError("runtime_unavailable", `runtime pod ${target.pod} is unreachable: ${(err as Error).message}`); });
    res.status(r.status).type("application/json").send(await r.text());
  });

  const generation = (route: "chat" | "submit", validate: (body: Record<string, unknown>) => void, suffix: string) =>
    async (req: Request, res: Response) => {
      const end = metrics.duration.startTimer({ route });
      const { namespace, name } = ref(req);
      try {
        await d.access.check(req.headers.authorization, { namespace, name, verb: "create", subresource: "chat" }, source(req));
        await parseBody(req, res);
        const body = asObject(req.body);
        validate(body); // before any wake: a bad request must not cost a rehydrate
        await proxy(req, res, namespace, name, suffix, body);
        if (res.getHeader("x-torpor-rehydrated") === "true") metrics.rehydrations.inc();
      } finally {
        metrics.requests.inc({ route, code: String(res.statusCode) });
        end();
      }
    };

  app.post("/v1/sessions/:namespace/:name/chat/completions", generation("chat", (b) => { parseMessages(b); parseSampling(b, 1 << 20); }, "chat/completions"));
  app.post("/v1/sessions/:namespace/:name/submit", generation("submit", (b) => {
    requiredPrompt(b, d.maxBodyBytes);
    parseSampling(b, 1 << 20);
  }, "submit"));

  /**
   * Sends the request to the session's runtime pod. A pod that refuses the connection or does not
   * know the session (it restarted, or the session just moved) means the operator is re-placing
   * it: wait for the new placement within the wake bound and try again.
   */
  async function proxy(req: Request, res: Response, namespace: string, name: string, suffix: string, body: unknown): Promise<void> {
    let deadline = Date.now() + d.wakeTimeoutMs;
    const abort = new AbortController();
    res.on("close", () => { if (!res.writableFinished) abort.abort(); });
    const payload = JSON.stringify(body);
    for (let attempt = 0; ; attempt++) {
      const target = await d.router.route(namespace, name);
      let upstream: IncomingMessage;
      const sentAt = Date.now();
      try {
        const epoch = target.session.status?.epoch;
        upstream = await new RuntimeClient(target.url, d.runtimeToken, 0).send("POST", `${sessionPath(namespace, name)}/${suffix}`, payload, {
          signal: abort.signal, ...(epoch ? { headers: { [EPOCH_HEADER]: String(epoch) } } : {}),
        });
      } catch (err) {
        if (abort.signal.aborted) return;
        if (Date.now() > deadline) throw new TorporError("runtime_unavailable", `runtime pod ${target.pod} is unreachable: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, Math.min(1000, 100 * 2 ** attempt)));
        continue;
      }
      // The pod no longer serves the session (it moved, or the pod is draining for a rolling
      // update): hold the request and follow the session to its next placement.
      let replay: Buffer | undefined;
      if (upstream.statusCode === 409 || upstream.statusCode === 503) {
        replay = await readAll(upstream);
        // The wake bound is for finding the session a pod, not for the answer a pod was writing
        // when it had to let the session go (its shutdown deadline, a move): that time is added.
        deadline += Date.now() - sentAt;
        if (MOVED_CODES.has(errorCode(replay)) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, Math.min(1000, 100 * 2 ** attempt)));
          continue;
        }
      }
      if (upstream.statusCode === 404 && Date.now() < deadline) {
        upstream.resume();
        await new Promise((r) => setTimeout(r, Math.min(1000, 100 * 2 ** attempt)));
        continue;
      }
      res.status(upstream.statusCode ?? 502);
      for (const [k, v] of Object.entries(upstream.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) res.setHeader(k, v);
      if (target.woken) res.setHeader("x-torpor-woken", "true");
      // A stream's head (with the rehydrate headers) goes out at once; a JSON reply goes in one write.
      if (replay) { res.end(replay); return; }
      const events = String(upstream.headers["content-type"]).startsWith("text/event-stream");
      if (events) res.flushHeaders();
      // Chunks pass through as they arrive: no buffering between the runtime and the caller.
      await new Promise<void>((resolve) => {
        // The runtime going away mid-response (SIGKILL, an OOM kill, its node lost) ends ours too.
        // A stream says so in an error event: ended without one, OpenAI clients take the answer
        // cut short for a whole one.
        const done = () => {
          if (!res.writableEnded) {
            if (events && !upstream.complete) {
              const e = new TorporError("runtime_unavailable", `runtime pod ${target.pod} went away in the middle of the answer; the turn may not be in the session's history: send it again`);
              res.write(`data: ${JSON.stringify(e.toJSON())}\n\n`);
            }
            res.end();
          }
          resolve();
        };
        upstream.once("error", done);
        upstream.once("close", done);
        res.once("close", () => { upstream.destroy(); resolve(); });
        upstream.pipe(res);
      });
      return;
    }
  }

  app.use((req: Request, _res: Response, next: NextFunction) => next(new TorporError("session_not_found", `no route ${req.method} ${req.path}`)));
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const e = bodyParserError(err) ?? asTorporError(err);
    if (e.status >= 500) d.log.error({ err, path: req.path, code: e.code }, "gateway request failed");
    if (res.headersSent) { res.end(); return; }
    if (e.code === "wake_timeout" || e.code === "runtime_unavailable") res.setHeader("retry-after", "2");
    if (e.code === "rate_limited") res.setHeader("retry-after", String(e.details?.retryAfterSeconds ?? 1));
    res.status(e.status).json(e.toJSON());
  });
  return app;
}

/** Runtime refusals that mean "this session is now served elsewhere". */
const MOVED_CODES = new Set(["stale_epoch", "shutting_down"]);

async function readAll(stream: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function errorCode(body: Buffer): string {
  try { return String((JSON.parse(body.toString("utf8")) as { error?: { code?: string } }).error?.code ?? ""); } catch { return ""; }
}
