// The controller's cached view of the world: sessions and runtime pods from the informers, and
// what each runtime last reported. Everything here is rebuilt from the API server and the runtimes
// after a restart; nothing in it is the truth on its own.
import type { V1Pod } from "@kubernetes/client-node";
import { keyOf } from "../common/kube.js";
import { isReadyPod } from "../common/runtime-pods.js";
import type { InferenceSession, InferenceSessionStatus } from "../contract/inference-session.js";
import { RuntimeClient } from "../contract/runtime-client.js";
import { sameStatus, type RuntimePod } from "./decisions.js";

export class ClusterView {
  readonly sessions = new Map<string, InferenceSession>();
  readonly pods = new Map<string, V1Pod>();
  /** Last runtime report per pod: session fingerprints (to enqueue changes) and counts (placement). */
  readonly reports = new Map<string, Map<string, string>>();
  /** Per session, `pod|fingerprint` of the runtime's view its last reconcile acted on (runtime-monitor.ts). */
  readonly actedOn = new Map<string, string>();
  /** Models whose runtime pool the operator scaled to zero (pool-scaler.ts keeps it current). */
  readonly asleepModels = new Set<string>();
  /** Models that have a runtime pool, a Deployment of the release (pool-scaler.ts keeps it current). */
  readonly pooledModels = new Set<string>();
  /** Models whose every pool a person scaled to zero, with no policy to bring it back (pool-scaling.ts isStopped). */
  readonly stoppedModels = new Set<string>();
  /** Placements decided whose status is not written yet, per pod name (see load()). */
  private readonly placingCount = new Map<string, number>();
  /** Per session, the status of this operator's write under way (its echo may come before its response). */
  private readonly writing = new Map<string, InferenceSessionStatus>();
  /** Per session, the resourceVersions of this operator's own status writes whose watch events have not come back yet, oldest first. */
  private readonly ownWrites = new Map<string, string[]>();

  /**
   * @param notReadyHandOffMs how long a session held by a NotReady (not terminating) pod waits for
   * it to commit before it moves anyway: a probe blip must not move sessions, a dead node must not
   * strand them.
   */
  constructor(private readonly runtimeToken: string, private readonly notReadyHandOffMs = 30_000) {}

  client(pod: RuntimePod, timeoutMs = 120_000): RuntimeClient {
    return new RuntimeClient(`http://${pod.ip}:${pod.port}`, this.runtimeToken, timeoutMs);
  }

  /** Whether the pod is Ready in the latest view (a watch event may have come during a reconcile). */
  stillReady(pod: RuntimePod): boolean {
    const p = this.pods.get(`${pod.namespace}/${pod.name}`);
    return !!p && isReadyPod(p);
  }

  runtimePods(): RuntimePod[] {
    // Only a placement on a new pod reads the counts: the reconcile of a placed session (nearly
    // every one) must not walk the whole session cache for them.
    let load: Map<string, number> | undefined;
    const loadOf = (key: string) => (load ??= this.load()).get(key) ?? 0;
    return [...this.pods.values()].map((p): RuntimePod => {
      const ready = isReadyPod(p);
      const port = p.spec?.containers.flatMap((c) => c.ports ?? []).find((x) => x.name === "http")?.containerPort ?? 8080;
      const key = keyOf(p);
      const out: RuntimePod = {
        name: p.metadata!.name!, namespace: p.metadata!.namespace!, node: p.spec?.nodeName ?? "", ip: p.status?.podIP ?? "", port,
        model: p.metadata?.labels?.["torpor.dev/model"] ?? "", ready, get sessions() { return loadOf(key); },
      };
      if (!ready) out.handOffDeadline = this.handOffDeadline(p);
      if (p.metadata?.deletionTimestamp) out.terminating = true;
      return out;
    });
  }

  /**
   * Sessions per pod (namespace/name) for placement: what its runtime last reported, those whose
   * status names it since, and placements on their way. The report alone lags by a poll: a burst of
   * new sessions, or a rolling update's moves, all went to the one pod that looked empty.
   */
  private load(): Map<string, number> {
    const keys = new Map<string, Set<string>>();
    const add = (pod: string, session: string) => { let set = keys.get(pod); if (!set) keys.set(pod, set = new Set()); set.add(session); };
    for (const [pod, report] of this.reports) for (const k of report.keys()) add(pod, k);
    // Status names a pod by name; runtime pods share the release namespace.
    const podNamespace = new Map([...this.pods.values()].map((p) => [p.metadata!.name!, p.metadata!.namespace!]));
    for (const [k, s] of this.sessions) {
      const ns = podNamespace.get(s.status?.pod ?? "");
      if (ns && !s.metadata.deletionTimestamp) add(`${ns}/${s.status!.pod}`, k);
    }
    const out = new Map<string, number>();
    for (const [pod, set] of keys) out.set(pod, set.size);
    for (const [pod, n] of this.placingCount) out.set(pod, (out.get(pod) ?? 0) + n);
    return out;
  }

  /** Counts a placement on `pod` until the returned release is called (once its status names the pod, or it failed). */
  reserve(pod: RuntimePod): () => void {
    const key = `${pod.namespace}/${pod.name}`;
    this.placingCount.set(key, (this.placingCount.get(key) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.placingCount.get(key) ?? 1) - 1;
      if (n > 0) this.placingCount.set(key, n); else this.placingCount.delete(key);
    };
  }

  private handOffDeadline(p: V1Pod): number | undefined {
    // No address: nothing can be asked of it, and it never ran anything that could be saved.
    if (!p.status?.podIP) return 0;
    // deletionTimestamp is the end of the grace period: SIGTERM's saves finish before it.
    if (p.metadata?.deletionTimestamp) return new Date(p.metadata.deletionTimestamp).getTime() + 5_000;
    const since = (p.status.conditions ?? []).find((c) => c.type === "Ready")?.lastTransitionTime;
    return since ? new Date(since).getTime() + this.notReadyHandOffMs : 0;
  }

  /**
   * Puts what a write returned into the cache, ahead of its watch event, so the next reconcile
   * does not act on a stale status; but only while the cache still holds what the write was based
   * on. A newer object may already have come by watch (a delete during the write): putting the
   * write's older one over it hid the deletion for good, every later status write conflicted, and
   * the session never lost its finalizer (seen once in the operator suite, a delete right after
   * placement).
   */
  recordWrite(base: InferenceSession, written: InferenceSession): void {
    const key = keyOf(written);
    const cached = this.sessions.get(key);
    if (!cached || cached.metadata.resourceVersion === base.metadata.resourceVersion) this.sessions.set(key, written);
    const own = this.ownWrites.get(key) ?? [];
    // Bounded: a watch that restarts delivers only the latest object, so some echoes never come.
    own.push(written.metadata.resourceVersion!);
    this.ownWrites.set(key, own.slice(-16));
  }

  /**
   * Takes a session from the watch; true when it needs a reconcile. The echo of this operator's
   * own status write carries nothing its writer did not know (the reconcile that wrote it either
   * finished or asked for its own retry), so it queues nothing: queued, it started the next
   * reconcile at once, bypassing the retry backoff, and any status that changed at each failed
   * attempt looped (a Degraded session was rewritten ~100 times a second). An echo older than a
   * later write of ours already cached does not replace it either: the next reconcile would act on
   * the older status and conflict.
   */
  observe(s: InferenceSession): boolean {
    const key = keyOf(s);
    const rv = s.metadata.resourceVersion ?? "";
    const own = this.ownWrites.get(key);
    const at = own?.indexOf(rv) ?? -1;
    const pending = this.writing.get(key);
    const cached = this.sessions.get(key);
    if (at < 0 && pending && cached && sameStatus(s.status, pending) && sameIntent(cached, s)) {
      // The echo of the write under way, ahead of its response: nothing but our status changed.
      this.sessions.set(key, s);
      return false;
    }
    if (!own || at < 0) {
      this.ownWrites.delete(key);
      this.sessions.set(key, s);
      return true;
    }
    const cachedAt = own.indexOf(cached?.metadata.resourceVersion ?? "");
    if (cachedAt < at) this.sessions.set(key, s);
    own.splice(0, at + 1);
    if (!own.length) this.ownWrites.delete(key);
    return false;
  }

  /** Marks a status write of this operator under way until the returned function is called. */
  startWrite(s: InferenceSession, status: InferenceSessionStatus): () => void {
    const key = keyOf(s);
    this.writing.set(key, status);
    return () => { if (this.writing.get(key) === status) this.writing.delete(key); };
  }

  forget(s: InferenceSession): void {
    this.sessions.delete(keyOf(s));
    this.ownWrites.delete(keyOf(s));
    this.actedOn.delete(keyOf(s));
  }

  /** Keys of the sessions of this model that no Ready pod serves (waiting for a placement). */
  sessionsWaitingFor(model: string): string[] {
    const ready = new Set([...this.pods.values()].filter(isReadyPod).map((p) => p.metadata?.name));
    return [...this.sessions].filter(([, s]) => s.spec.model === model && !s.metadata.deletionTimestamp && !ready.has(s.status?.pod)).map(([k]) => k);
  }

  /** Keys of the sessions whose status names this pod. */
  sessionsOn(podName: string | undefined): string[] {
    return [...this.sessions].filter(([, s]) => s.status?.pod === podName).map(([k]) => k);
  }
}

/** Same spec, deletion, finalizers, labels and annotations: what a reconcile acts on besides status. */
function sameIntent(a: InferenceSession, b: InferenceSession): boolean {
  const intent = (x: InferenceSession) => JSON.stringify([x.metadata.generation, x.metadata.deletionTimestamp, x.metadata.finalizers, x.metadata.labels, x.metadata.annotations, x.spec]);
  return intent(a) === intent(b);
}
