// The operator's side of the runtime API: runtime info, session registration, status, hibernate,
// pre-warm, delete and the volume's file list.
import type express from "express";
import type { Request } from "express";
import { TorporError } from "../../contract/errors.js";
import { settingsDigest } from "../../contract/session-settings.js";
import { asObject, optionalInt, optionalString } from "../../contract/request-validation.js";
import type { Conversation, RuntimeInfo } from "../../contract/runtime-api.js";
import { conversationMessages } from "../../contract/conversation.js";
import { wakeHeaders, type ApiDeps } from "./api-deps.js";

export function mountAdminRoutes(app: express.Express, d: ApiDeps): void {
  const { manager, store } = d;
  const session = (req: Request) => manager.get(String(req.params.namespace), String(req.params.name));

  app.get("/v1/runtime", async (_req, res) => {
    const info: RuntimeInfo = {
      pod: d.podName, node: d.nodeName,
      model: { name: d.host.name, fingerprint: d.host.fingerprint, trainContextSize: d.host.trainContextSize },
      capacity: { maxResident: manager.opts.maxResident, resident: manager.residentCount, sessions: manager.sessionCount },
      memory: { rssBytes: process.memoryUsage.rss(), vramUsedBytes: (await d.host.vramState()).used },
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
    const epoch = optionalInt(body, "epoch", 0, Number.MAX_SAFE_INTEGER);
    const checkpointAfterTurns = optionalInt(body, "checkpointAfterTurns", 1, 10_000);
    // 0: this session checkpoints on turns only, or not at all, whatever its pool's policy.
    const checkpointIntervalSeconds = optionalInt(body, "checkpointIntervalSeconds", 0, 365 * 86400);
    const lastActivityText = optionalString(body, "lastActivity", 64);
    const lastActivity = lastActivityText === undefined ? undefined : Date.parse(lastActivityText);
    if (lastActivity !== undefined && !Number.isFinite(lastActivity)) throw new TorporError("bad_request", "lastActivity: an RFC 3339 time, when the session was last used", { field: "lastActivity" });
    const s = await manager.register({
      namespace: String(req.params.namespace), name: String(req.params.name),
      settings: settingsDigest({ path, contextSize, systemPrompt, idleAfterSeconds, checkpointAfterTurns, checkpointIntervalSeconds }),
      ...(path !== undefined ? { path } : {}),
      ...(contextSize !== undefined ? { contextSize } : {}),
      ...(systemPrompt !== undefined ? { systemPrompt } : {}),
      ...(idleAfterSeconds !== undefined ? { idleAfterMs: idleAfterSeconds * 1000 } : {}),
      ...(epoch !== undefined ? { epoch } : {}),
      ...(lastActivity !== undefined ? { lastActivity } : {}),
      ...(checkpointAfterTurns !== undefined || checkpointIntervalSeconds !== undefined ? {
        checkpoint: {
          ...(checkpointAfterTurns !== undefined ? { afterTurns: checkpointAfterTurns } : {}),
          ...(checkpointIntervalSeconds !== undefined ? { intervalMs: checkpointIntervalSeconds * 1000 } : {}),
        },
      } : {}),
    });
    res.json(s.status());
  });

  app.get("/v1/sessions/:namespace/:name", (req, res) => {
    const s = session(req);
    res.json(req.query.history === "true" ? { ...s.status(), history: s.messages() } : s.status());
  });

  app.get("/v1/sessions/:namespace/:name/messages", async (req, res) => {
    const { history, source } = await session(req).conversation();
    const body: Conversation = { messages: conversationMessages(history), source };
    res.json(body);
  });

  app.post("/v1/sessions/:namespace/:name/hibernate", async (req, res) => {
    res.json(await session(req).hibernate("request"));
  });

  // The operator is moving the session to placement `epoch`: commit it and stop serving it here.
  app.post("/v1/sessions/:namespace/:name/handoff", async (req, res) => {
    const epoch = optionalInt(asObject(req.body ?? {}), "epoch", 1, Number.MAX_SAFE_INTEGER);
    if (epoch === undefined) throw new TorporError("bad_request", "epoch: required, the placement epoch the session moves to", { field: "epoch" });
    res.json(await manager.handOff(String(req.params.namespace), String(req.params.name), epoch));
  });

  // The operator placed the session elsewhere under epoch `epoch`: this runtime's copy is stale.
  app.post("/v1/sessions/:namespace/:name/drop", async (req, res) => {
    const epoch = optionalInt(asObject(req.body ?? {}), "epoch", 1, Number.MAX_SAFE_INTEGER);
    if (epoch === undefined) throw new TorporError("bad_request", "epoch: required, the placement epoch that now owns the session", { field: "epoch" });
    res.json({ dropped: await manager.drop(String(req.params.namespace), String(req.params.name), epoch) });
  });

  app.post("/v1/sessions/:namespace/:name/rehydrate", async (req, res) => {
    manager.checkAccepting();
    const flag = (field: string): boolean => {
      const v = req.query[field];
      if (v !== undefined && v !== "true" && v !== "false") throw new TorporError("bad_request", `${field}: true or false`, { field });
      return v === "true";
    };
    const ifRoom = flag("ifRoom"), ifActive = flag("ifActive");
    const s = session(req);
    const wake = await s.warm({ ifRoom, ...(ifActive ? { ifActiveWithin: manager.idleAfterOf(s) } : {}) });
    wakeHeaders(res, wake);
    res.json({ ...wake, status: s.status() });
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
}
