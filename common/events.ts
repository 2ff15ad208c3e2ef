// Kubernetes Events on sessions (placements, hibernations, rehydrations, failures).
import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "./logger.js";
import { GROUP, KIND, VERSION, type InferenceSession } from "../contract/inference-session.js";

export class EventRecorder {
  private readonly core: CoreV1Api;
  constructor(kc: KubeConfig, private readonly component: string, private readonly log: Logger) {
    this.core = kc.makeApiClient(CoreV1Api);
  }

  record(s: InferenceSession, type: "Normal" | "Warning", reason: string, message: string): void {
    const now = new Date();
    const { namespace, name, uid, resourceVersion } = s.metadata;
    this.core.createNamespacedEvent({ namespace, body: {
      metadata: { generateName: `${name}.`, namespace },
      involvedObject: { apiVersion: `${GROUP}/${VERSION}`, kind: KIND, name, namespace, ...(uid ? { uid } : {}), ...(resourceVersion ? { resourceVersion } : {}) },
      type, reason, message, count: 1, firstTimestamp: now, lastTimestamp: now, source: { component: this.component },
      reportingComponent: this.component, reportingInstance: process.env.POD_NAME ?? this.component,
    } }).catch((err) => this.log.warn({ err: String(err), namespace, name, reason }, "could not record event"));
  }
}
