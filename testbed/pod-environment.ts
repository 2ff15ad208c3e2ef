// What a kubelet resolves before starting a container: environment variables (values, fieldRef,
// secretKeyRef, configMapKeyRef, envFrom) and $(VAR) references in command and args.
import type { CoreV1Api, V1Container, V1Pod } from "@kubernetes/client-node";

export interface PodRuntimeInfo { podIP: string; hostIP: string; nodeName: string; apiserverHost: string; apiserverPort: number }

function fieldRef(pod: V1Pod, info: PodRuntimeInfo, fieldPath: string): string {
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(fieldPath);
  if (m) return (m[1] === "labels" ? pod.metadata?.labels : pod.metadata?.annotations)?.[m[2]!] ?? "";
  switch (fieldPath) {
    case "metadata.name": return pod.metadata!.name!;
    case "metadata.namespace": return pod.metadata!.namespace!;
    case "metadata.uid": return pod.metadata!.uid!;
    case "spec.nodeName": return info.nodeName;
    case "spec.serviceAccountName": return pod.spec?.serviceAccountName ?? "default";
    case "status.podIP": case "status.podIPs": return info.podIP;
    case "status.hostIP": case "status.hostIPs": return info.hostIP;
    default: throw new Error(`unsupported fieldRef ${fieldPath}`);
  }
}

async function keyOf(core: CoreV1Api, ns: string, kind: "secret" | "configMap", name: string, key: string, optional: boolean): Promise<string | undefined> {
  try {
    if (kind === "secret") {
      const s = await core.readNamespacedSecret({ name, namespace: ns });
      const v = s.data?.[key];
      if (v === undefined) { if (optional) return undefined; throw new Error(`secret ${ns}/${name} has no key ${key}`); }
      return Buffer.from(v, "base64").toString("utf8");
    }
    const cm = await core.readNamespacedConfigMap({ name, namespace: ns });
    const v = cm.data?.[key];
    if (v === undefined) { if (optional) return undefined; throw new Error(`configmap ${ns}/${name} has no key ${key}`); }
    return v;
  } catch (err) {
    if (optional && (err as { code?: number }).code === 404) return undefined;
    throw err;
  }
}

/** $(VAR) expansion as the kubelet does it: unknown references stay as written, $$ escapes. */
export function expand(s: string, env: Record<string, string>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (all, name: string | undefined) =>
    name === undefined ? "$" : env[name] ?? all);
}

export async function resolveEnv(core: CoreV1Api, pod: V1Pod, c: V1Container, info: PodRuntimeInfo): Promise<Record<string, string>> {
  const ns = pod.metadata!.namespace!;
  const env: Record<string, string> = {
    // What the kubelet injects for in-cluster clients; here it points at the testbed's API server.
    KUBERNETES_SERVICE_HOST: info.apiserverHost,
    KUBERNETES_SERVICE_PORT: String(info.apiserverPort),
    KUBERNETES_SERVICE_PORT_HTTPS: String(info.apiserverPort),
    HOSTNAME: pod.metadata!.name!,
  };
  for (const from of c.envFrom ?? []) {
    const prefix = from.prefix ?? "";
    if (from.configMapRef) {
      try {
        const cm = await core.readNamespacedConfigMap({ name: from.configMapRef.name!, namespace: ns });
        for (const [k, v] of Object.entries(cm.data ?? {})) env[prefix + k] = v;
      } catch (err) { if (!from.configMapRef.optional) throw err; }
    }
    if (from.secretRef) {
      try {
        const s = await core.readNamespacedSecret({ name: from.secretRef.name!, namespace: ns });
        for (const [k, v] of Object.entries(s.data ?? {})) env[prefix + k] = Buffer.from(v, "base64").toString("utf8");
      } catch (err) { if (!from.secretRef.optional) throw err; }
    }
  }
  for (const e of c.env ?? []) {
    let v: string | undefined;
    if (e.value !== undefined) v = expand(e.value, env);
    else if (e.valueFrom?.fieldRef) v = fieldRef(pod, info, e.valueFrom.fieldRef.fieldPath);
    else if (e.valueFrom?.secretKeyRef) {
      const r = e.valueFrom.secretKeyRef;
      v = await keyOf(core, ns, "secret", r.name!, r.key, r.optional ?? false);
    } else if (e.valueFrom?.configMapKeyRef) {
      const r = e.valueFrom.configMapKeyRef;
      v = await keyOf(core, ns, "configMap", r.name!, r.key, r.optional ?? false);
    } else if (e.valueFrom?.resourceFieldRef) {
      const r = e.valueFrom.resourceFieldRef;
      const [kind, res] = r.resource.split(".") as ["limits" | "requests", string];
      v = String(c.resources?.[kind]?.[res] ?? "0");
    } else v = "";
    if (v !== undefined) env[e.name] = v;
  }
  return env;
}
