// Typed HTTP client for a runtime pod's API, used by the operator, the gateway and the tests.
import type { GenerateResult, HibernateOutcome, RuntimeInfo, SessionStatus, Wake } from "./runtime-api.js";
import type { HibernationFileEntry } from "../runtime/storage/hibernation-store.js";

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
}

export interface SubmitResponse {
  reply: string;
  finish_reason: GenerateResult["finishReason"];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  torpor: { rehydrated: boolean; rehydrate_ms: number | null; created: boolean };
}

export class RuntimeClient {
  constructor(readonly baseUrl: string, private readonly token: string, private readonly timeoutMs = 300_000) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body);
    const text = await res.text();
    const json = text ? JSON.parse(text) as Record<string, unknown> : {};
    if (!res.ok) {
      const err = (json.error ?? {}) as { code?: string; message?: string; details?: Record<string, unknown> };
      throw new RuntimeApiError(res.status, err.code ?? "unknown", err.message ?? `HTTP ${res.status}`, err.details);
    }
    return json as T;
  }

  raw(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
    return fetch(this.baseUrl + path, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}), ...headers },
      ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
  }

  private static path(ns: string, name: string): string {
    return `/v1/sessions/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  }

  info(): Promise<RuntimeInfo> { return this.request("GET", "/v1/runtime"); }
  register(ns: string, name: string, body: RegisterBody = {}): Promise<SessionStatus> { return this.request("PUT", RuntimeClient.path(ns, name), body); }
  status(ns: string, name: string): Promise<SessionStatus> { return this.request("GET", RuntimeClient.path(ns, name)); }
  list(): Promise<{ sessions: SessionStatus[] }> { return this.request("GET", "/v1/sessions"); }
  submit(ns: string, name: string, prompt: string, opts: { max_tokens?: number; temperature?: number } = {}): Promise<SubmitResponse> {
    return this.request("POST", `${RuntimeClient.path(ns, name)}/submit`, { prompt, ...opts });
  }
  hibernate(ns: string, name: string): Promise<HibernateOutcome> { return this.request("POST", `${RuntimeClient.path(ns, name)}/hibernate`); }
  rehydrate(ns: string, name: string): Promise<Wake & { status: SessionStatus }> { return this.request("POST", `${RuntimeClient.path(ns, name)}/rehydrate`); }
  delete(ns: string, name: string, path = ""): Promise<{ deleted: boolean; removedFiles: boolean }> {
    return this.request("DELETE", `${RuntimeClient.path(ns, name)}${path ? `?path=${encodeURIComponent(path)}` : ""}`);
  }
  files(): Promise<{ files: HibernationFileEntry[] }> { return this.request("GET", "/v1/hibernation-files"); }
}
