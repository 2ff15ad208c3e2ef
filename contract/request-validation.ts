// Validation of request bodies: every problem becomes a 400 naming the field, never a 5xx.
import type { ChatHistoryItem } from "node-llama-cpp";
import { TorporError } from "./errors.js";

type Json = Record<string, unknown>;

const bad = (field: string, problem: string): TorporError =>
  new TorporError("bad_request", `${field}: ${problem}`, { field });

export function asObject(body: unknown, what = "body"): Json {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw bad(what, "must be a JSON object");
  return body as Json;
}

export function optionalInt(o: Json, field: string, min: number, max: number): number | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw bad(field, `must be an integer between ${min} and ${max}`);
  return v;
}

export function optionalNumber(o: Json, field: string, min: number, max: number): number | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) throw bad(field, `must be a number between ${min} and ${max}`);
  return v;
}

export function optionalString(o: Json, field: string, maxLength: number): string | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw bad(field, "must be a string");
  if (v.length > maxLength) throw bad(field, `must be at most ${maxLength} characters`);
  return v;
}

export function optionalBool(o: Json, field: string): boolean | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw bad(field, "must be true or false");
  return v;
}

export interface SamplingRequest {
  maxTokens?: number;
  temperature: number;
  seed?: number;
  topP?: number;
  /** Stop sequences: generation ends before the first of them, which is not part of the answer. */
  stop?: string[];
  /** OpenAI's penalties, -2..2; absent or 0: no penalty at all (OpenAI's and llama-server's default). */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** OpenAI's `logit_bias`: [token id, bias -100..100]; -100 bans the token. Ids are the model's own. */
  logitBias?: Array<[number, number]>;
  stream: boolean;
  /** `stream_options.include_usage`: a last chunk with no choices that carries the usage. */
  streamUsage: boolean;
}

/** OpenAI's own limit on stop sequences. */
export const MAX_STOP_SEQUENCES = 4;

function optionalStop(o: Json): string[] | undefined {
  const v = o.stop;
  if (v === undefined || v === null) return undefined;
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.length > MAX_STOP_SEQUENCES || list.some((x) => typeof x !== "string" || x.length === 0 || x.length > 256)) {
    throw bad("stop", `must be a string or an array of at most ${MAX_STOP_SEQUENCES} non-empty strings of at most 256 characters`);
  }
  return list.length ? list as string[] : undefined;
}

/** A bound on `logit_bias` entries: a request cannot make every sampled token pay for a huge table. */
export const MAX_LOGIT_BIAS = 300;

function optionalLogitBias(o: Json): Array<[number, number]> | undefined {
  const v = o.logit_bias;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v)) throw bad("logit_bias", "must be an object mapping token ids to biases");
  const entries = Object.entries(v as Json);
  if (entries.length > MAX_LOGIT_BIAS) throw bad("logit_bias", `at most ${MAX_LOGIT_BIAS} tokens`);
  const list = entries.map(([key, bias]): [number, number] => {
    const token = Number(key);
    if (!/^(0|[1-9][0-9]{0,9})$/.test(key) || !Number.isSafeInteger(token)) throw bad("logit_bias", `${JSON.stringify(key)} is not a token id (a non-negative integer)`);
    if (typeof bias !== "number" || !Number.isFinite(bias) || bias < -100 || bias > 100) throw bad("logit_bias", `the bias of token ${key} must be a number between -100 and 100`);
    return [token, bias];
  }).filter(([, bias]) => bias !== 0);
  return list.length ? list : undefined;
}

function streamUsage(o: Json): boolean {
  const v = o.stream_options;
  if (v === undefined || v === null) return false;
  const opts = asObject(v, "stream_options");
  if (o.stream !== true) throw bad("stream_options", "only allowed with \"stream\": true");
  const include = opts.include_usage;
  if (include !== undefined && include !== null && typeof include !== "boolean") throw bad("stream_options.include_usage", "must be true or false");
  return include === true;
}

/**
 * OpenAI features a client may rely on that torpor does not serve: refused by name, never
 * ignored (a client asking for tool calls or JSON would otherwise get prose and not know why).
 */
function refuseUnsupported(o: Json): void {
  if (Array.isArray(o.tools) && o.tools.length > 0) throw bad("tools", "tool calls are not supported; send the conversation without tools");
  if (Array.isArray(o.functions) && o.functions.length > 0) throw bad("functions", "function calls are not supported");
  if (o.logprobs === true) throw bad("logprobs", "log probabilities are not supported");
  const format = o.response_format;
  if (format !== undefined && format !== null) {
    const type = typeof format === "object" && !Array.isArray(format) ? (format as Json).type : undefined;
    if (type !== "text") throw bad("response_format", "only {\"type\": \"text\"} is supported");
  }
}

/**
 * The OpenAI sampling fields we honour; temperature defaults to 0 (greedy) like a reproducible
 * server, and nothing else shapes the choice unless asked (no repetition penalty by default).
 */
export function parseSampling(o: Json, maxTokensCap: number): SamplingRequest {
  const maxTokens = optionalInt(o, "max_completion_tokens", 1, maxTokensCap) ?? optionalInt(o, "max_tokens", 1, maxTokensCap);
  const seed = optionalInt(o, "seed", 0, 2 ** 31 - 1);
  const topP = optionalNumber(o, "top_p", 0, 1);
  optionalInt(o, "n", 1, 1); // one choice per request: a session has one conversation
  refuseUnsupported(o);
  const stop = optionalStop(o);
  const frequencyPenalty = optionalNumber(o, "frequency_penalty", -2, 2) || undefined;
  const presencePenalty = optionalNumber(o, "presence_penalty", -2, 2) || undefined;
  const logitBias = optionalLogitBias(o);
  return {
    ...(maxTokens !== undefined ? { maxTokens } : {}),
    temperature: optionalNumber(o, "temperature", 0, 2) ?? 0,
    ...(seed !== undefined ? { seed } : {}),
    ...(topP !== undefined ? { topP } : {}),
    ...(stop ? { stop } : {}),
    ...(frequencyPenalty !== undefined ? { frequencyPenalty } : {}),
    ...(presencePenalty !== undefined ? { presencePenalty } : {}),
    ...(logitBias ? { logitBias } : {}),
    stream: optionalBool(o, "stream") ?? false,
    streamUsage: streamUsage(o),
  };
}

function messageText(content: unknown, field: string): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part, j) => {
      const p = asObject(part, `${field}[${j}]`);
      if (p.type !== "text" || typeof p.text !== "string") throw bad(`${field}[${j}]`, "only {type: \"text\", text} parts are supported");
      return p.text;
    }).join("");
  }
  throw bad(field, "must be a string or an array of text parts");
}

/** OpenAI `messages` -> node-llama-cpp chat history. The last message must come from the user. */
export function parseMessages(o: Json, maxMessages = 10_000): ChatHistoryItem[] {
  const raw = o.messages;
  if (!Array.isArray(raw) || raw.length === 0) throw bad("messages", "must be a non-empty array");
  if (raw.length > maxMessages) throw bad("messages", `at most ${maxMessages} messages`);
  const items = raw.map((m, i): ChatHistoryItem => {
    const msg = asObject(m, `messages[${i}]`);
    const text = messageText(msg.content, `messages[${i}].content`);
    switch (msg.role) {
      case "system":
      case "developer":
        return { type: "system", text };
      case "user":
        return { type: "user", text };
      case "assistant":
        return { type: "model", response: [text] };
      default:
        throw bad(`messages[${i}].role`, `must be one of system, developer, user, assistant (got ${JSON.stringify(msg.role)})`);
    }
  });
  if (items[items.length - 1]!.type !== "user") throw bad(`messages[${items.length - 1}].role`, "the last message must have role \"user\"");
  return items;
}

/** The `submit` route's prompt: a non-empty string. */
export function requiredPrompt(o: Json, maxLength: number): string {
  const prompt = optionalString(o, "prompt", maxLength);
  if (!prompt) throw bad("prompt", "required, a non-empty string");
  return prompt;
}

/** express.json()'s failures (too large, not JSON, bad charset) as the 4xx they are; undefined for anything else. */
export function bodyParserError(err: unknown): TorporError | undefined {
  const e = err as { type?: string; expose?: boolean; statusCode?: number; limit?: number; message?: string };
  if (e?.type === "entity.too.large") return new TorporError("payload_too_large", `request body exceeds the limit of ${e.limit} bytes`);
  if (e?.type === "entity.parse.failed") return new TorporError("bad_request", `body: not valid JSON (${e.message})`, { field: "body" });
  // Only body-parser's own client errors: other libraries' errors carry a `type` too (a failed
  // call to the API server is a FetchError of type "system"), and those are not the caller's fault.
  if (typeof e?.type === "string" && e.expose === true && (e.statusCode ?? 0) >= 400 && (e.statusCode ?? 0) < 500) return new TorporError("bad_request", e.message ?? "bad request body");
  return undefined;
}
