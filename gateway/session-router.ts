// Finds the runtime pod that serves a session, waking it on the way: a session desired
// Hibernated is flipped to InMemory (under the gateway's own field manager, with an Event), and
// a session without a Ready pod is held until the operator places it, within a bound.
// Concurrent requests for one session share one wake.
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { RestartingInformer } from "../common/informer.js";
import { keyOf, mergePatch } from "../common/kube.js";
import { TorporError } from "../contract/errors.js";
import type { Logger } from "../common/logger.js";
import { GROUP, PLURAL, VERSION, WAKE_ANNOTATION, type InferenceSession } from "../contract/inference-session.js";
import { SCALED_TO_ZERO_REASON } from "../contract/runtime-pool.js";
import type { EventRecorder } from "../common/events.js";
import type { RuntimePodLookup } from "./runtime-pod-cache.js";
import { servingPod, unservable } from "./serving-pod.js";

export const GATEWAY_FIELD_MANAGER = "torpor-gateway";

export interface Target { session: InferenceSession; url: string; pod: string; woken: boolean }

export interface SessionSource {
  /** `fresh` skips any cache (used while waiting for the operator to act). */
  get(namespace: string, name: string, fresh?: boolean): Promise<InferenceSession | undefined>;
}

/** Reads sessions straight from the API server (the gateway keeps no cache that could go stale). */
export class ApiSessionSource implements SessionSource {
  private readonly api: CustomObjectsApi;
  constructor(kc: KubeConfig) { this.api = kc.makeApiClient(CustomObjectsApi); }
  async get(namespace: string, name: string): Promise<InferenceSession | undefined> {
    try {
      return await this.api.getNamespacedCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name }) as InferenceSession;
    } catch (err) {
      if ((err as { code?: number }).code === 404) return undefined;
      throw err;
    }
  }
}

/**
 * Sessions from a watch, so a request costs no API call; a session not seen yet (just created) is
 * read from the API server. A stale entry is harmless: the proxy retries and re-reads.
 */
export class InformerSessionSource implements SessionSource {
  private readonly cache = new Map<string, InferenceSession>();
  private readonly informer: RestartingInformer<InferenceSession>;
  private readonly fallback: ApiSessionSource;

  constructor(kc: KubeConfig, log: Logger) {
    const api = kc.makeApiClient(CustomObjectsApi);
    this.fallback = new ApiSessionSource(kc);
    this.informer = new RestartingInformer<InferenceSession>(kc, `/apis/${GROUP}/${VERSION}/${PLURAL}`,
      () => api.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL }),
      { upsert: (o) => this.cache.set(keyOf(o), o), remove: (o) => this.cache.delete(keyOf(o)) }, log);
  }

  start(): Promise<void> { return this.informer.start(); }
  stop(): Promise<void> { return this.informer.stop(); }

  async get(namespace: string, name: string, fresh = false): Promise<InferenceSession | undefined> {
    const hit = fresh ? undefined : this.cache.get(`${namespace}/${name}`);
    return hit ?? this.fallback.get(namespace, name);
  }
}

const readyCondition = (s: InferenceSession) => s.status?.conditions?.find((c) => c.type === "Ready");

function refuseUnservable(s: InferenceSession, namespace: string, name: string): void {
  const why = unservable(s, namespace, name);
  if (why) throw why;
}

export class SessionRouter {
  private readonly api: CustomObjectsApi;
  private readonly inflight = new Map<string, Promise<Target>>();

  constructor(
    kc: KubeConfig,
    private readonly source: SessionSource,
    private readonly events: EventRecorder,
    private readonly log: Logger,
    private readonly opts: { wakeTimeoutMs: number; runtimePort: number },
    private readonly pods: RuntimePodLookup,
  ) {
    this.api = kc.makeApiClient(CustomObjectsApi);
  }

  async route(namespace: string, name: string): Promise<Target> {
    const key = `${namespace}/${name}`;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.resolve(namespace, name).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  /**
   * The pod that holds the session now, without waking it or its pool (a reader of its history must
   * not cost a rehydrate). Throws when none does: not placed, moving, or its pool asleep.
   */
  async locate(namespace: string, name: string): Promise<Target> {
    const s = await this.source.get(namespace, name);
    if (!s) throw new TorporError("session_not_found", `InferenceSession ${namespace}/${name} does not exist`);
    if (s.metadata.deletionTimestamp) throw new TorporError("session_not_found", `InferenceSession ${namespace}/${name} is being deleted`);
    refuseUnservable(s, namespace, name);
    const serving = servingPod(s);
    const pod = serving ? this.pods.ready(serving) : undefined;
    if (!pod || !serving) {
      throw new TorporError("upstream_unavailable", `session ${namespace}/${name} is on no Ready runtime pod now (${readyCondition(s)?.message || "not placed yet"}); its conversation can be read once a pod holds it`);
    }
    return { session: s, url: `http://${pod.ip}:${this.opts.runtimePort}`, pod: serving, woken: false };
  }

  private async resolve(namespace: string, name: string): Promise<Target> {
    let s = await this.source.get(namespace, name);
    if (!s) throw new TorporError("session_not_found", `InferenceSession ${namespace}/${name} does not exist`);
    // Still there while its finalizer removes its files (longer while no runtime pod runs): said
    // as it is, since `kubectl get` still lists it.
    if (s.metadata.deletionTimestamp) throw new TorporError("session_not_found", `InferenceSession ${namespace}/${name} is being deleted (since ${new Date(String(s.metadata.deletionTimestamp)).toISOString()}); create a new session to go on chatting`);
    // Nothing is coming for it (no pool for its model, a spec its pool refused): told now, before any
    // wake (a request refused anyway must not flip it to InMemory) and not after the wake timeout.
    refuseUnservable(s, namespace, name);
    let woken = false;
    let poolWoken = false;
    if (s.spec.residency === "Hibernated") {
      await this.api.patchNamespacedCustomObject({
        group: GROUP, version: VERSION, plural: PLURAL, namespace, name, fieldManager: GATEWAY_FIELD_MANAGER,
        // The annotation tells the operator not to pre-warm: this request rehydrates the session
        // itself, so its caller is the one told that a rehydrate happened.
        body: { metadata: { annotations: { [WAKE_ANNOTATION]: new Date().toISOString() } }, spec: { residency: "InMemory" } },
      }, mergePatch);
      this.events.record(s, "Normal", "Woken", "a request arrived for the hibernated session; spec.residency set to InMemory by the gateway");
      this.log.info({ namespace, name }, "woke hibernated session");
      woken = true;
    }
    const deadline = Date.now() + this.opts.wakeTimeoutMs;
    for (;;) {
      const serving = servingPod(s);
      const pod = serving ? this.pods.ready(serving) : undefined;
      if (pod && serving) return { session: s, url: `http://${pod.ip}:${this.opts.runtimePort}`, pod: serving, woken };
      // Its pool sleeps: this request is the one that wakes it (the operator scales it back up).
      if (!poolWoken && readyCondition(s)?.reason === SCALED_TO_ZERO_REASON) {
        await this.api.patchNamespacedCustomObject({
          group: GROUP, version: VERSION, plural: PLURAL, namespace, name, fieldManager: GATEWAY_FIELD_MANAGER,
          body: { metadata: { annotations: { [WAKE_ANNOTATION]: new Date().toISOString() } } },
        }, mergePatch);
        this.events.record(s, "Normal", "PoolWoken", "a request arrived while the session's runtime pool was scaled to zero; the pool is coming back");
        this.log.info({ namespace, name, model: s.spec.model }, "woke the session's runtime pool");
        poolWoken = true;
      }
      if (Date.now() > deadline) {
        throw new TorporError("wake_timeout", `session ${namespace}/${name} has no Ready runtime pod yet (${readyCondition(s)?.message ?? "not placed"}); retry shortly`);
      }
      await new Promise((r) => setTimeout(r, 200));
      s = await this.source.get(namespace, name, true);
      if (!s) throw new TorporError("session_not_found", `InferenceSession ${namespace}/${name} was deleted`);
      // Nothing is coming (no pool for its model, a spec its pool refused): told now, not after the wake timeout.
      refuseUnservable(s, namespace, name);
    }
  }
}
