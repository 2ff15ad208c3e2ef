// Polls each Ready runtime pod's session list (one request per pod) and queues the sessions whose
// state changed, so idle hibernations, rehydrates and errors reach status without a watch on the
// runtime. Request activity counts in minutes: chatting causes no API write per request.
import type { ClusterView } from "./cluster-view.js";

export async function pollRuntimes(view: ClusterView, enqueue: (key: string) => void): Promise<void> {
  await Promise.all(view.runtimePods().filter((p) => p.ready).map(async (pod) => {
    const podKey = `${pod.namespace}/${pod.name}`;
    try {
      const { sessions } = await view.client(pod).list();
      const prev = view.reports.get(podKey);
      const next = new Map<string, string>();
      for (const st of sessions) {
        const k = `${st.namespace}/${st.name}`;
        const fp = [st.residency, st.phase, st.lastHibernation?.hibernatedAt, st.lastRehydrate?.at, st.lastError?.at, Math.floor(Date.parse(st.lastActivity) / 60_000)].join("|");
        next.set(k, fp);
        if (prev?.get(k) !== fp && view.sessions.get(k)?.status?.pod === pod.name) enqueue(k);
      }
      view.reports.set(podKey, next);
    } catch { /* the pod may be going away; its informer event handles that */ }
  }));
}
