// Polls each Ready runtime pod's session list (one request per pod) and queues the sessions whose
// state changed, so idle hibernations, rehydrates and errors reach status without a watch on the
// runtime, and tells a pod to drop any copy an older placement left on it. Request activity counts
// in minutes: chatting causes no API write per request.
import type { SessionStatus } from "../contract/runtime-api.js";
import type { ClusterView } from "./cluster-view.js";

/** What of a runtime's view of a session status follows; a change in it queues a reconcile. */
export function runtimeFingerprint(st: SessionStatus): string {
  // A checkpoint is a durable event (and bounds what a crash can cost): status follows it.
  return [st.residency, st.phase, st.lastHibernation?.hibernatedAt, st.lastRehydrate?.at, st.lastRehydrate?.restoreVerified, st.lastError?.at, st.lastCheckpoint?.hibernatedAt,
    // With checkpoints, status tracks the token count per turn so a crash can say what it cost.
    st.lastCheckpoint ? st.tokenCount : "", Math.floor(Date.parse(st.lastActivity) / 60_000)].join("|");
}

export async function pollRuntimes(view: ClusterView, enqueue: (key: string) => void): Promise<void> {
  await Promise.all(view.runtimePods().filter((p) => p.ready).map(async (pod) => {
    const podKey = `${pod.namespace}/${pod.name}`;
    try {
      const { sessions } = await view.client(pod).list();
      const prev = view.reports.get(podKey);
      const next = new Map<string, string>();
      for (const st of sessions) {
        const k = `${st.namespace}/${st.name}`;
        const fp = runtimeFingerprint(st);
        next.set(k, fp);
        const placed = view.sessions.get(k)?.status;
        // A change its last reconcile already saw (the hibernate it asked for) needs no other.
        if (prev?.get(k) !== fp && placed?.pod === pod.name && view.actedOn.get(k) !== `${pod.name}|${fp}`) enqueue(k);
        // A copy left behind by an older placement (the pod was partitioned when the session
        // moved): it must never be served or saved again.
        if (placed?.pod !== pod.name && (placed?.epoch ?? 0) > st.epoch) {
          await view.client(pod, 5000).drop(st.namespace, st.name, placed!.epoch!).catch(() => undefined);
        }
      }
      view.reports.set(podKey, next);
    } catch { /* the pod may be going away; its informer event handles that */ }
  }));
}
