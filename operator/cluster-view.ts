// The controller's cached view of the world: sessions and runtime pods from the informers, and
// what each runtime last reported. Everything here is rebuilt from the API server and the runtimes
// after a restart; nothing in it is the truth on its own.
import type { V1Pod } from "@kubernetes/client-node";
import { keyOf } from "../common/kube.js";
import { isReadyPod } from "../common/runtime-pods.js";
import type { InferenceSession } from "../contract/inference-session.js";
import { RuntimeClient } from "../contract/runtime-client.js";
import type { RuntimePod } from "./decisions.js";

export class ClusterView {
  readonly sessions = new Map<string, InferenceSession>();
  readonly pods = new Map<string, V1Pod>();
  /** Last runtime report per pod: session fingerprints (to enqueue changes) and counts (placement). */
  readonly reports = new Map<string, Map<string, string>>();
  /** Models whose runtime pool the operator scaled to zero (pool-scaler.ts keeps it current). */
  readonly asleepModels = new Set<string>();
  /** Placements decided whose status is not written yet, per pod name (see load()). */
  private readonly placingCount = new Map<string, number>();

  /**
   * @param notReadyHandOffMs how long a session held by a NotReady (not terminating) pod waits for
   * it to commit before it moves anyway: a probe blip must not move sessions, a dead node must not
   * strand them.
   */
  constructor(private readonly runtimeToken: string, private readonly notReadyHandOffMs = 30_000) {}

  client(pod: RuntimePod, timeoutMs = 120_000): RuntimeClient {
    return new RuntimeClient(`http://${pod.ip}:${pod.port}`, this.runtimeToken, timeoutMs);
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
