// Kubernetes Events on sessions (placements, hibernations, rehydrations, failures) and on runtime
// pools' Deployments (scaled to zero, woken).
import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "./logger.js";
import { GROUP, KIND, VERSION, type InferenceSession } from "../contract/inference-session.js";

export interface ObjectRef { apiVersion: string; kind: string; namespace: string; name: string; uid?: string; resourceVersion?: string }

export class EventRecorder {
  private readonly core: CoreV1Api;
  constructor(kc: KubeConfig, private readonly component: string, private readonly log: Logger) {
    this.core = kc.makeApiClient(CoreV1Api);
  }

  record(s: InferenceSession, type: "Normal" | "Warning", reason: string, message: string): void {
    this.recordOn({ apiVersion: `${GROUP}/${VERSION}`, kind: KIND, ...s.metadata }, type, reason, message);
  }

  recordOn(obj: ObjectRef, type: "Normal" | "Warning", reason: string, message: string): void {
    const now = new Date();
    const { apiVersion, kind, namespace, name, uid, resourceVersion } = obj;
    this.core.createNamespacedEvent({ namespace, body: {
      metadata: { generateName: `${name}.`, namespace },
      involvedObject: { apiVersion, kind, name, namespace, ...(uid ? { uid } : {}), ...(resourceVersion ? { resourceVersion } : {}) },
      type, reason, message, count: 1, firstTimestamp: now, lastTimestamp: now, source: { component: this.component },
      reportingComponent: this.component, reportingInstance: process.env.POD_NAME ?? this.component,
    } }).catch((err) => this.log.warn({ err: String(err), namespace, name, reason }, "could not record event"));
  }
}
