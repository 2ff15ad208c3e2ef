// Which pods are runtime pods. A label is not enough: anyone who can create a pod can set labels,
// and the operator hands runtime pods the runtime token and tenants' sessions. Runtime pods live in
// the release namespace (the protection: every informer is namespaced) and are run by a workload
// controller (the second check: a bare look-alike pod is never trusted).
import type { V1Pod } from "@kubernetes/client-node";

export interface RuntimePodScope {
  namespace: string;
  /** Label selector of runtime pods (each also labelled torpor.dev/model). */
  selector: string;
}

export function runtimePodScope(env: NodeJS.ProcessEnv = process.env): RuntimePodScope {
  return {
    namespace: env.TORPOR_RUNTIME_NAMESPACE ?? env.POD_NAMESPACE ?? "default",
    selector: env.TORPOR_RUNTIME_SELECTOR ?? "app.kubernetes.io/component=runtime,app.kubernetes.io/part-of=torpor",
  };
}

export function isTrustedRuntimePod(pod: V1Pod, scope: RuntimePodScope): boolean {
  if (pod.metadata?.namespace !== scope.namespace) return false;
  return (pod.metadata.ownerReferences ?? []).some((o) => o.controller === true && (o.kind === "ReplicaSet" || o.kind === "StatefulSet"));
}

export function isReadyPod(pod: V1Pod): boolean {
  return !pod.metadata?.deletionTimestamp && !!pod.status?.podIP &&
    (pod.status.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
}
