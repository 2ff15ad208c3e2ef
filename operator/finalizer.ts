// The finalizer protocol, kept apart from what a session's reconcile does (the shape of kube-rs
// controller-rs's finalizer helper): a live session gets the finalizer before anything else
// happens; a deleted one runs its cleanup and only then loses the finalizer.
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { mergePatch } from "../common/kube.js";
import { FINALIZER, GROUP, PLURAL, VERSION, type InferenceSession } from "../contract/inference-session.js";
import { hasFinalizer } from "./decisions.js";

/** A reconcile outcome: look again after this many ms, or not. */
export type Requeue = number | undefined;

export class Finalizer {
  private readonly api: CustomObjectsApi;
  constructor(kc: KubeConfig) { this.api = kc.makeApiClient(CustomObjectsApi); }

  /**
   * Runs apply or cleanup. cleanup returns true once everything the session owned is gone; then
   * the finalizer is removed. Adding the finalizer ends the round: its update event queues the next.
   */
  async run(s: InferenceSession, apply: () => Promise<Requeue>, cleanup: () => Promise<{ done: boolean; requeue?: Requeue }>): Promise<Requeue> {
    if (s.metadata.deletionTimestamp) {
      if (!hasFinalizer(s)) return undefined;
      const r = await cleanup();
      if (!r.done) return r.requeue;
      await this.set(s, (s.metadata.finalizers ?? []).filter((f) => f !== FINALIZER));
      return undefined;
    }
    if (!hasFinalizer(s)) {
      await this.set(s, [...(s.metadata.finalizers ?? []), FINALIZER]);
      return undefined;
    }
    return apply();
  }

  private async set(s: InferenceSession, finalizers: string[]): Promise<void> {
    await this.api.patchNamespacedCustomObject({
      group: GROUP, version: VERSION, plural: PLURAL, namespace: s.metadata.namespace, name: s.metadata.name,
      body: { metadata: { finalizers, resourceVersion: s.metadata.resourceVersion } },
    }, mergePatch);
  }
}
