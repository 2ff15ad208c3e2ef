// Which runtime pod may take a request for a session now, or why none ever will without a change,
// read from the session's status alone.
import { TorporError } from "../contract/errors.js";
import { SPEC_INVALID_REASON, type InferenceSession } from "../contract/inference-session.js";
import { NO_RUNTIME_POOL_REASON, POOL_STOPPED_REASON } from "../contract/runtime-pool.js";

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

/**
 * Why no waiting can serve the session, to be said at once rather than after the wake bound: its
 * model has no pool, its pools were stopped by hand, or its pool refused its spec. Undefined: a pod
 * is (or may soon be) there for it.
 */
export function unservable(s: InferenceSession, namespace: string, name: string): TorporError | undefined {
  const ready = s.status?.conditions?.find((c) => c.type === "Ready");
  if (ready?.status !== "False") return undefined;
  if (ready.reason === NO_RUNTIME_POOL_REASON) return new TorporError("model_not_found", `session ${namespace}/${name}: ${ready.message}`);
  if (ready.reason === POOL_STOPPED_REASON) return new TorporError("pool_stopped", `session ${namespace}/${name} cannot be served now: ${ready.message}`);
  if (ready.reason === SPEC_INVALID_REASON) return new TorporError("session_invalid", `session ${namespace}/${name} cannot be served: ${ready.message}`);
  return undefined;
}
