// When a runtime pool goes to zero replicas and when it comes back, as pure functions of the pool
// (its Deployment) and the sessions of its model. A pool whose sessions all sleep gives back its
// nodes' memory and GPUs; the next request (or a kubectl patch to InMemory) brings it back, and
// the session rehydrates on whichever new pod it is placed on: every pod mounts the volume.
import type { V1Deployment } from "@kubernetes/client-node";
import { WAKE_ANNOTATION, type InferenceSession } from "../contract/inference-session.js";
import { AWAKE_REPLICAS_ANNOTATION, SCALE_TO_ZERO_AFTER_ANNOTATION, SCALED_TO_ZERO_AT_ANNOTATION, WOKEN_AT_ANNOTATION } from "../contract/runtime-pool.js";
import { decideTransition } from "./decisions.js";

export interface PoolState {
  name: string;
  namespace: string;
  model: string;
  replicas: number;
  /** Pods Ready (the Deployment's status): a pool still starting or rolling is not put to sleep. */
  readyReplicas: number;
  /** 0: the pool never scales to zero. */
  afterMs: number;
  awakeReplicas: number;
  scaledToZeroAt?: number;
  wokenAt?: number;
  /** The Deployment's creation: a new pool's idleness counts from it, not from the epoch. */
  createdAt?: number;
  /**
   * When the pool last became Available (its Deployment condition). Idleness counts from there
   * too: a pool woken for a request is not idle while its pods start, however short the policy,
   * and the request it woke for is served once they are Ready.
   */
  availableAt?: number;
}

export type PoolAction =
  | { kind: "none" }
  /** A pool that scales to zero has its replica count from the operator alone (the chart leaves it out). */
  | { kind: "resize"; replicas: number }
  | { kind: "sleep"; idleSinceMs: number }
  | { kind: "wake"; replicas: number; why: string };

const time = (v: string | undefined) => {
  const t = Date.parse(v ?? "");
  return Number.isFinite(t) ? t : undefined;
};

/** A Deployment's pool state; undefined when it names no model. */
export function poolOf(d: V1Deployment): PoolState | undefined {
  const model = d.metadata?.labels?.["torpor.dev/model"];
  if (!model || !d.metadata?.name) return undefined;
  const a = d.metadata.annotations ?? {};
  const after = Number(a[SCALE_TO_ZERO_AFTER_ANNOTATION] ?? 0);
  const awake = Number(a[AWAKE_REPLICAS_ANNOTATION] ?? 1);
  const scaledToZeroAt = time(a[SCALED_TO_ZERO_AT_ANNOTATION]);
  const wokenAt = time(a[WOKEN_AT_ANNOTATION]);
  const createdAt = d.metadata.creationTimestamp ? new Date(d.metadata.creationTimestamp).getTime() : undefined;
  const available = d.status?.conditions?.find((c) => c.type === "Available" && c.status === "True")?.lastTransitionTime;
  const availableAt = available ? new Date(available).getTime() : undefined;
  return {
    name: d.metadata.name, namespace: d.metadata.namespace ?? "", model,
    replicas: d.spec?.replicas ?? 1,
    readyReplicas: d.status?.readyReplicas ?? 0,
    afterMs: Number.isFinite(after) && after > 0 ? after * 1000 : 0,
    awakeReplicas: Number.isInteger(awake) && awake >= 0 ? awake : 1,
    ...(scaledToZeroAt !== undefined ? { scaledToZeroAt } : {}),
    ...(wokenAt !== undefined ? { wokenAt } : {}),
    ...(createdAt !== undefined && Number.isFinite(createdAt) ? { createdAt } : {}),
    ...(availableAt !== undefined && Number.isFinite(availableAt) ? { availableAt } : {}),
  };
}

/** Asleep: at zero because the operator put it there (a pool a person scaled to zero stays theirs). */
export const isAsleep = (p: PoolState) => p.replicas === 0 && p.scaledToZeroAt !== undefined;

/**
 * Stopped: at zero because a person put it there, and without a scale-to-zero policy (under one,
 * the operator would restore its replicas): no request brings it back.
 */
export const isStopped = (p: PoolState) => p.replicas === 0 && p.scaledToZeroAt === undefined && p.afterMs === 0;

/**
 * Why an asleep pool must come back for this session, or undefined: a request after the pool
 * went to sleep, or a spec.residency InMemory not yet carried out (pre-warm). What the pods were
 * doing as they went (in memory, handing off on SIGTERM) is not a reason: they are saving it.
 * Deleting sessions need no runtime: the operator's cleanup pod deletes their files.
 */
export function wakeReason(s: InferenceSession, asleepSince: number, now: number): string | undefined {
  if (s.metadata.deletionTimestamp) return undefined;
  const woken = wokenAt(s, now);
  if (woken !== undefined && woken >= asleepSince) return `a request for ${s.metadata.namespace}/${s.metadata.name}`;
  return preWarmReason(s);
}

/** A kubectl patch to spec.residency InMemory not yet carried out (decideTransition would rehydrate it). */
function preWarmReason(s: InferenceSession): string | undefined {
  return decideTransition(s, s.status?.residency ?? "NotCreated") === "rehydrate" ? `${s.metadata.namespace}/${s.metadata.name} asks for spec.residency InMemory` : undefined;
}

/** Clock skew allowed between the gateway and the operator. */
const SKEW_MS = 60_000;

/**
 * When a request last woke the session. Anyone who may edit the session may write the annotation:
 * a time in the future would otherwise wake the pool again after every sleep, or keep it up.
 */
function wokenAt(s: InferenceSession, now: number): number | undefined {
  const t = time(s.metadata.annotations?.[WAKE_ANNOTATION]);
  return t !== undefined && t <= now + SKEW_MS ? t : undefined;
}

/** Why an awake pool must stay up for this session, or undefined (requests count as activity instead). */
export function keepAwakeReason(s: InferenceSession): string | undefined {
  if (s.metadata.deletionTimestamp) return undefined;
  const st = s.status;
  if (st?.residency === "InMemory") return "a session is in memory";
  if (st?.phase === "Hibernating" || st?.phase === "Rehydrating" || st?.phase === "HandingOff") return `a session is ${st.phase}`;
  return preWarmReason(s);
}

/** The last moment the session did anything: a request, a hibernation, a wake. */
function lastActivity(s: InferenceSession, now: number): number {
  return Math.max(0, time(s.status?.lastActivityTime) ?? 0, time(s.status?.lastHibernation?.time) ?? 0, wokenAt(s, now) ?? 0);
}

/** What to do with the pool, given every session of its model (any namespace). */
export function decidePoolScale(pool: PoolState, sessions: InferenceSession[], now: number): PoolAction {
  const mine = sessions.filter((s) => s.spec.model === pool.model);
  // Without the policy the chart sets the replicas, and a person's `kubectl scale` stands.
  if (pool.afterMs === 0 && !isAsleep(pool)) return { kind: "none" };
  if (isAsleep(pool)) {
    for (const s of mine) {
      const why = wakeReason(s, pool.scaledToZeroAt!, now);
      if (why && pool.awakeReplicas > 0) return { kind: "wake", replicas: pool.awakeReplicas, why };
    }
    return { kind: "none" };
  }
  if (pool.replicas !== pool.awakeReplicas) return { kind: "resize", replicas: pool.awakeReplicas };
  // At zero with awake-replicas 0 (disabled by values); starting or rolling: not now.
  if (pool.replicas === 0 || pool.readyReplicas < pool.replicas) return { kind: "none" };
  if (mine.some((s) => keepAwakeReason(s) !== undefined)) return { kind: "none" };
  const idleSinceMs = Math.max(pool.wokenAt ?? 0, pool.createdAt ?? 0, pool.availableAt ?? 0, ...mine.map((s) => lastActivity(s, now)));
  return now - idleSinceMs >= pool.afterMs ? { kind: "sleep", idleSinceMs } : { kind: "none" };
}
