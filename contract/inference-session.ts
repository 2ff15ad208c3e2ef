// The InferenceSession API (torpor.dev/v1alpha1), shared by the operator, the gateway and tests.
// crd.ts builds the CRD's schema; test/unit/crd.test.ts proves the two list the same fields.
import type { Residency } from "./runtime-api.js";

export const GROUP = "torpor.dev";
export const VERSION = "v1alpha1";
export const KIND = "InferenceSession";
export const PLURAL = "inferencesessions";
export const FINALIZER = "torpor.dev/hibernation-files";
/**
 * Ready reason of a session its runtime pool refused to take at all (a contextSize past the pool's
 * maxContextSize, a namespace's limit): no pod holds it until its spec changes, so the gateway
 * answers its requests at once (409 session_invalid) instead of holding them.
 */
export const SPEC_INVALID_REASON = "SpecInvalid";

export type DesiredResidency = "InMemory" | "Hibernated";
/** What the runtime reports: the status mirrors it. */
export type ObservedResidency = Residency;
/** What is happening now; Idle when nothing is in flight. */
export type SessionPhase = "Pending" | "Idle" | "Hibernating" | "Rehydrating" | "Lost" | "HandingOff";

export interface InferenceSessionSpec {
  /** Runtime pool that serves the session (runtime pods labelled torpor.dev/model=<model>). Immutable. */
  model: string;
  residency?: DesiredResidency;
  contextSize?: number;
  systemPrompt?: string;
  hibernation?: HibernationPolicy;
}

export interface HibernationPolicy {
  /** Go-style duration (e.g. 15m, 1h30m): hibernate after this long without requests. */
  idleAfter?: string;
  /** Sub-path inside the namespace's folder on the hibernation volume. Immutable. */
  path?: string;
  /**
   * Write the state between turns while the session stays InMemory, so a crash (an OOM kill, a
   * lost node) loses at most that much. Unset: its runtime pool's policy (off unless the chart sets
   * one); set, it replaces the pool's, and `interval: 0s` without afterTurns turns checkpoints off.
   * Each checkpointed session keeps one state file (its KV cache, tens of MB to GBs) on the volume.
   */
  checkpoint?: CheckpointPolicy;
}

export interface CheckpointPolicy {
  /** After this many turns since the last checkpoint. */
  afterTurns?: number;
  /** Go-style duration: at most this long after a turn that is not yet checkpointed. */
  interval?: string;
}

export interface Condition {
  type: "Ready" | "Hibernated" | "Degraded";
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

export interface LastHibernation {
  file: string;
  bytes: number;
  /** bytes as a person reads it (67.5Mi), for `kubectl get`. */
  size?: string;
  tokenCount: number;
  /** SHA-256 of an unsealed state; sealed files carry AEAD tags instead. */
  sha256?: string;
  time: string;
  durationMs: number;
}

export interface InferenceSessionStatus {
  observedGeneration?: number;
  /**
   * The generation whose spec.residency the runtime was last seen to match. Behind
   * metadata.generation, the user's latest residency is still to be carried out, however many
   * reconciles (a pod replaced, a runtime unreachable) have observed it meanwhile.
   */
  appliedGeneration?: number;
  residency?: ObservedResidency;
  phase?: SessionPhase;
  conditions?: Condition[];
  pod?: string;
  podIP?: string;
  node?: string;
  tokenCount?: number;
  /** The context window the runtime gives the session: spec.contextSize, or its pool's default. */
  contextSize?: number;
  lastHibernation?: LastHibernation;
  /** `replayed`: the state could not be loaded (another llama.cpp version, say); the history was replayed instead. */
  lastRehydrate?: { time: string; durationMs: number; replayed?: string; reusedTokens?: number; restoreVerified?: boolean };
  lastActivityTime?: string;
  /** Set when the pod holding the session in memory disappeared: the live state since the last hibernation is gone. */
  liveStateLostAt?: string;
  /**
   * The placement epoch: raised by the operator (through the status subresource, so optimistic
   * concurrency keeps it monotonic) before every new placement. The runtime stamps it into what it
   * writes; older placements can no longer commit, and a runtime serving an older one refuses.
   */
  epoch?: number;
  /** Set while the session waits for the pod that held it to commit it (a hand-off). */
  handOffFrom?: string;
  /** The last crash that cost turns: the session came back from its last checkpoint. */
  lastLoss?: { time: string; tokensLost: number; checkpointTime?: string };
}

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  deletionTimestamp?: string;
  finalizers?: string[];
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  creationTimestamp?: string;
}

export interface InferenceSession {
  apiVersion: `${typeof GROUP}/${typeof VERSION}`;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: InferenceSessionSpec;
  status?: InferenceSessionStatus;
}

/** Every field, listed once; `satisfies` makes the compiler reject a missing or extra name. */
export const SPEC_FIELDS = { model: true, residency: true, contextSize: true, systemPrompt: true, hibernation: true } satisfies Record<keyof InferenceSessionSpec, true>;
export const HIBERNATION_FIELDS = { idleAfter: true, path: true, checkpoint: true } satisfies Record<keyof HibernationPolicy, true>;
export const CHECKPOINT_FIELDS = { afterTurns: true, interval: true } satisfies Record<keyof CheckpointPolicy, true>;
export const STATUS_FIELDS = {
  observedGeneration: true, appliedGeneration: true, residency: true, phase: true, conditions: true, pod: true, podIP: true, node: true, tokenCount: true, contextSize: true,
  lastHibernation: true, lastRehydrate: true, lastActivityTime: true, liveStateLostAt: true, epoch: true, handOffFrom: true, lastLoss: true,
} satisfies Record<keyof InferenceSessionStatus, true>;
export const LAST_HIBERNATION_FIELDS = { file: true, bytes: true, size: true, tokenCount: true, sha256: true, time: true, durationMs: true } satisfies Record<keyof LastHibernation, true>;

/**
 * Longest InferenceSession name. Kubernetes allows 253 characters, but a session's hibernation
 * files are named after it (`.<name>.<id>.state.tmp`, `<name>@e<epoch>.torpor.json`: up to 30
 * characters more) and a file name stops at 255 bytes: a longer name would serve but never save.
 */
export const MAX_SESSION_NAME_LENGTH = 200;

/** A pool's context size for sessions that name none, unless the chart's defaultContextSize says otherwise. */
export const DEFAULT_CONTEXT_SIZE = 4096;
export const MIN_CONTEXT_SIZE = 256;
export const MAX_CONTEXT_SIZE = 131072;

/** Parses Go-style durations (1h30m, 45s, 500ms); undefined for anything else. */
export function parseDuration(s: string): number | undefined {
  if (!/^([0-9]+(ms|s|m|h))+$/.test(s)) return undefined;
  let ms = 0;
  for (const [, n, unit] of s.matchAll(/([0-9]+)(ms|s|m|h)/g)) {
    ms += Number(n) * (unit === "ms" ? 1 : unit === "s" ? 1000 : unit === "m" ? 60_000 : 3_600_000);
  }
  return ms;
}

/** Set by the gateway, in the same patch that flips spec.residency to InMemory for a request. */
export const WAKE_ANNOTATION = "torpor.dev/woken-by-request-at";

/** Bytes in Kubernetes' binary quantity style, one decimal: 70828780 -> "67.5Mi". */
export function formatBytes(n: number): string {
  const units = ["", "Ki", "Mi", "Gi", "Ti"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n}` : `${n.toFixed(1)}${units[i]}`;
}
