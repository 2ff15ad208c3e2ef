// Per-namespace limits on a shared runtime: one tenant cannot take every resident slot or ask for
// the largest contexts. TORPOR_NAMESPACE_LIMITS is JSON: {"team-a": {"maxContextSize": 8192,
// "maxResidentSessions": 4}, "*": {...}}; "*" applies to namespaces not listed.
import { TorporError } from "../../contract/errors.js";

export interface NamespaceLimit { maxContextSize?: number; maxResidentSessions?: number }

export class NamespaceLimits {
  constructor(private readonly limits: Record<string, NamespaceLimit> = {}) {}

  static parse(json: string | undefined): NamespaceLimits {
    if (!json) return new NamespaceLimits();
    let raw: unknown;
    try { raw = JSON.parse(json); } catch { throw new TorporError("bad_request", "TORPOR_NAMESPACE_LIMITS is not valid JSON"); }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new TorporError("bad_request", "TORPOR_NAMESPACE_LIMITS must be an object of namespace -> {maxContextSize, maxResidentSessions}");
    for (const [ns, l] of Object.entries(raw as Record<string, NamespaceLimit>)) {
      for (const k of ["maxContextSize", "maxResidentSessions"] as const) {
        const v = l?.[k];
        if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new TorporError("bad_request", `TORPOR_NAMESPACE_LIMITS["${ns}"].${k} must be a positive integer`);
      }
    }
    return new NamespaceLimits(raw as Record<string, NamespaceLimit>);
  }

  of(namespace: string): NamespaceLimit { return this.limits[namespace] ?? this.limits["*"] ?? {}; }

  checkContextSize(namespace: string, contextSize: number): void {
    const max = this.of(namespace).maxContextSize;
    if (max !== undefined && contextSize > max) {
      throw new TorporError("bad_request", `contextSize ${contextSize} exceeds the limit of ${max} tokens for namespace "${namespace}" on this runtime pool`, { field: "contextSize", limit: max });
    }
  }
}
