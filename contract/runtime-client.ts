// The one HTTP client for a runtime pod's API, used by the operator, the gateway, the testbed and
// the tests. node:http over a keep-alive pool: fetch (undici) with its web-stream bridge cost about
// a millisecond more per proxied request on the benchmark machine, the gateway's whole budget.
import http from "node:http";
import type { Conversation, GenerateResult, HibernateOutcome, HibernationFileEntry, RuntimeInfo, SessionStatus, Wake } from "./runtime-api.js";

const agent = new http.Agent({ keepAlive: true, maxSockets: 512, scheduling: "lifo" });

export class RuntimeApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly details?: Record<string, unknown>) {
    super(message);
    this.name = "RuntimeApiError";
  }
}

export interface RegisterBody {
  path?: string;
  contextSize?: number;
  systemPrompt?: string;
  idleAfterSeconds?: number;
  epoch?: number;
  checkpointAfterTurns?: number;
  checkpointIntervalSeconds?: number;
  /**
   * When the session was last used (RFC 3339, from its status). A session registered after a move
   * keeps its idle clock instead of starting it again: the move was not its user's activity.
   */
  lastActivity?: string;
}

export interface SubmitResponse {
  reply: string;
  finish_reason: GenerateResult["finishReason"];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  torpor: { rehydrated: boolean; rehydrate_ms: number | null; created: boolean };
}

/** A whole response read into memory (the admin API's replies are small). */
export interface BufferedResponse {
  status: number;
  ok: boolean;
  headers: { get(name: string): string | undefined };
  text(): Promise<string>;
  json(): Promise<unknown>;
}

export const sessionPath = (ns: string, name: string) => `/v1/sessions/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;

export class RuntimeClient {
  /** timeoutMs bounds the whole exchange, body included; 0 leaves it to the caller's signal (long streams). */
  constructor(readonly baseUrl: string, private readonly token: string, private readonly timeoutMs = 300_000) {}

  /** Sends a request; resolves with the response head while its body streams (the gateway pipes it on). */
  send(method: string, path: string, body?: unknown, opts: { headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<http.IncomingMessage> {
    const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    const signals = [opts.signal, this.timeoutMs > 0 ? AbortSignal.timeout(this.timeoutMs) : undefined].filter((x): x is AbortSignal => !!x);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    return new Promise((resolve, reject) => {
      const req = http.request(this.baseUrl + path, {
        method, agent, ...(signal ? { signal } : {}),
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(payload !== undefined ? { "content-type": "application/json", "content-length": String(Buffer.byteLength(payload)) } : {}),
          ...opts.headers,
        },
      }, resolve);
      req.once("error", reject);
      req.end(payload);
    });
  }

  async raw(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<BufferedResponse> {
    const res = await this.send(method, path, body, { headers });
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    const status = res.statusCode ?? 0;
    return {
      status, ok: status >= 200 && status < 300,
      headers: { get: (n) => { const v = res.headers[n.toLowerCase()]; return Array.isArray(v) ? v.join(", ") : v; } },
      text: async () => text,
      json: async () => JSON.parse(text) as unknown,
    };
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body);
    const text = await res.text();
    let json: Record<string, unknown> = {};
    try { json = text ? JSON.parse(text) as Record<string, unknown> : {}; } catch {
      throw new RuntimeApiError(res.status, "bad_gateway", `runtime answered HTTP ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`);
    }
    if (!res.ok) {
      const err = (json.error ?? {}) as { code?: string; message?: string; details?: Record<string, unknown> };
      throw new RuntimeApiError(res.status, err.code ?? "unknown", err.message ?? `HTTP ${res.status}`, err.details);
    }
    return json as T;
  }

  info(): Promise<RuntimeInfo> { return this.request("GET", "/v1/runtime"); }
  register(ns: string, name: string, body: RegisterBody = {}): Promise<SessionStatus> { return this.request("PUT", sessionPath(ns, name), body); }
  status(ns: string, name: string): Promise<SessionStatus> { return this.request("GET", sessionPath(ns, name)); }
  conversation(ns: string, name: string): Promise<Conversation> { return this.request("GET", `${sessionPath(ns, name)}/messages`); }
  list(): Promise<{ sessions: SessionStatus[] }> { return this.request("GET", "/v1/sessions"); }
  submit(ns: string, name: string, prompt: string, opts: { max_tokens?: number; temperature?: number } = {}): Promise<SubmitResponse> {
    return this.request("POST", `${sessionPath(ns, name)}/submit`, { prompt, ...opts });
  }
  hibernate(ns: string, name: string): Promise<HibernateOutcome> { return this.request("POST", `${sessionPath(ns, name)}/hibernate`); }
  /**
   * `ifRoom`: only if no resident session must be evicted for it (else `deferred: "no_room"`).
   * `ifActive`: only if the session was used within its idle policy (else `deferred: "idle"`); such
   * a pre-warm does not count as activity.
   */
  rehydrate(ns: string, name: string, opts: { ifRoom?: boolean; ifActive?: boolean } = {}): Promise<Wake & { status: SessionStatus }> {
    const q = [opts.ifRoom ? "ifRoom=true" : "", opts.ifActive ? "ifActive=true" : ""].filter(Boolean).join("&");
    return this.request("POST", `${sessionPath(ns, name)}/rehydrate${q ? `?${q}` : ""}`);
  }
  delete(ns: string, name: string, path = ""): Promise<{ deleted: boolean; removedFiles: boolean }> {
    return this.request("DELETE", `${sessionPath(ns, name)}${path ? `?path=${encodeURIComponent(path)}` : ""}`);
  }
  handOff(ns: string, name: string, epoch: number): Promise<HibernateOutcome> { return this.request("POST", `${sessionPath(ns, name)}/handoff`, { epoch }); }
  drop(ns: string, name: string, epoch: number): Promise<{ dropped: boolean }> { return this.request("POST", `${sessionPath(ns, name)}/drop`, { epoch }); }
  files(): Promise<{ files: HibernationFileEntry[] }> { return this.request("GET", "/v1/hibernation-files"); }
}
