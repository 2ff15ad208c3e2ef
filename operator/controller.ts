// The InferenceSession controller: informers feed a work queue; workers run the session reconciler
// under one error policy; timers drive the periodic resync, the runtime monitor and the sweeper.
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { EventRecorder } from "../common/events.js";
import { RestartingInformer } from "../common/informer.js";
import { keyOf } from "../common/kube.js";
import type { Logger } from "../common/logger.js";
import { isReadyPod, isTrustedRuntimePod, type RuntimePodScope } from "../common/runtime-pods.js";
import { GROUP, PLURAL, VERSION, type InferenceSession } from "../contract/inference-session.js";
import { CleanupPods, type CleanupPodConfig } from "./cleanup-pod.js";
import { ClusterView } from "./cluster-view.js";
import type { OperatorMetrics } from "./metrics.js";
import { sweepOrphans } from "./orphan-sweeper.js";
import { PoolScaler } from "./pool-scaler.js";
import { pollRuntimes } from "./runtime-monitor.js";
import { ReportedError, SessionReconciler } from "./session-reconciler.js";
import { WorkQueue } from "./work-queue.js";

export interface ControllerOptions {
  kc: KubeConfig;
  runtimeToken: string;
  /** Where runtime pods live and how they are labelled (only trusted ones count: common/runtime-pods.ts). */
  runtimePods: RuntimePodScope;
  log: Logger;
  metrics: OperatorMetrics;
  workers?: number;
  resyncMs?: number;
  monitorMs?: number;
  sweepMs?: number;
  /** Files younger than this are left alone: their session may not have reached our cache yet. */
  sweepMinAgeMs?: number;
  /** Where a cleanup pod may run when no runtime pod is left to delete a deleted session's files. */
  cleanup?: CleanupPodConfig;
}

export class SessionController {
  private readonly queue = new WorkQueue();
  private readonly view: ClusterView;
  private readonly reconciler: SessionReconciler;
  private readonly informers: RestartingInformer<unknown>[] = [];
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly workerRuns: Promise<void>[] = [];
  private scaler?: PoolScaler;

  constructor(private readonly o: ControllerOptions) {
    this.view = new ClusterView(o.runtimeToken);
    this.reconciler = new SessionReconciler(o.kc, this.view, new EventRecorder(o.kc, "torpor-operator", o.log), o.metrics, o.log,
      o.cleanup ? new CleanupPods(o.kc, o.cleanup) : undefined);
  }

  async start(): Promise<void> {
    const { kc, log } = this.o;
    const scope = this.o.runtimePods;
    const custom = kc.makeApiClient(CustomObjectsApi), core = kc.makeApiClient(CoreV1Api);
    const { sessions, pods } = this.view;
    const podChanged = (p: V1Pod) => {
      for (const k of this.view.sessionsOn(p.metadata?.name)) this.queue.add(k);
      // A pod of a model turned Ready: sessions of that model waiting for one are placed now, not
      // at their next retry (10 s: it was most of a wake from zero).
      const model = p.metadata?.labels?.["torpor.dev/model"];
      if (model && isReadyPod(p)) for (const k of this.view.sessionsWaitingFor(model)) this.queue.add(k);
    };
    const podInformer = new RestartingInformer<V1Pod>(kc, `/api/v1/namespaces/${scope.namespace}/pods`,
      () => core.listNamespacedPod({ namespace: scope.namespace, labelSelector: scope.selector }), {
        upsert: (p) => {
          if (!isTrustedRuntimePod(p, scope)) { log.warn({ pod: keyOf(p) }, "ignoring a pod labelled like a runtime that no workload of ours runs"); return; }
          pods.set(keyOf(p), p); podChanged(p);
        },
        remove: (p) => { pods.delete(keyOf(p)); podChanged(p); },
      }, log, scope.selector);
    const sessionInformer = new RestartingInformer<InferenceSession>(kc, `/apis/${GROUP}/${VERSION}/${PLURAL}`,
      () => custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL }), {
        upsert: (s) => { if (this.view.observe(s)) this.queue.add(keyOf(s)); void this.scaler?.tick(); },
        remove: (s) => { this.view.forget(s); },
      }, log);
    this.informers.push(podInformer, sessionInformer);
    // Pools whose sessions all sleep go to zero replicas; a request brings them back.
    const scaler = new PoolScaler(kc, this.view, scope, log, new EventRecorder(kc, "torpor-operator", log), this.o.metrics, (model) => {
      for (const [k, s] of sessions) if (s.spec.model === model) this.queue.add(k);
    });
    // Pods and pools first: a session reconciled before them would look unplaceable.
    await scaler.start();
    this.scaler = scaler;
    await podInformer.start();
    await sessionInformer.start();
    // What the runtimes hold, before the first placement: a restarted operator placed every session
    // on the first pod by name, all looking empty until their first report (bounded: a pod that
    // does not answer must not hold up the rest).
    await Promise.race([pollRuntimes(this.view, () => undefined), new Promise((r) => setTimeout(r, 3000).unref())]);
    for (let i = 0; i < (this.o.workers ?? 4); i++) this.workerRuns.push(this.worker());
    const every = (ms: number, f: () => unknown) => this.timers.push(setInterval(f, ms));
    every(this.o.resyncMs ?? 60_000, () => { for (const k of sessions.keys()) this.queue.add(k); });
    every(this.o.monitorMs ?? 2000, () => { void pollRuntimes(this.view, (k) => this.queue.add(k)); void scaler.tick(); });
    every(this.o.sweepMs ?? 600_000, () => void sweepOrphans(this.view, this.o.sweepMinAgeMs ?? 300_000, this.o.metrics, log).catch((err) => log.warn({ err: String(err) }, "sweep failed")));
  }

  /**
   * Stops taking work and waits up to `drainMs` for the reconciles under way. True when none is
   * left: only then may the lease go to another replica before it expires.
   */
  async stop(drainMs = 10_000): Promise<boolean> {
    for (const t of this.timers) clearInterval(t);
    this.queue.shutdown();
    for (const inf of this.informers) await inf.stop();
    await this.scaler?.stop();
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      Promise.all(this.workerRuns).then(() => true),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(false), drainMs); }),
    ]);
    clearTimeout(timer);
    return drained;
  }

  /**
   * The one error policy: any failure is retried with per-key exponential backoff (never sooner
   * than the error's own floor); conflicts and errors already reported in status are not logged.
   */
  private async worker(): Promise<void> {
    const { metrics, log } = this.o;
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      metrics.queueDepth.set(this.queue.depth);
      const end = metrics.reconcileDuration.startTimer();
      try {
        const requeueMs = await this.reconciler.reconcile(key);
        this.queue.forget(key);
        if (requeueMs) this.queue.addAfter(key, requeueMs);
        metrics.reconciles.inc({ result: "success" });
      } catch (err) {
        const reported = err instanceof ReportedError;
        const delay = this.queue.addRateLimited(key, reported ? err.minRetryMs : 0);
        const conflict = (err as { code?: number }).code === 409;
        metrics.reconciles.inc({ result: conflict ? "conflict" : "error" });
        if (!conflict && !reported) log.warn({ err: String(err), key, retryInMs: delay }, "reconcile failed");
      } finally {
        end();
        this.queue.done(key);
      }
    }
  }
}
