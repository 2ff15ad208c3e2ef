// The routes that generate: `submit` (stateful, one user message) and the OpenAI-compatible
// chat completions (the caller sends the whole conversation), as JSON or server-sent events.
import { randomBytes } from "node:crypto";
import type express from "express";
import type { Request, Response } from "express";
import { asTorporError } from "../../contract/errors.js";
import { asObject, parseMessages, parseSampling, requiredPrompt } from "../../contract/request-validation.js";
import type { GenerateOptions, GenerateResult } from "../../contract/runtime-api.js";
import { EPOCH_HEADER } from "../../contract/runtime-api.js";
import { wakeHeaders, type ApiDeps } from "./api-deps.js";
import { checkVocabulary } from "../sessions/sampling.js";

export function mountGenerationRoutes(app: express.Express, d: ApiDeps): void {
  const { manager } = d;
  /** The session, refusing (409 stale_epoch) when the caller routed by a newer placement than this copy. */
  const session = (req: Request) => {
    const s = manager.get(String(req.params.namespace), String(req.params.name));
    const epoch = Number(req.headers[EPOCH_HEADER]);
    s.checkEpoch(Number.isSafeInteger(epoch) && epoch > 0 ? epoch : undefined);
    return s;
  };

  app.post("/v1/sessions/:namespace/:name/submit", async (req, res) => {
    manager.checkAccepting();
    const body = asObject(req.body);
    const prompt = requiredPrompt(body, d.maxBodyBytes);
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
    const model = d.modelName ?? d.host.name;
    await respond(res, sampling.stream, (opts) => s.complete(messages, { ...opts, ...samplingOpts(sampling) }), (r) => ({
      id, object: "chat.completion", created, model,
      choices: [{ index: 0, message: { role: "assistant", content: r.text }, finish_reason: r.finishReason === "aborted" ? "stop" : r.finishReason }],
      usage: usage(r), torpor: torporInfo(r),
    }), {
      chunk: (text) => ({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { content: text }, finish_reason: null }] }),
      first: () => ({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] }),
      // Asked for, the usage comes as OpenAI sends it: a last chunk with no choices. Otherwise it
      // rides on the finishing chunk, as llama-server's does.
      last: (r) => [
        {
          id, object: "chat.completion.chunk", created, model,
          choices: [{ index: 0, delta: {}, finish_reason: r.finishReason === "aborted" ? "stop" : r.finishReason }],
          ...(sampling.streamUsage ? {} : { usage: usage(r) }), torpor: torporInfo(r),
        },
        ...(sampling.streamUsage ? [{ id, object: "chat.completion.chunk", created, model, choices: [], usage: usage(r) }] : []),
      ],
    });
  });

  function samplingOpts(s: ReturnType<typeof parseSampling>): Omit<GenerateOptions, "onText" | "onStart" | "signal"> {
    checkVocabulary(d.host, s.logitBias);
    return {
      maxTokens: s.maxTokens ?? d.defaultMaxTokens, temperature: s.temperature,
      ...(s.seed !== undefined ? { seed: s.seed } : {}), ...(s.topP !== undefined ? { topP: s.topP } : {}),
      ...(s.stop ? { stop: s.stop } : {}),
      ...(s.frequencyPenalty !== undefined ? { frequencyPenalty: s.frequencyPenalty } : {}),
      ...(s.presencePenalty !== undefined ? { presencePenalty: s.presencePenalty } : {}),
      ...(s.logitBias ? { logitBias: s.logitBias } : {}),
    };
  }
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
  /** The chunks after the text: the finish reason, then whatever else the caller asked for. */
  last: (r: GenerateResult) => unknown[];
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
    for (const o of shape ? shape.last(r) : [body(r)]) write(o);
    res.write("data: [DONE]\n\n");
    res.end();
  } catch (err) {
    if (!res.headersSent) throw err;
    const e = asTorporError(err);
    write(e.toJSON());
    res.end();
  }
}
