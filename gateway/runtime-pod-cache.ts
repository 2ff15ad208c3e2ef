// The gateway's own view of the runtime pods (a namespaced watch), so a session's address comes
// from the pod it names, never from status.podIP: a string anyone allowed to write the status
// subresource could set, which the gateway would send the runtime token to.
import { CoreV1Api, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { RestartingInformer } from "../common/informer.js";
import type { Logger } from "../common/logger.js";
import { isReadyPod, isTrustedRuntimePod, type RuntimePodScope } from "../common/runtime-pods.js";

export interface RuntimePodLookup {
  /** The Ready, trusted runtime pod of this name, or undefined. */
  ready(name: string): { ip: string } | undefined;
}

export class RuntimePodCache implements RuntimePodLookup {
  private readonly pods = new Map<string, V1Pod>();
  private readonly informer: RestartingInformer<V1Pod>;

  constructor(kc: KubeConfig, private readonly scope: RuntimePodScope, log: Logger) {
    const core = kc.makeApiClient(CoreV1Api);
    this.informer = new RestartingInformer<V1Pod>(kc, `/api/v1/namespaces/${scope.namespace}/pods`,
      () => core.listNamespacedPod({ namespace: scope.namespace, labelSelector: scope.selector }), {
        upsert: (p) => { if (isTrustedRuntimePod(p, scope)) this.pods.set(p.metadata!.name!, p); },
        remove: (p) => { this.pods.delete(p.metadata?.name ?? ""); },
      }, log, scope.selector);
  }

  start(): Promise<void> { return this.informer.start(); }
  stop(): Promise<void> { return this.informer.stop(); }

  ready(name: string): { ip: string } | undefined {
    const p = this.pods.get(name);
    return p && isReadyPod(p) ? { ip: p.status!.podIP! } : undefined;
  }
}
