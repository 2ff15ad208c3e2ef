// The runtime's HTTP API, used by the operator and the gateway. See docs/runtime-api.md.
import { randomBytes, timingSafeEqual } from "node:crypto";
import express, { type NextFunction, type Request, type Response } from "express";
import { TorporError, asTorporError } from "../../contract/errors.js";
import type { HibernationStore } from "../storage/hibernation-store.js";
import type { Logger } from "../../common/logger.js";
import type { RuntimeMetrics } from "../metrics.js";
import type { ModelHost } from "../model/model-host.js";
import { asObject, optionalInt, optionalString, parseMessages, parseSampling } from "../../contract/request-validation.js";
import type { SessionManager } from "../sessions/session-manager.js";
import type { GenerateOptions, GenerateResult, RuntimeInfo, Wake } from "../../contract/runtime-api.js";

export interface ApiDeps {
  manager: SessionManager;
  store: HibernationStore;
  host: ModelHost;
  metrics: RuntimeMetrics;
  log: Logger;
  token: string;
  maxBodyBytes: number;
  defaultMaxTokens: number;
  podName: string;
  nodeName: string;
}

export const REHYDRATED_HEADER = "x-torpor-rehydrated";
export const REHYDRATE_MS_HEADER = "x-torpor-rehydrate-ms";

function wakeHeaders(res: Response, wake: Wake): void {
  res.setHeader(REHYDRATED_HEADER, String(wake.rehydrated));
  if (wake.rehydrateMs !== undefined) res.setHeader(REHYDRATE_MS_HEADER, wake.rehydrateMs.toFixed(1));
}

function sendError(res: Response, err: TorporError): void {
  if (err.code === "capacity_exhausted" || err.code === "shutting_down") res.setHeader("retry-after", "1");
  res.status(err.status).json(err.toJSON());
}

export function createRuntimeApp(d: ApiDeps): express.Express {
  const app = express();
  app.disable("x-powered-by");
  const expected = Buffer.from(`Bearer ${d.token}`);

  app.get("/healthz", (_req, res) => { res.json({ ok: true }); });
  app.get("/readyz", (_req, res) => {
    if (d.manager.shuttingDown) return sendError(res, new TorporError("shutting_down", "runtime is shutting down"));
    res.json({ ok: true });
  });
  app.get("/metrics", async (_req, res) => {
    res.setHeader("content-type", d.metrics.registry.contentType);
    res.send(await d.metrics.registry.metrics());
  });

  app.use("/v1", (req: Request, _res: Response, next: NextFunction) => {
    const got = Buffer.from(req.headers.authorization ?? "");
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
      return next(new TorporError("unauthorized", "missing or wrong bearer token (the runtime token from the torpor Secret)"));
    }
    next();
  });
  app.use(express.json({ limit: d.maxBodyBytes, type: () => true }));

  const { manager, store } = d;
  const session = (req: Request) => manager.get(String(req.params.namespace), String(req.params.name));

  app.get("/v1/runtime", async (_req, res) => {
    const info: RuntimeInfo = {
      pod: d.podName, node: d.nodeName,
      model: { name: d.host.name, fingerprint: d.host.fingerprint, trainContextSize: d.host.trainContextSize },
      capacity: { maxResident: manager.opts.maxResident, resident: manager.residentCount, sessions: manager.sessionCount },
      memory: { rssBytes: process.memoryUsage.rss(), vramUsedBytes: await d.host.vramUsed() },
      ready: !manager.shuttingDown,
    };
    res.json(info);
  });

  app.get("/v1/sessions", (_req, res) => { res.json({ sessions: manager.list().map((s) => s.status()) }); });

  app.put("/v1/sessions/:namespace/:name", async (req, res) => {
    const body = asObject(req.body ?? {});
    const path = optionalString(body, "path", 512);
    const contextSize = optionalInt(body, "contextSize", 256, manager.opts.maxContextSize);
    const systemPrompt = optionalString(body, "systemPrompt", 100_000);
    const idleAfterSeconds = optionalInt(body, "idleAfterSeconds", 0, 365 * 86400);
    const s = await manager.register({
      namespace: String(req.params.namespace), name: String(req.params.name),
      ...(path !== undefined ? { path } : {}),
      ...(contextSize !== undefined ? { contextSize } : {}),
      ...(systemPrompt !== undefined ? { systemPrompt } : {}),
      ...(idleAfterSeconds !== undefined ? { idleAfterMs: idleAfterSeconds * 1000 } : {}),
    });
    res.json(s.status());
  });

  app.get("/v1/sessions/:namespace/:name", (req, res) => {
    const s = session(req);
    res.json(req.query.history === "true" ? { ...s.status(), history: s.messages() } : s.status());
  });

  app.post("/v1/sessions/:namespace/:name/hibernate", async (req, res) => {
    res.json(await session(req).hibernate("request"));
  });

  app.post("/v1/sessions/:namespace/:name/rehydrate", async (req, res) => {
    manager.checkAccepting();
    const wake = await session(req).warm();
    wakeHeaders(res, wake);
    res.json({ ...wake, status: session(req).status() });
  });

  app.delete("/v1/sessions/:namespace/:name", async (req, res) => {
    const namespace = String(req.params.namespace), name = String(req.params.name);
    const path = typeof req.query.path === "string" ? req.query.path : "";
    let registered = true;
    try { manager.get(namespace, name); } catch { registered = false; }
    if (registered) await manager.remove(namespace, name);
    // Also works for sessions this runtime never saw: the finalizer and sweeper rely on it.
    const removedFiles = await store.remove({ namespace, name, path });
    res.json({ deleted: registered, removedFiles: registered || removedFiles });
  });

  app.get("/v1/hibernation-files", async (_req, res) => { res.json({ files: await store.list() }); });

  app.post("/v1/sessions/:namespace/:name/submit", async (req, res) => {
    manager.checkAccepting();
    const body = asObject(req.body);
    const prompt = optionalString(body, "prompt", d.maxBodyBytes);
    if (prompt === undefined || prompt.length === 0) throw new TorporError("bad_request", "prompt: required, a non-empty string", { field: "prompt" });
    const sampling = parseSampling(body, 1 << 20);
    const s = session(req);
    await respond(res, sampling.stream, (opts) => s.submit(prompt, { ...opts, ...samplingOpts(sampling) }), (r) => ({
      reply: r.text, finish_reason: r.finishReason,
      usage: usage(r), torpor: torporInfo(r),
    }));
  });

  app.post("/v1/sessions/:namespace/:name/chat/completions", async (req, res) => {
    manager.checkAccepting();
    const body = asObject(req.body);
    const messages = parseMessages(body);
    const sampling = parseSampling(body, 1 << 20);
    const s = session(req);
    const id = `chatcmpl-${randomBytes(12).toString("hex")}`;
    const created = Math.floor(Date.now() / 1000);
    const model = d.host.name;
    await respond(res, sampling.stream, (opts) => s.complete(messages, { ...opts, ...samplingOpts(sampling) }), (r) => ({
      id, object: "chat.completion", created, model,
      choices: [{ index: 0, message: { role: "assistant", content: r.text }, finish_reason: r.finishReason === "aborted" ? "stop" : r.finishReason }],
      usage: usage(r), torpor: torporInfo(r),
    }), {
      chunk: (text) => ({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { content: text }, finish_reason: null }] }),
      first: () => ({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] }),
      last: (r) => ({
        id, object: "chat.completion.chunk", created, model,
        choices: [{ index: 0, delta: {}, finish_reason: r.finishReason === "aborted" ? "stop" : r.finishReason }],
        usage: usage(r), torpor: torporInfo(r),
      }),
    });
  });

  function samplingOpts(s: ReturnType<typeof parseSampling>): Omit<GenerateOptions, "onText" | "onStart" | "signal"> {
    return {
      maxTokens: s.maxTokens ?? d.defaultMaxTokens, temperature: s.temperature,
      ...(s.seed !== undefined ? { seed: s.seed } : {}), ...(s.topP !== undefined ? { topP: s.topP } : {}),
    };
  }

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

function bodyParserError(err: unknown): TorporError | undefined {
  const type = (err as { type?: string })?.type;
  if (type === "entity.too.large") return new TorporError("payload_too_large", `request body exceeds the limit of ${(err as { limit?: number }).limit} bytes`);
  if (type === "entity.parse.failed") return new TorporError("bad_request", `body: not valid JSON (${(err as Error).message})`, { field: "body" });
  if (type === "encoding.unsupported" || type === "charset.unsupported") return new TorporError("bad_request", (err as Error).message);
  if (type) return new TorporError("bad_request", (err as Error).message);
  return undefined;
}

function usage(r: GenerateResult) {
  return {
    prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens,
    prompt_tokens_details: { cached_tokens: r.cachedTokens },
  };
}

function torporInfo(r: GenerateResult) {
  return { rehydrated: r.rehydrated, rehydrate_ms: r.rehydrateMs ?? null, created: r.created };
}

interface StreamShape {
  first: () => unknown;
  chunk: (text: string) => unknown;
  last: (r: GenerateResult) => unknown;
}

/**
 * Runs a generation and answers as JSON or as server-sent events. Errors before the first byte are
 * ordinary JSON errors; after it they arrive as an SSE `error` event. A client that disconnects
 * aborts its generation, so the session's queue moves on.
 */
async function respond(
  res: Response, stream: boolean,
  run: (opts: Pick<GenerateOptions, "onText" | "onStart" | "signal">) => Promise<GenerateResult>,
  body: (r: GenerateResult) => unknown,
  shape?: StreamShape,
): Promise<void> {
  const abort = new AbortController();
  res.on("close", () => { if (!res.writableFinished) abort.abort(); });
  if (!stream) {
    const r = await run({ signal: abort.signal, onStart: (wake) => wakeHeaders(res, wake) });
    res.json(body(r));
    return;
  }
  const write = (o: unknown) => { if (!res.writableEnded) res.write(`data: ${JSON.stringify(o)}\n\n`); };
  try {
    const r = await run({
      signal: abort.signal,
      onStart: (wake) => {
        wakeHeaders(res, wake);
        res.setHeader("content-type", "text/event-stream");
        res.setHeader("cache-control", "no-cache");
        res.setHeader("x-accel-buffering", "no");
        res.flushHeaders();
        write(shape ? shape.first() : { started: true });
      },
      onText: (text) => write(shape ? shape.chunk(text) : { text }),
    });
    write(shape ? shape.last(r) : body(r));
    res.write("data: [DONE]\n\n");
    res.end();
  } catch (err) {
    if (!res.headersSent) throw err;
    const e = asTorporError(err);
    write(e.toJSON());
    res.end();
  }
}
