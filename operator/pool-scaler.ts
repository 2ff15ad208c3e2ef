// Scales runtime pools to zero while all their sessions sleep, and back on the next request
// (operator/pool-scaling.ts decides). Pools are the runtime Deployments of the release namespace;
// what the operator did is written on the Deployment (contract/runtime-pool.ts), nothing is kept
// here that a restart would lose.
import { AppsV1Api, type KubeConfig, type V1Deployment } from "@kubernetes/client-node";
import type { EventRecorder } from "../common/events.js";
import { RestartingInformer } from "../common/informer.js";
import { keyOf, mergePatch } from "../common/kube.js";
import type { Logger } from "../common/logger.js";
import type { RuntimePodScope } from "../common/runtime-pods.js";
import { SCALED_TO_ZERO_AT_ANNOTATION, WOKEN_AT_ANNOTATION } from "../contract/runtime-pool.js";
import type { ClusterView } from "./cluster-view.js";
import type { OperatorMetrics } from "./metrics.js";
import { decidePoolScale, isAsleep, isStopped, poolOf, type PoolState } from "./pool-scaling.js";

export class PoolScaler {
  private readonly deployments = new Map<string, V1Deployment>();
  private readonly apps: AppsV1Api;
  private informer?: RestartingInformer<V1Deployment>;
  private running = false;
  private again = false;

  constructor(
    private readonly kc: KubeConfig,
    private readonly view: ClusterView,
    private readonly scope: RuntimePodScope,
    private readonly log: Logger,
    private readonly events: EventRecorder,
    private readonly metrics: OperatorMetrics,
    /** Called after a pool's state changed, so sessions show it (Ready: ScaledToZero) at once. */
    private readonly onPoolChanged: (model: string) => void,
  ) {
    this.apps = kc.makeApiClient(AppsV1Api);
  }

  async start(): Promise<void> {
    const apps = this.apps;
    this.informer = new RestartingInformer<V1Deployment>(this.kc, `/apis/apps/v1/namespaces/${this.scope.namespace}/deployments`,
      () => apps.listNamespacedDeployment({ namespace: this.scope.namespace, labelSelector: this.scope.selector }), {
        upsert: (d) => { this.deployments.set(keyOf(d), d); this.publish(); },
        remove: (d) => { this.deployments.delete(keyOf(d)); this.publish(); },
      }, this.log, this.scope.selector);
    await this.informer.start();
  }

  async stop(): Promise<void> {
    await this.informer?.stop();
  }

  /** Models that have a pool, those whose pool the operator has scaled to zero, and those a person stopped. */
  private publish(): void {
    const sets = [this.view.asleepModels, this.view.pooledModels, this.view.stoppedModels];
    const before = sets.map((s) => new Set(s));
    for (const s of sets) s.clear();
    const running = new Set<string>();
    for (const d of this.deployments.values()) {
      const p = poolOf(d);
      if (!p) continue;
      this.view.pooledModels.add(p.model);
      if (isAsleep(p)) this.view.asleepModels.add(p.model);
      if (isStopped(p)) this.view.stoppedModels.add(p.model); else running.add(p.model);
    }
    // Stopped only when no other pool of the model runs (or sleeps, or has a policy).
    for (const m of running) this.view.stoppedModels.delete(m);
    for (const m of new Set([...before.flatMap((s) => [...s]), ...sets.flatMap((s) => [...s])])) {
      if (sets.some((s, i) => s.has(m) !== before[i]!.has(m))) this.onPoolChanged(m);
    }
  }

  /** One pass over every pool; overlapping calls fold into one more pass. */
  async tick(): Promise<void> {
    if (this.running) { this.again = true; return; }
    this.running = true;
    try {
      do {
        this.again = false;
        for (const d of [...this.deployments.values()]) {
          const pool = poolOf(d);
          if (!pool) continue;
          await this.reconcile(d, pool, Date.now()).catch((err: unknown) => {
            // Our cached Deployment was not the latest: the next pass acts on the newer one.
            if ((err as { code?: number }).code === 409) return;
            this.log.warn({ err: String(err), pool: pool.name }, "could not scale the runtime pool; retrying");
          });
        }
      } while (this.again);
    } finally {
      this.running = false;
    }
  }

  private async reconcile(d: V1Deployment, pool: PoolState, now: number): Promise<void> {
    const action = decidePoolScale(pool, [...this.view.sessions.values()], now);
    if (action.kind === "none") return;
    if (action.kind === "resize") {
      await this.patch(d, pool, action.replicas, {});
      this.done(d, pool, "resize", `scaled from ${pool.replicas} to the configured ${action.replicas} replicas (the operator owns the count of a pool that scales to zero)`);
      return;
    }
    if (action.kind === "wake") {
      await this.patch(d, pool, action.replicas, { [SCALED_TO_ZERO_AT_ANNOTATION]: null, [WOKEN_AT_ANNOTATION]: new Date(now).toISOString() });
      this.done(d, pool, "wake", `woken with ${action.replicas} replicas: ${action.why}`);
      return;
    }
    // Status lags the runtimes by a poll: the pods themselves say whether anything is in memory.
    for (const pod of this.view.runtimePods().filter((p) => p.ready && p.model === pool.model)) {
      const { sessions } = await this.view.client(pod, 5000).list();
      const busy = sessions.find((s) => s.residency === "InMemory" || s.phase !== "Idle");
      if (busy) return;
    }
    await this.patch(d, pool, 0, { [SCALED_TO_ZERO_AT_ANNOTATION]: new Date(now).toISOString() });
    this.done(d, pool, "to_zero", `scaled to zero: every session of model ${pool.model} has slept ${Math.round((now - action.idleSinceMs) / 1000)} s; the next request wakes it`);
  }

  /** Says what was done: a log line, an Event on the Deployment (kubectl describe), a metric. */
  private done(d: V1Deployment, pool: PoolState, action: "to_zero" | "wake" | "resize", message: string): void {
    this.log.info({ pool: pool.name, model: pool.model, action }, message);
    this.metrics.poolScalings.inc({ model: pool.model, action });
    const reason = { to_zero: "ScaledToZero", wake: "Woken", resize: "Resized" }[action];
    this.events.recordOn({ apiVersion: "apps/v1", kind: "Deployment", namespace: pool.namespace, name: pool.name, ...(d.metadata?.uid ? { uid: d.metadata.uid } : {}) }, "Normal", reason, message);
  }

  /**
   * Conditional on the Deployment we decided from (its resourceVersion): decided from a stale copy
   * (a watch event older than our own last write), a sleep would stamp a new scaled-to-zero time
   * over a request that came after the real one, and the pool would never wake for it.
   */
  private async patch(base: V1Deployment, pool: PoolState, replicas: number, annotations: Record<string, string | null>): Promise<void> {
    // The cache takes the result from the watch, in order; until then a pass decides from the old
    // copy, and its conditional patch is refused.
    await this.apps.patchNamespacedDeployment({
      name: pool.name, namespace: pool.namespace, fieldManager: "torpor-operator",
      body: { metadata: { annotations, resourceVersion: base.metadata?.resourceVersion }, spec: { replicas } },
    }, mergePatch);
  }
}
