// When a session is deleted and no runtime pod runs at all (every pool scaled to zero, the chart
// half-uninstalled), its finalizer must not hang and its files must not leak: a short-lived pod
// in the operator's namespace mounts the hibernation volume and deletes them.
import { createHash } from "node:crypto";
import { CoreV1Api, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import type { InferenceSession } from "../contract/inference-session.js";

export interface CleanupPodConfig {
  namespace: string;
  /** The hibernation volume's claim, in `namespace`. */
  claim: string;
  image: string;
}

export type CleanupState = "done" | "running" | "failed";

export class CleanupPods {
  private readonly core: CoreV1Api;
  constructor(kc: KubeConfig, private readonly cfg: CleanupPodConfig) { this.core = kc.makeApiClient(CoreV1Api); }

  private nameFor(s: InferenceSession): string {
    const h = createHash("sha256").update(`${s.metadata.namespace}/${s.metadata.name}/${s.metadata.uid ?? ""}`).digest("hex").slice(0, 12);
    return `torpor-cleanup-${h}`;
  }

  /** Level-triggered: creates the pod if needed, reports its state, deletes it once it succeeded. */
  async ensure(s: InferenceSession): Promise<CleanupState> {
    const name = this.nameFor(s);
    let pod: V1Pod | undefined;
    try { pod = await this.core.readNamespacedPod({ name, namespace: this.cfg.namespace }); } catch (err) {
      if ((err as { code?: number }).code !== 404) throw err;
    }
    if (!pod) {
      await this.core.createNamespacedPod({ namespace: this.cfg.namespace, body: this.manifest(s, name) });
      return "running";
    }
    const phase = pod.status?.phase;
    if (phase === "Succeeded") {
      await this.core.deleteNamespacedPod({ name, namespace: this.cfg.namespace }).catch(() => undefined);
      return "done";
    }
    if (phase === "Failed") {
      await this.core.deleteNamespacedPod({ name, namespace: this.cfg.namespace }).catch(() => undefined);
      return "failed";
    }
    return "running";
  }

  private manifest(s: InferenceSession, name: string): V1Pod {
    return {
      metadata: { name, namespace: this.cfg.namespace, labels: { "app.kubernetes.io/part-of": "torpor", "app.kubernetes.io/component": "cleanup" } },
      spec: {
        restartPolicy: "Never",
        automountServiceAccountToken: false,
        securityContext: { runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, seccompProfile: { type: "RuntimeDefault" } },
        containers: [{
          name: "cleanup", image: this.cfg.image, workingDir: "/app",
          command: ["node", "dist/scripts/remove-session-files.js", s.metadata.namespace, s.metadata.name, s.spec.hibernation?.path ?? ""],
          env: [{ name: "TORPOR_HIBERNATION_DIR", value: "/var/lib/torpor/hibernation" }],
          volumeMounts: [{ name: "hibernation", mountPath: "/var/lib/torpor/hibernation" }],
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } },
          resources: { requests: { cpu: "10m", memory: "64Mi" }, limits: { memory: "256Mi" } },
        }],
        volumes: [{ name: "hibernation", persistentVolumeClaim: { claimName: this.cfg.claim } }],
      },
    };
  }
}
