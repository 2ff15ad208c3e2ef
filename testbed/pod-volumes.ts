// Resolves a pod's volumes to local folders, as a kubelet's volume manager would:
//   persistentVolumeClaim -> bound PV -> hostPath/local folder
//   hostPath -> the node's folder, or the shared folder for paths every node mounts (like kind's
//               extraMounts: that is how a ReadWriteMany volume spans nodes here)
//   emptyDir -> a folder per pod; secret / configMap / projected -> files written per pod
// The pod's process then sees them at their mountPaths through bind mounts in its own mount namespace.
import { chmod, mkdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import type { CoreV1Api, V1KeyToPath, V1Pod, V1Volume } from "@kubernetes/client-node";

export interface VolumeLayout {
  /** Root of the testbed's node and pod folders. */
  root: string;
  /** Host paths that are the same folder on every node (a shared filesystem). */
  sharedHostPaths: string[];
  /**
   * Folders every node's image has at the same place (the testbed's model cache): a hostPath
   * there is the host's own folder, the way a node image with models baked in would serve it.
   */
  imagePaths?: string[];
  caCertPem: string;
}

export function hostPathFolder(layout: VolumeLayout, nodeName: string, hostPath: string): string {
  if (layout.imagePaths?.some((p) => hostPath === p || hostPath.startsWith(p + "/"))) return hostPath;
  const shared = layout.sharedHostPaths.find((p) => hostPath === p || hostPath.startsWith(p + "/"));
  return shared
    ? path.join(layout.root, "shared", hostPath)
    : path.join(layout.root, "nodes", nodeName, "rootfs", hostPath);
}

/**
 * A hostPath as the kubelet checks it: `Directory` must exist; `DirectoryOrCreate` (and no type)
 * creates it root-owned 0755, which a non-root container cannot write (fsGroup does not apply to
 * hostPath): the very failure a kind install meets unless the folder is prepared.
 */
async function hostPathDir(layout: VolumeLayout, nodeName: string, hostPath: string, type: string | undefined): Promise<string> {
  const dir = hostPathFolder(layout, nodeName, hostPath);
  if (type === "Directory") {
    const st = await stat(dir).catch(() => undefined);
    if (!st?.isDirectory()) throw new Error(`hostPath type check failed: ${hostPath} is not a directory`);
    return dir;
  }
  await mkdir(dir, { recursive: true, mode: 0o755 });
  return dir;
}

async function writeItems(dir: string, data: Record<string, string | Buffer>, items: V1KeyToPath[] | undefined, mode: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const entries = items?.length ? items.map((i) => [i.path, data[i.key], i.mode ?? mode] as const) : Object.entries(data).map(([k, v]) => [k, v, mode] as const);
  for (const [p, v, m] of entries) {
    if (v === undefined) continue;
    const file = path.join(dir, p);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, v);
    await chmod(file, m);
  }
}

const b64 = (d: Record<string, string> | undefined) => Object.fromEntries(Object.entries(d ?? {}).map(([k, v]) => [k, Buffer.from(v, "base64")]));

export async function resolveVolume(core: CoreV1Api, layout: VolumeLayout, pod: V1Pod, v: V1Volume, nodeName: string): Promise<string> {
  const ns = pod.metadata!.namespace!;
  const podDir = path.join(layout.root, "pods", `${ns}_${pod.metadata!.name}_${pod.metadata!.uid}`, "volumes", v.name);
  if (v.persistentVolumeClaim) {
    const pvc = await core.readNamespacedPersistentVolumeClaim({ name: v.persistentVolumeClaim.claimName, namespace: ns });
    if (!pvc.spec?.volumeName || pvc.status?.phase !== "Bound") throw new Error(`persistentvolumeclaim ${ns}/${pvc.metadata!.name} is not bound yet`);
    const pv = await core.readPersistentVolume({ name: pvc.spec.volumeName });
    const p = pv.spec?.hostPath?.path ?? pv.spec?.local?.path;
    if (!p) throw new Error(`persistentvolume ${pv.metadata!.name}: the test kubelet supports hostPath and local volumes`);
    return hostPathDir(layout, nodeName, p, pv.spec?.hostPath?.type);
  }
  if (v.hostPath) return hostPathDir(layout, nodeName, v.hostPath.path, v.hostPath.type);
  if (v.emptyDir) {
    // The kubelet makes emptyDirs world-writable: any runAsUser can use them.
    await mkdir(podDir, { recursive: true });
    await chmod(podDir, 0o777);
    return podDir;
  }
  if (v.secret) {
    let data: Record<string, Buffer> = {};
    try { data = b64((await core.readNamespacedSecret({ name: v.secret.secretName!, namespace: ns })).data); } catch (err) { if (!v.secret.optional) throw err; }
    await writeItems(podDir, data, v.secret.items, v.secret.defaultMode ?? 0o644);
    return podDir;
  }
  if (v.configMap) {
    let data: Record<string, string> = {};
    try { data = (await core.readNamespacedConfigMap({ name: v.configMap.name!, namespace: ns })).data ?? {}; } catch (err) { if (!v.configMap.optional) throw err; }
    await writeItems(podDir, data, v.configMap.items, v.configMap.defaultMode ?? 0o644);
    return podDir;
  }
  if (v.projected) {
    for (const src of v.projected.sources ?? []) {
      if (src.serviceAccountToken) {
        const tr = await core.createNamespacedServiceAccountToken({
          name: pod.spec?.serviceAccountName ?? "default", namespace: ns,
          body: { spec: {
            audiences: src.serviceAccountToken.audience ? [src.serviceAccountToken.audience] : [],
            expirationSeconds: src.serviceAccountToken.expirationSeconds ?? 3607,
            boundObjectRef: { kind: "Pod", apiVersion: "v1", name: pod.metadata!.name!, uid: pod.metadata!.uid! },
          } },
        });
        await writeItems(podDir, { [src.serviceAccountToken.path]: tr.status!.token }, undefined, 0o644);
      }
      if (src.configMap) {
        let data: Record<string, string> = {};
        try { data = (await core.readNamespacedConfigMap({ name: src.configMap.name!, namespace: ns })).data ?? {}; } catch (err) { if (!src.configMap.optional) throw err; }
        await writeItems(podDir, data, src.configMap.items, 0o644);
      }
      if (src.secret) {
        let data: Record<string, Buffer> = {};
        try { data = b64((await core.readNamespacedSecret({ name: src.secret.name!, namespace: ns })).data); } catch (err) { if (!src.secret.optional) throw err; }
        await writeItems(podDir, data, src.secret.items, 0o644);
      }
      for (const item of src.downwardAPI?.items ?? []) {
        const fp = item.fieldRef?.fieldPath;
        const value = fp === "metadata.namespace" ? ns : fp === "metadata.name" ? pod.metadata!.name! : "";
        await writeItems(podDir, { [item.path]: value }, undefined, 0o644);
      }
    }
    await mkdir(podDir, { recursive: true });
    return podDir;
  }
  if (v.downwardAPI) {
    await mkdir(podDir, { recursive: true });
    return podDir;
  }
  throw new Error(`volume ${v.name}: this volume type is not supported by the test kubelet`);
}
