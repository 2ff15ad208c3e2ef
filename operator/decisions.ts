// The controller's decisions as pure functions: (session, observed world) -> what to do, and
// (session, results) -> the status to write. No I/O here, so every branch is unit-tested.
import type { HibernateOutcome, SessionStatus as RuntimeSessionStatus } from "../contract/runtime-api.js";
import { NO_RUNTIME_POOL_REASON, POOL_STOPPED_REASON, SCALED_TO_ZERO_REASON } from "../contract/runtime-pool.js";
import { FINALIZER, SPEC_INVALID_REASON, WAKE_ANNOTATION, formatBytes, parseDuration, type Condition, type InferenceSession, type InferenceSessionStatus, type ObservedResidency, type SessionPhase } from "../contract/inference-session.js";

export interface RuntimePod {
  name: string;
  namespace: string;
  node: string;
  ip: string;
  port: number;
  model: string;
  ready: boolean;
  /** Sessions registered on it, as last reported by the runtime (placement uses it). */
  sessions?: number;
  /**
   * For a pod that is not Ready: until when a session it holds in memory waits for it to commit
   * (ms since the epoch). Terminating: its deletionTimestamp (the end of its grace period) plus a
   * margin; NotReady but not terminating: a bound after it turned NotReady.
   */
  handOffDeadline?: number;
  /** Being deleted: it may still commit what it holds, but will never serve again. */
  terminating?: boolean;
}

export type Placement =
  | { kind: "finalize"; pod?: RuntimePod }
  | { kind: "wait"; reason: "NoRuntimePod" | typeof SCALED_TO_ZERO_REASON | typeof NO_RUNTIME_POOL_REASON | typeof POOL_STOPPED_REASON; message: string }
  | {
    kind: "use"; pod: RuntimePod; register: boolean;
    /** The status says a runtime held the session in memory, and this pod is not known to hold it so (it must be registered again, or was found as the holder). */
    heldInMemory: boolean;
  };

export const isDeleting = (s: InferenceSession) => !!s.metadata.deletionTimestamp;
export const hasFinalizer = (s: InferenceSession) => (s.metadata.finalizers ?? []).includes(FINALIZER);

/** Least-loaded Ready pod of the session's model; ties broken by name so the choice is stable. */
export function choosePod(pods: RuntimePod[], model: string): RuntimePod | undefined {
  return pods.filter((p) => p.ready && p.model === model)
    .sort((a, b) => (a.sessions ?? 0) - (b.sessions ?? 0) || a.name.localeCompare(b.name))[0];
}

/** The Hibernated condition's reason for a session its pod saved as it went, while no pod has it. */
export const HANDED_OFF = "HandedOff";

/** In memory when its pod went, which saved it: status says Hibernated with reason HandedOff until it is placed again. */
export function handedOffInMemory(s: InferenceSession): boolean {
  return s.status?.residency === "Hibernated" && s.status.conditions?.some((c) => c.type === "Hibernated" && c.reason === HANDED_OFF) === true;
}

/**
 * Where the session lives. `registered` says whether its pod already knows it (so a healthy,
 * registered session costs no runtime write). `pools`: the models that have a runtime pool (a
 * Deployment), where known: a model outside it waits for a pool that nobody is starting. `stopped`:
 * the models whose pools a person scaled to zero, which nothing brings back on its own.
 */
export function decidePlacement(s: InferenceSession, pods: RuntimePod[], registered: boolean, poolAsleep = false, holder?: string, pools?: ReadonlySet<string>,
  stopped?: ReadonlySet<string>): Placement {
  // `holder`: the Ready pod found serving the session at its current epoch although status names
  // another (an operator died between its runtime calls and its status write): that is where it is.
  const onPod = (name: string | undefined) => pods.find((p) => p.name === name && p.ready && p.model === s.spec.model);
  const byStatus = onPod(s.status?.pod);
  const current = byStatus ?? onPod(holder);
  if (isDeleting(s)) {
    // Any Ready pod of the pool mounts the volume, so files can go even if the session never ran.
    // A session whose pool is gone (or never existed) must not keep its namespace from being
    // deleted: every runtime mounts the one hibernation volume, so any Ready one can clean up.
    const pod = current ?? choosePod(pods, s.spec.model) ?? pods.filter((p) => p.ready).sort((a, b) => a.name.localeCompare(b.name))[0];
    return pod ? { kind: "finalize", pod } : { kind: "finalize" };
  }
  const heldInMemory = s.status?.residency === "InMemory" || handedOffInMemory(s);
  // Same pod but the runtime does not know the session: its container restarted (an OOM kill, a crash).
  // heldInMemory here: it was in memory and is not known to be now (its container restarted, or
  // it was found on a holder that may have it hibernated).
  if (current) return { kind: "use", pod: current, register: !registered, heldInMemory: (!registered || !byStatus) && heldInMemory };
  const next = choosePod(pods, s.spec.model);
  if (!next) {
    if (poolAsleep) {
      return { kind: "wait", reason: SCALED_TO_ZERO_REASON, message: `the runtime pool of model "${s.spec.model}" is scaled to zero while its sessions sleep; the next request (or spec.residency InMemory) wakes it` };
    }
    // Pods of the model that are not Ready yet mean something runs it (pods outside a Deployment, say).
    if (pools && !pools.has(s.spec.model) && !pods.some((p) => p.model === s.spec.model)) {
      const served = [...pools].sort().map((m) => `"${m}"`).join(", ") || "none";
      return { kind: "wait", reason: NO_RUNTIME_POOL_REASON, message: `no runtime pool serves model "${s.spec.model}" (the pools here serve: ${served}); create the session with one of those models, or add a pool for it (the chart's models[])` };
    }
    // A pod of the model that is not being deleted may yet turn Ready (one outside a Deployment).
    if (stopped?.has(s.spec.model) && !pods.some((p) => p.model === s.spec.model && !p.terminating)) {
      return { kind: "wait", reason: POOL_STOPPED_REASON, message: `the runtime pool of model "${s.spec.model}" was scaled to 0 replicas by hand and has no scale-to-zero policy, so no request brings it back; scale its Deployment up (kubectl scale, or the chart's models[].replicas) to serve this session` };
    }
    return { kind: "wait", reason: "NoRuntimePod", message: `no Ready runtime pod serves model "${s.spec.model}" (pods labelled torpor.dev/model=${s.spec.model})` };
  }
  // Not "had a pod": a round with no Ready pod clears status.pod, but the residency still says InMemory.
  return { kind: "use", pod: next, register: true, heldInMemory };
}

/**
 * After registering a session that a runtime held in memory: if no hibernated state turned up on
 * the volume, the conversation is gone. A state that did turn up is the latest one (files are
 * deleted on rehydrate, so no turn can follow a state still on the volume): nothing was lost.
 */
export function liveStateLost(plan: { register: boolean; heldInMemory: boolean }, residencyAfterRegister: ObservedResidency): boolean {
  return plan.register && plan.heldInMemory && residencyAfterRegister === "NotCreated";
}

/**
 * The pod the session was placed on, once it has stopped being Ready (terminating, NotReady,
 * partitioned): the session is not served elsewhere until that pod has committed it (or said it
 * holds nothing), or is gone, or its hand-off deadline has passed (then fencing keeps a late write
 * from ever counting).
 */
export function handOffSource(s: InferenceSession, pods: RuntimePod[], now: number): RuntimePod | undefined {
  // Whatever status says: it lags the runtime by up to a poll, and a request may have just
  // rehydrated (consuming the files) or created the session there. Only that pod knows.
  if (isDeleting(s)) return undefined;
  const old = pods.find((p) => p.name === s.status?.pod && p.model === s.spec.model);
  if (!old || old.ready) return undefined;
  return old.handOffDeadline === undefined || now < old.handOffDeadline ? old : undefined;
}

/** The epoch of the next placement: one above anything the session has had. */
export const nextEpoch = (s: InferenceSession) => (s.status?.epoch ?? 0) + 1;

/**
 * After registering a session a runtime held in memory: a checkpoint turned up, but older than
 * what status last saw (a crash between checkpoints). Undefined when nothing was lost.
 */
export function checkpointLoss(s: InferenceSession, plan: { register: boolean; heldInMemory: boolean }, rt: RuntimeSessionStatus): { tokensLost: number; checkpointTime: string } | undefined {
  if (!plan.register || !plan.heldInMemory || rt.residency !== "Hibernated" || !rt.foundOnVolume) return undefined;
  const tokensLost = (s.status?.tokenCount ?? 0) - rt.foundOnVolume.tokenCount;
  return tokensLost > 0 ? { tokensLost, checkpointTime: rt.foundOnVolume.hibernatedAt } : undefined;
}

export type Transition = "hibernate" | "rehydrate" | undefined;

/**
 * Lazy: NotCreated stays NotCreated whatever is desired; the first request creates the context.
 * Hibernated desired is level-triggered. Pre-warming (rehydrate now) follows a spec change, or a
 * move: a session the runtime hibernated for idleness stays hibernated until a request comes, and
 * a session woken by a request is rehydrated by that request (so its caller learns it happened);
 * but one that was in memory when its pod went away (a rolling update, a drain, a restart that
 * found its checkpoint) was not asleep, and is put back in memory on its new pod, so that neither
 * `kubectl get` nor its next turn shows the move.
 */
export function decideTransition(s: InferenceSession, runtime: ObservedResidency, movedFromMemory = false): Transition {
  const desired = s.spec.residency ?? "InMemory";
  if (desired === "Hibernated" && runtime === "InMemory") return "hibernate";
  if (desired === "InMemory" && runtime === "Hibernated") {
    if (movedFromMemory) return "rehydrate";
    // Level-triggered: the InMemory intent of this generation has not been met yet. Once it has,
    // a later idle hibernation by the runtime is not undone.
    const specChanged = s.metadata.generation === undefined || s.metadata.generation !== s.status?.appliedGeneration;
    const wokenAt = Date.parse(s.metadata.annotations?.[WAKE_ANNOTATION] ?? "");
    const hibernatedAt = Date.parse(s.status?.lastHibernation?.time ?? "");
    const wokenByRequest = Number.isFinite(wokenAt) && (!Number.isFinite(hibernatedAt) || wokenAt >= hibernatedAt);
    return specChanged && !wokenByRequest ? "rehydrate" : undefined;
  }
  return undefined;
}

export interface Observation {
  now: Date;
  pod?: RuntimePod;
  runtime?: RuntimeSessionStatus;
  waiting?: { reason: string; message: string };
  liveStateLost?: boolean;
  /** An error from the runtime call this round (e.g. a refused state file). */
  error?: { reason: string; message: string };
  /** Waiting for this pod to commit the session before it moves. */
  handOffFrom?: RuntimePod;
  /** The session came back from a checkpoint older than its last known state. */
  loss?: { tokensLost: number; checkpointTime: string };
  /** What the pod that held the session committed when it gave it up (a hand-off). */
  committed?: HibernateOutcome;
}

function condition(prev: Condition[] | undefined, c: Omit<Condition, "lastTransitionTime">, now: Date): Condition {
  const before = prev?.find((x) => x.type === c.type);
  return { ...c, lastTransitionTime: before && before.status === c.status ? before.lastTransitionTime : now.toISOString() };
}

/**
 * Status when a placement failed on the way (the pod chosen did not answer: it was going too)
 * after the previous pod committed the session. Only this reconcile knows of that commit: without
 * this write, a pool left with no pod said InMemory, with nothing holding the session, until a pod
 * came back (found scaling a pool to zero by hand on cluster-up).
 */
export function statusAfterFailedPlacement(s: InferenceSession, o: { now: Date; committed: HibernateOutcome; pod: RuntimePod; err: unknown }): InferenceSessionStatus {
  const why = (o.err as Error)?.message ?? String(o.err);
  return computeStatus(s, {
    now: o.now, committed: o.committed,
    error: { reason: "RuntimeUnavailable", message: `runtime pod ${o.pod.name} did not answer (${why}); the session is saved on the volume and is placed again` },
  });
}

/**
 * Why status.contextSize is not spec.contextSize for a session in memory. The runtime moves a
 * session to a context of the new size before its next turn, but never below the conversation it
 * holds (it keeps its context); without a word, a user who shrank the spec to free memory saw the
 * old size stay with every condition green (found on cluster-up).
 */
export function contextSizeNote(want: number | undefined, rt: Pick<RuntimeSessionStatus, "residency" | "contextSize" | "tokenCount"> | undefined): string {
  if (want === undefined || !rt || rt.residency !== "InMemory" || rt.contextSize === want) return "";
  return want <= rt.tokenCount
    ? `; keeps its context of ${rt.contextSize} tokens: spec.contextSize ${want} does not hold the ${rt.tokenCount} tokens of the conversation (start a new session for a smaller context)`
    : `; moves to a context of ${want} tokens (spec.contextSize) before its next turn`;
}

/** Whether `pod` refused this very spec (generation) of the session at registration (SpecInvalid). */
export function refusedAsIs(s: InferenceSession, pod: string): boolean {
  const ready = s.status?.conditions?.find((c) => c.type === "Ready");
  return ready?.status === "False" && ready.reason === SPEC_INVALID_REASON && s.status?.pod === pod &&
    ready.observedGeneration !== undefined && ready.observedGeneration === s.metadata.generation;
}

/** A runtime error code (state_rejected, checksum_mismatch) as a condition/Event reason (ChecksumMismatch). */
export const reasonOf = (code: string) => code.split(/[_-]/).map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join("");

export function computeStatus(s: InferenceSession, o: Observation): InferenceSessionStatus {
  const prev = s.status ?? {};
  const gen = s.metadata.generation;
  const rt = o.runtime;
  const handedOff: ObservedResidency | undefined = o.committed ? (o.committed.outcome === "not-created" ? "NotCreated" : "Hibernated") : undefined;
  const residency: ObservedResidency = rt?.residency ?? handedOff ?? (o.liveStateLost ? (prev.lastHibernation ? "Hibernated" : "NotCreated") : prev.residency ?? "NotCreated");
  const liveStateLostAt = o.liveStateLost ? o.now.toISOString() : prev.liveStateLostAt;
  // A session of a pool scaled to zero is not pending anything: it sleeps until a request comes.
  let phase: SessionPhase = o.waiting ? (o.waiting.reason === SCALED_TO_ZERO_REASON ? "Idle" : "Pending") : o.handOffFrom ? "HandingOff" : rt?.phase === "Hibernating" || rt?.phase === "Rehydrating" ? rt.phase : "Idle";
  if (o.liveStateLost) phase = "Lost";
  const err = o.error ?? (rt?.lastError ? { reason: reasonOf(rt.lastError.reason ?? rt.lastError.code), message: rt.lastError.message } : undefined);
  const activity = rt?.lastActivity ?? prev.lastActivityTime;
  // Reported until the conversation is back in memory somewhere, or has had a turn since (a
  // new one, hibernated later, is not the loss again).
  const lost = !!liveStateLostAt && residency !== "InMemory" && !(activity !== undefined && Date.parse(activity) > Date.parse(liveStateLostAt));
  const r = rt?.lastRehydrate;
  const lastRehydrate = r ? {
    time: r.at, durationMs: Math.round(r.durationMs * 10) / 10, ...(r.replayed ? { replayed: r.replayed } : {}),
    ...(r.reusedTokens !== undefined ? { reusedTokens: r.reusedTokens } : {}), ...(r.restoreVerified !== undefined ? { restoreVerified: r.restoreVerified } : {}),
  } : prev.lastRehydrate;
  const unreused = lastRehydrate?.restoreVerified === false;
  const degraded = err
    ? { status: "True" as const, reason: err.reason, message: err.message }
    : unreused
      ? { status: "True" as const, reason: "RestoreNotReused", message: `the last rehydrate had only ${lastRehydrate?.reusedTokens} tokens reused: the next evaluation started below the restored position (a restore that did not take), so it re-evaluated the conversation` }
    : lost || o.liveStateLost
      ? { status: "True" as const, reason: "LiveStateLost", message: `the runtime holding the session in memory went away at ${liveStateLostAt} without saving it; the conversation starts again from scratch` }
      : { status: "False" as const, reason: "AsExpected", message: "" };
  // An error only makes the session unready when it cannot be served: its state is on the volume
  // and was refused. A failed hibernate leaves it in memory and serving.
  // A sleeping pool's session is servable: the gateway wakes the pool for the request and holds
  // it meanwhile (as Knative says Ready of a service scaled to zero). False there made the
  // quickstart's `kubectl wait --for=condition=Ready` on a new session time out on a sleeping pool.
  const ready = o.waiting
    ? { status: o.waiting.reason === SCALED_TO_ZERO_REASON ? "True" as const : "False" as const, reason: o.waiting.reason, message: o.waiting.message }
    : o.handOffFrom
      ? { status: "False" as const, reason: "HandOff", message: `waiting for pod ${o.handOffFrom.name}, which held the session in memory and is no longer Ready, to save it` }
    : err && residency !== "InMemory"
      ? { status: "False" as const, reason: err.reason, message: err.message }
      : { status: "True" as const, reason: residency === "NotCreated" ? "Placed" : residency, message: `served by pod ${o.pod?.name} on node ${o.pod?.node}${contextSizeNote(s.spec.contextSize, rt)}` };
  const h = rt?.lastHibernation ?? o.committed?.record;
  // Registered over a commit this status never recorded (saved on a SIGTERM while no operator ran:
  // a helm uninstall and install): what the runtime read of it.
  const found = residency === "Hibernated" && !h && !prev.lastHibernation ? rt?.foundOnVolume : undefined;
  const desired = s.spec.residency ?? "InMemory";
  // Saved by the pod that held it in memory as it went, and no runtime has it since: it goes
  // back into memory on its next pod, as a session moved in memory does (handedOffInMemory).
  const handedOffReason = !rt && residency === "Hibernated" && (o.committed ? o.committed.outcome === "hibernated" && prev.residency === "InMemory" : handedOffInMemory(s));
  const savedBytes = h?.bytes ?? prev.lastHibernation?.bytes ?? found?.bytes;
  const hibernated = residency === "Hibernated"
    ? {
      status: "True" as const, reason: handedOffReason ? HANDED_OFF : "Hibernated",
      message: `${savedBytes !== undefined ? `state on the volume (${savedBytes} bytes)` : "state on the volume"}${handedOffReason ? ": the pod that held it in memory saved it as it went; it goes back into memory on its next pod" : ""}`,
    }
    // Asked to sleep before its first request: it holds no memory, so the ask is met (a
    // `kubectl wait --for=condition=Hibernated` after the patch returns) and the first request
    // creates its context as for any new session.
    : residency === "NotCreated" && desired === "Hibernated" && !lost
      ? { status: "True" as const, reason: "NotCreated", message: "the session has no context yet, so nothing is in memory; its first request creates one" }
      : { status: "False" as const, reason: residency, message: "" };
  const lastHibernation = h
    ? { file: h.manifestFile, bytes: h.bytes, size: formatBytes(h.bytes), tokenCount: h.tokenCount, ...(h.sha256 ? { sha256: h.sha256 } : {}), time: h.hibernatedAt, durationMs: Math.round(h.durationMs * 10) / 10 }
    : prev.lastHibernation;
  const matches = desired === "Hibernated" ? residency !== "InMemory" : residency !== "Hibernated";
  const applied = rt && matches && gen !== undefined ? gen : prev.appliedGeneration;
  const out: InferenceSessionStatus = {
    ...(gen !== undefined ? { observedGeneration: gen } : {}),
    ...(applied !== undefined ? { appliedGeneration: applied } : {}),
    residency, phase,
    conditions: [
      condition(prev.conditions, { type: "Ready", ...ready, ...(gen !== undefined ? { observedGeneration: gen } : {}) }, o.now),
      condition(prev.conditions, { type: "Hibernated", ...hibernated, ...(gen !== undefined ? { observedGeneration: gen } : {}) }, o.now),
      condition(prev.conditions, { type: "Degraded", ...degraded, ...(gen !== undefined ? { observedGeneration: gen } : {}) }, o.now),
    ],
  };
  const pod = o.pod;
  if (prev.epoch !== undefined) out.epoch = prev.epoch;
  if (o.handOffFrom) out.handOffFrom = o.handOffFrom.name;
  const lastLoss = o.loss ? { time: o.now.toISOString(), ...o.loss } : prev.lastLoss;
  if (lastLoss) out.lastLoss = lastLoss;
  if (pod) { out.pod = pod.name; out.podIP = pod.ip; out.node = pod.node; }
  else if (!o.liveStateLost && prev.pod && !o.waiting) { out.pod = prev.pod; if (prev.podIP) out.podIP = prev.podIP; if (prev.node) out.node = prev.node; }
  if (rt && rt.residency === "InMemory") out.tokenCount = rt.tokenCount;
  // Nothing observed this round (a hand-off, an unreachable pod): what was last known stands.
  else if (!rt && prev.tokenCount !== undefined) out.tokenCount = prev.tokenCount;
  else if (lastHibernation) out.tokenCount = lastHibernation.tokenCount;
  else if (found) out.tokenCount = found.tokenCount;
  const contextSize = rt?.contextSize ?? prev.contextSize;
  if (contextSize) out.contextSize = contextSize;
  if (lastHibernation) out.lastHibernation = lastHibernation;
  if (lastRehydrate) out.lastRehydrate = lastRehydrate;
  if (activity) out.lastActivityTime = activity;
  if (liveStateLostAt) out.liveStateLostAt = liveStateLostAt;
  return out;
}

/**
 * Status equality ignoring key order, so unchanged reconciles write nothing; and ignoring the
 * top-level fields in `ignoring` (those the API server drops: see droppedFields).
 */
export function sameStatus(a: InferenceSessionStatus | undefined, b: InferenceSessionStatus, ignoring: ReadonlySet<string> = new Set()): boolean {
  const norm = (x: unknown): unknown => Array.isArray(x) ? x.map(norm)
    : x && typeof x === "object" ? Object.fromEntries(Object.entries(x).filter(([, v]) => v !== undefined).sort(([k1], [k2]) => k1.localeCompare(k2)).map(([k, v]) => [k, norm(v)]))
    : x;
  const top = (x: InferenceSessionStatus) => Object.fromEntries(Object.entries(x).filter(([k]) => !ignoring.has(k)));
  return JSON.stringify(norm(top(a ?? {}))) === JSON.stringify(norm(top(b)));
}

/**
 * Top-level status fields written but not stored: the API server prunes fields its CRD does not
 * know, which happens when the CRD is older than the operator (helm installs CRDs but never
 * upgrades them). Without noticing, every reconcile would write the same status again.
 */
export function droppedFields(written: InferenceSessionStatus, stored: InferenceSessionStatus | undefined): string[] {
  const kept = (stored ?? {}) as Record<string, unknown>;
  return Object.entries(written).filter(([k, v]) => v !== undefined && kept[k] === undefined).map(([k]) => k);
}
