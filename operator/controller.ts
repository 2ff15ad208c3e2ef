// The InferenceSession controller: informers feed a work queue; each reconcile reads the observed
// session and the world (runtime pods, the runtime's view of the session), applies the pure
// decisions from reconcile.ts idempotently, and writes status once.
import {
  CoreV1Api, CustomObjectsApi, PatchStrategy, makeInformer, setHeaderOptions,
  type Informer, type KubeConfig, type KubernetesObject, type V1Pod,
} from "@kubernetes/client-node";
import type { Logger } from "../common/logger.js";
import type { SessionStatus as RuntimeSessionStatus } from "../contract/runtime-api.js";
import { FINALIZER, GROUP, PLURAL, VERSION, parseDuration, type InferenceSession } from "../contract/inference-session.js";
import { EventRecorder } from "../common/events.js";
import type { OperatorMetrics } from "./metrics.js";
import { computeStatus, decidePlacement, decideTransition, hasFinalizer, liveStateLost, reasonOf, sameStatus, type RuntimePod } from "./decisions.js";
import { RuntimeApiError, RuntimeClient } from "../contract/runtime-client.js";
import { WorkQueue } from "./work-queue.js";

export interface ControllerOptions {
  kc: KubeConfig;
  runtimeToken: string;
  /** Label selector of runtime pods; each carries torpor.dev/model. */
  runtimeSelector: string;
  log: Logger;
  metrics: OperatorMetrics;
  workers?: number;
  resyncMs?: number;
  monitorMs?: number;
  sweepMs?: number;
  /** Files younger than this are left alone: their session may not have reached our cache yet. */
  sweepMinAgeMs?: number;
}

const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);
const keyOf = (o: { metadata?: { namespace?: string; name?: string } }) => `${o.metadata?.namespace}/${o.metadata?.name}`;

export class SessionController {
  private readonly queue = new WorkQueue();
  private readonly sessions = new Map<string, InferenceSession>();
  private readonly pods = new Map<string, V1Pod>();
  /** Last runtime report per pod: session fingerprints (to enqueue changes) and counts (placement). */
  private readonly reports = new Map<string, Map<string, string>>();
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly events: EventRecorder;
  private readonly informers: Informer<KubernetesObject>[] = [];
  private readonly timers: NodeJS.Timeout[] = [];
  private stopped = false;
  private synced = false;

  constructor(private readonly o: ControllerOptions) {
    this.custom = o.kc.makeApiClient(CustomObjectsApi);
    this.core = o.kc.makeApiClient(CoreV1Api);
    this.events = new EventRecorder(o.kc, "torpor-operator", o.log);
  }

  async start(): Promise<void> {
    const sessionInformer = makeInformer<KubernetesObject>(this.o.kc, `/apis/${GROUP}/${VERSION}/${PLURAL}`,
      () => this.custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL }) as never);
    const podInformer = makeInformer<KubernetesObject>(this.o.kc, "/api/v1/pods",
      () => this.core.listPodForAllNamespaces({ labelSelector: this.o.runtimeSelector }) as never, this.o.runtimeSelector);
    const onSession = (obj: KubernetesObject) => { this.sessions.set(keyOf(obj), obj as InferenceSession); this.queue.add(keyOf(obj)); };
    sessionInformer.on("add", onSession);
    sessionInformer.on("update", onSession);
    sessionInformer.on("delete", (obj) => { this.sessions.delete(keyOf(obj)); });
    const onPod = (obj: KubernetesObject, deleted = false) => {
      if (deleted) this.pods.delete(keyOf(obj)); else this.pods.set(keyOf(obj), obj as V1Pod);
      for (const [k, s] of this.sessions) if (s.status?.pod === obj.metadata?.name) this.queue.add(k);
    };
    podInformer.on("add", (o) => onPod(o));
    podInformer.on("update", (o) => onPod(o));
    podInformer.on("delete", (o) => onPod(o, true));
    for (const inf of [sessionInformer, podInformer] as Informer<KubernetesObject>[]) {
      // The client's informer does not always restart its watch after an error: do it here.
      inf.on("error", (err: unknown) => {
        this.o.log.warn({ err: String(err) }, "watch failed; restarting");
        if (!this.stopped) setTimeout(() => { if (!this.stopped) void inf.start().catch(() => undefined); }, 1000);
      });
      this.informers.push(inf);
    }
    await podInformer.start();
    await sessionInformer.start();
    this.synced = true;
    for (let i = 0; i < (this.o.workers ?? 4); i++) void this.worker();
    this.timers.push(setInterval(() => { for (const k of this.sessions.keys()) this.queue.add(k); }, this.o.resyncMs ?? 60_000));
    this.timers.push(setInterval(() => void this.monitorRuntimes(), this.o.monitorMs ?? 2000));
    this.timers.push(setInterval(() => void this.sweep(), this.o.sweepMs ?? 600_000));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.queue.shutdown();
    for (const inf of this.informers) await inf.stop();
  }

  private client(pod: RuntimePod): RuntimeClient {
    return new RuntimeClient(`http://${pod.ip}:${pod.port}`, this.o.runtimeToken, 120_000);
  }

  private runtimePods(): RuntimePod[] {
    return [...this.pods.values()].map((p): RuntimePod => {
      const ready = !p.metadata?.deletionTimestamp && !!p.status?.podIP &&
        (p.status?.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
      const port = p.spec?.containers.flatMap((c) => c.ports ?? []).find((x) => x.name === "http")?.containerPort ?? 8080;
      const report = this.reports.get(keyOf(p));
      return {
        name: p.metadata!.name!, namespace: p.metadata!.namespace!, node: p.spec?.nodeName ?? "", ip: p.status?.podIP ?? "", port,
        model: p.metadata?.labels?.["torpor.dev/model"] ?? "", ready, sessions: report?.size ?? 0,
      };
    });
  }

  private async worker(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      this.o.metrics.queueDepth.set(this.queue.depth);
      const end = this.o.metrics.reconcileDuration.startTimer();
      try {
        const requeueMs = await this.reconcile(key);
        this.queue.forget(key);
        if (requeueMs) this.queue.addAfter(key, requeueMs);
        this.o.metrics.reconciles.inc({ result: "success" });
      } catch (err) {
        const delay = this.queue.addRateLimited(key);
        const conflict = (err as { code?: number }).code === 409;
        this.o.metrics.reconciles.inc({ result: conflict ? "conflict" : "error" });
        if (!conflict) this.o.log.warn({ err: String(err), key, retryInMs: delay }, "reconcile failed");
      } finally {
        end();
        this.queue.done(key);
      }
    }
  }

  /** Returns a delay after which to look again, if any. */
  async reconcile(key: string): Promise<number | undefined> {
    const s = this.sessions.get(key);
    if (!s) return undefined;
    const { namespace, name } = s.metadata;
    const log = this.o.log.child({ namespace, name });
    const pods = this.runtimePods();
    let runtime: RuntimeSessionStatus | undefined;
    const current = pods.find((p) => p.name === s.status?.pod && p.ready);
    if (current) {
      try { runtime = await this.client(current).status(namespace, name); } catch (err) {
        if (!(err instanceof RuntimeApiError && err.code === "session_not_found")) throw err;
      }
    }
    const plan = decidePlacement(s, pods, !!runtime);

    if (plan.kind === "finalize") {
      if (!hasFinalizer(s)) return undefined;
      if (!plan.pod) {
        log.info("waiting for a Ready runtime pod to delete the session's hibernation files");
        return 5000;
      }
      await this.client(plan.pod).delete(namespace, name, s.spec.hibernation?.path ?? "");
      await this.setFinalizers(s, (s.metadata.finalizers ?? []).filter((f) => f !== FINALIZER));
      log.info("hibernation files removed; finalizer released");
      return undefined;
    }
    if (!hasFinalizer(s)) {
      // The update event re-queues us with the finalizer in place.
      await this.setFinalizers(s, [...(s.metadata.finalizers ?? []), FINALIZER]);
      return undefined;
    }
    const now = new Date();
    if (plan.kind === "wait") {
      await this.writeStatus(s, computeStatus(s, { now, waiting: plan }));
      return 10_000;
    }

    let error: { reason: string; message: string } | undefined;
    let lost = false;
    try {
      if (plan.register) {
        const idle = s.spec.hibernation?.idleAfter ? parseDuration(s.spec.hibernation.idleAfter) : undefined;
        runtime = await this.client(plan.pod).register(namespace, name, {
          contextSize: s.spec.contextSize ?? 4096,
          ...(s.spec.systemPrompt ? { systemPrompt: s.spec.systemPrompt } : {}),
          ...(s.spec.hibernation?.path ? { path: s.spec.hibernation.path } : {}),
          ...(idle !== undefined ? { idleAfterSeconds: Math.ceil(idle / 1000) } : {}),
        });
        lost = liveStateLost(plan, runtime.residency);
        if (lost) {
          this.events.record(s, "Warning", "LiveStateLost", `the runtime on pod ${s.status?.pod} held the session in memory and lost it without saving; starting from scratch on pod ${plan.pod.name}`);
        }
        this.events.record(s, "Normal", "Placed", `placed on runtime pod ${plan.pod.name} (node ${plan.pod.node}); residency ${runtime.residency}`);
        log.info({ pod: plan.pod.name, previousPod: s.status?.pod, residency: runtime.residency, liveStateLost: lost, resourceVersion: s.metadata.resourceVersion }, "session registered on runtime pod");
      }
      const transition = decideTransition(s, runtime!.residency);
      if (transition) {
        this.o.metrics.transitions.inc({ transition });
        const c = this.client(plan.pod);
        if (transition === "hibernate") {
          const out = await c.hibernate(namespace, name);
          if (out.record) this.events.record(s, "Normal", "Hibernated", `wrote ${out.record.bytes} bytes (${out.record.tokenCount} tokens) in ${out.record.durationMs.toFixed(0)} ms`);
        } else {
          const w = await c.rehydrate(namespace, name);
          if (w.rehydrated) this.events.record(s, "Normal", "Rehydrated", `restored in ${w.rehydrateMs?.toFixed(0)} ms on pod ${plan.pod.name}`);
        }
        runtime = await c.status(namespace, name);
      }
    } catch (err) {
      if (!(err instanceof RuntimeApiError)) throw err;
      error = { reason: reasonOf(String(err.details?.reason ?? err.code)), message: err.message };
      this.events.record(s, "Warning", error.reason, err.message);
      runtime = await this.client(plan.pod).status(namespace, name).catch(() => runtime);
    }
    await this.writeStatus(s, computeStatus(s, { now, pod: plan.pod, ...(runtime ? { runtime } : {}), liveStateLost: lost, ...(error ? { error } : {}) }));
    return error ? 15_000 : undefined;
  }

  private async setFinalizers(s: InferenceSession, finalizers: string[]): Promise<void> {
    await this.custom.patchNamespacedCustomObject({
      group: GROUP, version: VERSION, plural: PLURAL, namespace: s.metadata.namespace, name: s.metadata.name,
      body: { metadata: { finalizers, resourceVersion: s.metadata.resourceVersion } },
    }, merge);
  }

  private async writeStatus(s: InferenceSession, status: InferenceSession["status"]): Promise<void> {
    if (sameStatus(s.status, status!)) return;
    const updated = await this.custom.replaceNamespacedCustomObjectStatus({
      group: GROUP, version: VERSION, plural: PLURAL, namespace: s.metadata.namespace, name: s.metadata.name,
      body: { ...s, status },
    }) as InferenceSession;
    // Keep the cache ahead of the watch, so the next reconcile does not act on a stale status.
    this.sessions.set(keyOf(updated), updated);
  }

  /** Polls each Ready runtime pod's session list and queues the sessions whose state changed. */
  private async monitorRuntimes(): Promise<void> {
    await Promise.all(this.runtimePods().filter((p) => p.ready).map(async (pod) => {
      const podKey = `${pod.namespace}/${pod.name}`;
      try {
        const { sessions } = await this.client(pod).list();
        const prev = this.reports.get(podKey);
        const next = new Map<string, string>();
        for (const st of sessions) {
          const k = `${st.namespace}/${st.name}`;
          // Activity counts in minutes: status follows it without a write per request.
          const fp = [st.residency, st.phase, st.lastHibernation?.hibernatedAt, st.lastRehydrate?.at, st.lastError?.at, Math.floor(Date.parse(st.lastActivity) / 60_000)].join("|");
          next.set(k, fp);
          if (prev?.get(k) !== fp && this.sessions.get(k)?.status?.pod === pod.name) this.queue.add(k);
        }
        this.reports.set(podKey, next);
      } catch { /* the pod may be going away; its informer event handles that */ }
    }));
  }

  /** Removes hibernation files that belong to no InferenceSession (e.g. deleted while the operator was down). */
  async sweep(minAgeMs = this.o.sweepMinAgeMs ?? 300_000): Promise<number> {
    if (!this.synced) return 0;
    const byModel = new Map<string, RuntimePod>();
    for (const p of this.runtimePods()) if (p.ready && !byModel.has(p.model)) byModel.set(p.model, p);
    let removed = 0;
    for (const pod of byModel.values()) {
      const { files } = await this.client(pod).files().catch(() => ({ files: [] }));
      for (const f of files) {
        if (this.sessions.has(`${f.namespace}/${f.name}`) || Date.now() - Date.parse(f.hibernatedAt) < minAgeMs) continue;
        await this.client(pod).delete(f.namespace, f.name, f.path).catch(() => undefined);
        this.o.metrics.sweptFiles.inc();
        this.o.log.info({ namespace: f.namespace, name: f.name, file: f.manifestFile }, "swept hibernation file of a deleted session");
        removed++;
      }
    }
    return removed;
  }
}
