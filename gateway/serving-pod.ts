// Which runtime pod may take a request for a session now, read from the session's status alone.
import type { InferenceSession } from "../contract/inference-session.js";

/**
 * The session's pod when it is Ready, and also when it is unready only because its runtime refused
 * its hibernated state (Degraded with the same reason as Ready). The runtime answers that request
 * itself: it tries the state again, which serves once the file has been repaired, or refuses it at
 * once with the reason (422). Waiting for Ready there held every request for the whole wake bound
 * and then answered 503 "retry shortly", for good: after a request has woken a session, nothing
 * else tries its state again. Undefined: wait (not placed, a hand-off, a pod not Ready).
 */
export function servingPod(s: InferenceSession): string | undefined {
  const pod = s.status?.pod;
  const ready = s.status?.conditions?.find((c) => c.type === "Ready");
  if (!pod || !ready) return undefined;
  if (ready.status === "True") return pod;
  const degraded = s.status?.conditions?.find((c) => c.type === "Degraded");
  return degraded?.status === "True" && degraded.reason === ready.reason ? pod : undefined;
}
