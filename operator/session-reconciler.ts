// One session's reconcile: read the observed session and the world (runtime pods, the runtime's
// view of the session), apply the pure decisions from decisions.ts idempotently, write status once.
// Apply and cleanup are separate paths; the finalizer protocol around them is in finalizer.ts.
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import type { EventRecorder } from "../common/events.js";
import { keyOf } from "../common/kube.js";
import type { Logger } from "../common/logger.js";
import { GROUP, PLURAL, VERSION, parseDuration, type InferenceSession } from "../contract/inference-session.js";
import type { HibernateOutcome, SessionStatus as RuntimeSessionStatus } from "../contract/runtime-api.js";
import { settingsDigest } from "../contract/session-settings.js";
import { RuntimeApiError } from "../contract/runtime-client.js";
import type { CleanupPods } from "./cleanup-pod.js";
import type { ClusterView } from "./cluster-view.js";
import { checkpointLoss, computeStatus, decidePlacement, decideTransition, handOffSource, liveStateLost, nextEpoch, reasonOf, refusedAsIs, sameStatus, droppedFields, statusAfterFailedPlacement, type Placement, type RuntimePod } from "./decisions.js";
import { Finalizer, type Requeue } from "./finalizer.js";
import type { OperatorMetrics } from "./metrics.js";
import { runtimeFingerprint } from "./runtime-monitor.js";

/** A runtime refusal already written to status and an Event: retried, not logged again. */
export class ReportedError extends Error {
  /** Runtime refusals (a rejected state file, a full disk) do not clear up in milliseconds. */
  readonly minRetryMs = 15_000;
  constructor(readonly runtimeError: RuntimeApiError) { super(runtimeError.message); this.name = "ReportedError"; }
}

export class SessionReconciler {
  private readonly custom: CustomObjectsApi;
  private readonly finalizer: Finalizer;
  /** Status fields the API server drops (an older CRD): a change to them alone writes nothing. */
  private readonly dropped = new Set<string>();

  constructor(kc: KubeConfig, private readonly view: ClusterView, private readonly events: EventRecorder,
    private readonly metrics: OperatorMetrics, private readonly log: Logger, private readonly cleanupPods?: CleanupPods) {
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.finalizer = new Finalizer(kc);
  }

  async reconcile(key: string): Promise<Requeue> {
    const s = this.view.sessions.get(key);
    if (!s) return undefined;
    const log = this.log.child({ namespace: s.metadata.namespace, name: s.metadata.name });
    const pods = this.view.runtimePods();
    let runtime: RuntimeSessionStatus | undefined;
    const current = pods.find((p) => p.name === s.status?.pod && p.ready);
    let holder: string | undefined;
    if (current) {
      try { runtime = await this.view.client(current).status(s.metadata.namespace, s.metadata.name); } catch (err) {
        if (!(err instanceof RuntimeApiError && err.code === "session_not_found")) throw err;
      }
    } else if (s.status?.residency === "InMemory" && s.status.epoch && !s.metadata.deletionTimestamp && !handOffSource(s, pods, Date.now())) {
      ({ holder, runtime } = await this.findHolder(s, pods));
    }
    const plan = decidePlacement(s, pods, !!runtime, this.view.asleepModels.has(s.spec.model), holder, this.view.pooledModels, this.view.stoppedModels);
    // Counted on its pod from the decision until its status names it: the other workers' placements
    // meanwhile see it, and spread.
    const release = plan.kind === "use" && plan.register ? this.view.reserve(plan.pod) : undefined;
    try {
      return await this.finalizer.run(s,
        // The pod it went to may have started going while it did (a pool scaled down: every pod
        // at once). That pod's watch event came before status named it, so it queued nothing here,
        // and the pod's SIGTERM save went unasked until the next resync: look again at once.
        () => this.apply(s, plan, pods, runtime, log).then((requeue) => requeue ?? (plan.kind === "use" && !this.view.stillReady(plan.pod) ? 100 : undefined)),
        () => this.cleanup(s, plan, log));
    } finally {
      release?.();
    }
  }

  /**
   * Before an in-memory session whose pod is gone is placed afresh: a Ready pod may already serve
   * it at its current epoch, if an operator registered and rehydrated it there and died before
   * writing status (a drain evicting operator and runtime together). Placed elsewhere, it would
   * find no file (the rehydrate consumed it), be reported lost, and that pod's copy dropped.
   */
  private async findHolder(s: InferenceSession, pods: RuntimePod[]): Promise<{ holder?: string; runtime?: RuntimeSessionStatus }> {
    const candidates = pods.filter((p) => p.ready && p.model === s.spec.model);
    const found = await Promise.all(candidates.map(async (p) => {
      const st = await this.view.client(p, 5000).status(s.metadata.namespace, s.metadata.name).catch(() => undefined);
      return st && st.epoch === s.status!.epoch && st.residency !== "NotCreated" ? { holder: p.name, runtime: st } : undefined;
    }));
    return found.find((x) => x !== undefined) ?? {};
  }

  /** Deletes the session's files through any Ready runtime (they share the volume), else a cleanup pod. */
  private async cleanup(s: InferenceSession, plan: Placement, log: Logger): Promise<{ done: boolean; requeue?: Requeue }> {
    if (plan.kind !== "finalize" || !plan.pod) {
      if (!this.cleanupPods) {
        log.info("waiting for a Ready runtime pod to delete the session's hibernation files (no cleanup pod configured)");
        return { done: false, requeue: 5000 };
      }
      const state = await this.cleanupPods.ensure(s);
      if (state === "done") { log.info("hibernation files removed by a cleanup pod; finalizer released"); return { done: true }; }
      if (state === "failed") this.events.record(s, "Warning", "CleanupFailed", "the cleanup pod could not delete the session's hibernation files; retrying");
      return { done: false, requeue: 2000 };
    }
    await this.view.client(plan.pod).delete(s.metadata.namespace, s.metadata.name, s.spec.hibernation?.path ?? "");
    log.info("hibernation files removed; finalizer released");
    return { done: true };
  }

  private async apply(s: InferenceSession, plan: Placement, pods: RuntimePod[], observed: RuntimeSessionStatus | undefined, log: Logger): Promise<Requeue> {
    const { namespace, name } = s.metadata;
    const now = new Date();
    if (plan.kind === "finalize") return undefined;
    const from = handOffSource(s, pods, now.getTime());
    // What the previous pod committed: status says so at once, even with no pod to go to yet (a
    // pool scaled down by hand said InMemory, with nothing holding it, until a pod came back).
    let committed: HibernateOutcome | undefined;
    if (from && !(plan.kind === "use" && plan.pod.name === from.name)) {
      const handedOff = await this.handOff(s, from, log);
      if (!handedOff) {
        await this.writeStatus(s, computeStatus(s, { now, handOffFrom: from }));
        return 500;
      }
      if (handedOff !== true) committed = handedOff;
    }
    if (plan.kind === "wait") {
      await this.writeStatus(s, computeStatus(s, { now, waiting: plan, ...(committed ? { committed } : {}) }));
      return 10_000;
    }
    // The same spec was refused by the same pod: asking again would only take another epoch and
    // record another Warning. A new spec (generation) or another pod (a pool's new settings roll
    // its pods) asks again.
    if (plan.register && refusedAsIs(s, plan.pod.name)) return undefined;
    let runtime = observed;
    const previousPod = s.status?.pod;
    let lost = false;
    let loss: ReturnType<typeof checkpointLoss>;
    const c = this.view.client(plan.pod);
    try {
      if (plan.register) {
        // The epoch is durable before any runtime hears of it; a conflict here means another
        // reconcile (or operator) got there first, and this one starts over.
        const epoch = nextEpoch(s);
        s = await this.writeStatus(s, { ...s.status, epoch });
        runtime = await c.register(namespace, name, { ...registerBody(s), epoch }).catch((err: unknown) => {
          // Refused outright: nothing holds the session until its spec changes (SPEC_INVALID_REASON).
          if (err instanceof RuntimeApiError && err.status === 400) {
            throw new RuntimeApiError(err.status, "spec_invalid", `runtime pod ${plan.pod.name} of model "${s.spec.model}" refused the session: ${err.message}; change the InferenceSession's spec (kubectl edit)`, { reason: "spec_invalid" });
          }
          throw err;
        });
        const previous = pods.find((p) => p.name === s.status?.pod && p.name !== plan.pod.name);
        // Best effort: a previous holder that cannot hear it now is told by the runtime monitor later.
        if (previous?.ip) void this.view.client(previous, 5000).drop(namespace, name, epoch).catch(() => undefined);
        lost = liveStateLost(plan, runtime.residency);
        loss = checkpointLoss(s, plan, runtime);
        if (loss) {
          this.events.record(s, "Warning", "RestoredFromCheckpoint", `the runtime on pod ${s.status?.pod} went away without saving; the session continues from its checkpoint of ${loss.checkpointTime}, about ${loss.tokensLost} tokens behind`);
        }
        if (lost) {
          this.events.record(s, "Warning", "LiveStateLost", `the runtime on pod ${s.status?.pod} held the session in memory and lost it without saving; starting from scratch on pod ${plan.pod.name}`);
        }
        this.events.record(s, "Normal", "Placed", `placed on runtime pod ${plan.pod.name} (node ${plan.pod.node}); residency ${runtime.residency}`);
        log.info({ pod: plan.pod.name, previousPod: s.status?.pod, residency: runtime.residency, liveStateLost: lost, resourceVersion: s.metadata.resourceVersion }, "session registered on runtime pod");
      } else if (runtime?.settings !== undefined && runtime.settings !== settingsDigest(registerBody(s)) && s.status?.epoch) {
        // The spec changed on a placed session (its context size, idle policy, checkpoints, system
        // prompt): the same placement, told again. A runtime of an older release reports nothing
        // to compare, and keeps what it was told at placement.
        runtime = await c.register(namespace, name, { ...registerBody(s), epoch: s.status.epoch }).catch((err: unknown) => {
          // Refused (a namespace's limit, say): the session serves on with what it had.
          if (err instanceof RuntimeApiError && err.status === 400) {
            throw new RuntimeApiError(err.status, "spec_refused", `the runtime pool refused the new spec, and the session keeps its previous settings: ${err.message}`, { reason: "spec_refused" });
          }
          throw err;
        });
        log.info({ pod: plan.pod.name, generation: s.metadata.generation }, "session settings changed; sent to its runtime pod");
      }
      const moved = plan.heldInMemory && !lost;
      const transition = decideTransition(s, runtime!.residency, moved);
      if (transition && plan.pod.name !== s.status?.pod) {
        // Status names the new pod before anything changes there: a rehydrate consumes the file on
        // the volume, and an operator that died right after it (a drain evicting it with the
        // runtime) left status naming the old pod, so its successor placed the session afresh,
        // found no file, reported it lost and dropped the copy the new pod held.
        s = await this.writeStatus(s, computeStatus(s, { now, pod: plan.pod, runtime: runtime!, liveStateLost: lost, ...(loss ? { loss } : {}), ...(committed ? { committed } : {}) }));
      }
      if (transition) {
        this.metrics.transitions.inc({ transition });
        if (transition === "hibernate") {
          const out = await c.hibernate(namespace, name);
          if (out.record) this.events.record(s, "Normal", "Hibernated", `wrote ${out.record.bytes} bytes (${out.record.tokenCount} tokens) in ${out.record.durationMs.toFixed(0)} ms`);
        } else {
          // After a move only where there is room (a pod that took in another's sessions, in a
          // rolling update without surge, must not evict its own to pre-warm them) and only if its
          // idle policy, which the runtime knows (the session's or the pool's), would not have
          // hibernated it by now.
          const w = await c.rehydrate(namespace, name, moved ? { ifRoom: true, ifActive: true } : {});
          const fromPod = previousPod && previousPod !== plan.pod.name ? ` from pod ${previousPod}` : "";
          const why = moved ? `, where it moved while in memory${fromPod}` : "";
          if (w.rehydrated) this.events.record(s, "Normal", "Rehydrated", `restored in ${w.rehydrateMs?.toFixed(0)} ms on pod ${plan.pod.name}${why}`);
          const kept = w.deferred === "idle" ? `it has been idle longer than its idle policy allows` : `pod ${plan.pod.name} has no room without evicting a resident session`;
          if (w.deferred) this.events.record(s, "Normal", "KeptHibernated", `moved while in memory${fromPod}; ${kept}, so it stays hibernated until its next request`);
        }
        runtime = await c.status(namespace, name);
      }
    } catch (err) {
      if (!(err instanceof RuntimeApiError)) {
        if (committed) await this.writeStatus(s, statusAfterFailedPlacement(s, { now, committed, pod: plan.pod, err })).catch(() => undefined);
        throw err;
      }
      const error = { reason: reasonOf(String(err.details?.reason ?? err.code)), message: err.message };
      this.events.record(s, "Warning", error.reason, err.message);
      runtime = await c.status(namespace, name).catch(() => runtime);
      await this.writeStatus(s, computeStatus(s, { now, pod: plan.pod, ...(runtime ? { runtime } : {}), liveStateLost: lost, error, ...(committed ? { committed } : {}) }));
      this.actedOn(s, plan.pod, runtime);
      throw new ReportedError(err);
    }
    // A new spec.contextSize (or pool default) took effect on the session in memory: its next
    // turn moved it to a context of that size (runtime/sessions/session.ts, resizeIfAsked).
    const was = s.status?.contextSize;
    if (runtime?.residency === "InMemory" && was !== undefined && runtime.contextSize !== was && s.status?.pod === plan.pod.name) {
      this.events.record(s, "Normal", "ContextResized", `the session's context now holds ${runtime.contextSize} tokens (was ${was})`);
    }
    const r = runtime?.lastRehydrate;
    if (r?.restoreVerified === false && s.status?.lastRehydrate?.restoreVerified !== false) {
      this.events.record(s, "Warning", "RestoreNotReused", `the rehydrate of ${r.at} restored ${r.tokenCount} tokens but the next evaluation reused only ${r.reusedTokens}: the conversation was evaluated again`);
    }
    if (r?.replayed && r.at !== s.status?.lastRehydrate?.time) {
      this.events.record(s, "Warning", "StateReplayed", r.replayed === "model_changed"
        ? "the session was saved while its pool served another model, whose state this model cannot use; the session was rebuilt from its saved history, which the next turn evaluates again"
        : `the saved state could not be loaded (${r.replayed}); the session was rebuilt from its saved history, which the next turn evaluates again`);
    }
    // An error the runtime met on its own (a request that woke the session through the gateway,
    // its idle policy) gets the Event one met by this operator's own call gets above, once: status
    // turns Degraded with it below.
    const e = runtime?.lastError;
    if (e) {
      const reason = reasonOf(e.reason ?? e.code);
      const degraded = s.status?.conditions?.find((c) => c.type === "Degraded");
      if (!(degraded?.status === "True" && degraded.reason === reason && degraded.message === e.message)) this.events.record(s, "Warning", reason, e.message);
    }
    await this.writeStatus(s, computeStatus(s, { now, pod: plan.pod, ...(runtime ? { runtime } : {}), liveStateLost: lost, ...(loss ? { loss } : {}), ...(committed ? { committed } : {}) }));
    this.actedOn(s, plan.pod, runtime);
    return undefined;
  }

  /** Its status follows this view of the runtime: the monitor seeing the same queues nothing. */
  private actedOn(s: InferenceSession, pod: RuntimePod, runtime: RuntimeSessionStatus | undefined): void {
    if (runtime) this.view.actedOn.set(keyOf(s), `${pod.name}|${runtimeFingerprint(runtime)}`);
  }

  /**
   * Asks the pod that held the session to commit it for the next placement and to stop serving
   * it (joining the save its SIGTERM started, if any). Once nothing of the session is left in that
   * pod's memory: what it committed when it said, true when there is nothing to wait for (it is
   * gone, or never had it). False while it has yet to commit.
   */
  private async handOff(s: InferenceSession, from: RuntimePod, log: Logger): Promise<HibernateOutcome | boolean> {
    const budget = Math.max(2000, Math.min(60_000, (from.handOffDeadline ?? Date.now() + 30_000) - Date.now()));
    try {
      const out = await this.view.client(from, budget).handOff(s.metadata.namespace, s.metadata.name, nextEpoch(s));
      log.info({ from: from.name, outcome: out.outcome }, "hand-off: the previous pod committed the session");
      return out;
    } catch (err) {
      if (err instanceof RuntimeApiError && (err.code === "session_not_found" || err.code === "stale_epoch")) return true;
      // Nothing listens on the pod's address: its runtime is gone (a runtime draining on SIGTERM
      // keeps listening until it exits), so there is nothing left to wait for. A partition, by
      // contrast, times out or is unreachable, and waits for the deadline.
      if ((err as { code?: string }).code === "ECONNREFUSED") {
        log.info({ from: from.name }, "hand-off: the previous pod's runtime is gone; nothing to wait for");
        return true;
      }
      log.info({ from: from.name, err: String(err) }, "hand-off pending: the previous pod has not committed the session yet");
      return false;
    }
  }

  /** Writes status (optimistic concurrency on the session's resourceVersion); returns the session as stored. */
  private async writeStatus(s: InferenceSession, status: InferenceSession["status"]): Promise<InferenceSession> {
    if (sameStatus(s.status, status!, this.dropped)) return s;
    const done = this.view.startWrite(s, status!);
    let updated: InferenceSession;
    try {
      updated = await this.custom.replaceNamespacedCustomObjectStatus({
        group: GROUP, version: VERSION, plural: PLURAL, namespace: s.metadata.namespace, name: s.metadata.name,
        body: { ...s, status },
      }) as InferenceSession;
    } finally {
      done();
    }
    this.view.recordWrite(s, updated);
    // Written in full whenever something else changed, so a CRD applied since is noticed here.
    const dropped = droppedFields(status!, updated.status);
    const fresh = dropped.filter((f) => !this.dropped.has(f));
    const stored = (updated.status ?? {}) as Record<string, unknown>;
    for (const f of this.dropped) if (stored[f] !== undefined) this.dropped.delete(f);
    if (fresh.length) {
      for (const f of fresh) this.dropped.add(f);
      this.log.warn({ fields: fresh }, "the API server dropped status fields this operator writes: the InferenceSession CRD is older than the operator (helm never upgrades CRDs); run kubectl apply -f charts/torpor/crds/");
    }
    return updated;
  }
}

/** What a registration tells the runtime about the session: its spec's settings, and when it was last used. */
export function registerBody(s: InferenceSession) {
  const idle = s.spec.hibernation?.idleAfter ? parseDuration(s.spec.hibernation.idleAfter) : undefined;
  const ckpt = s.spec.hibernation?.checkpoint;
  const ckptInterval = ckpt?.interval ? parseDuration(ckpt.interval) : undefined;
  return {
    ...(ckpt?.afterTurns ? { checkpointAfterTurns: ckpt.afterTurns } : {}),
    // `interval: 0s` is sent as 0: the session's own policy then turns its pool's off.
    ...(ckptInterval !== undefined ? { checkpointIntervalSeconds: ckptInterval === 0 ? 0 : Math.max(1, Math.ceil(ckptInterval / 1000)) } : {}),
    // Unset: the pool's own default (the chart's defaultContextSize, the size its spare contexts have).
    ...(s.spec.contextSize ? { contextSize: s.spec.contextSize } : {}),
    ...(s.spec.systemPrompt ? { systemPrompt: s.spec.systemPrompt } : {}),
    ...(s.spec.hibernation?.path ? { path: s.spec.hibernation.path } : {}),
    ...(idle !== undefined ? { idleAfterSeconds: Math.ceil(idle / 1000) } : {}),
    // A move is not activity: the new pod's idle clock goes on from the last turn.
    ...(s.status?.lastActivityTime ? { lastActivity: s.status.lastActivityTime } : {}),
  };
}
