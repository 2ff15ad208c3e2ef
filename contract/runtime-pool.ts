// A runtime pool (one Deployment per model) as the operator scales it. The chart writes the policy
// onto the Deployment; the operator writes what it did there too, so a restarted operator (or a
// new leader) reads the pool's state from the API server, not from memory.

/** Seconds every session of the pool must have slept before the pool goes to zero replicas; absent or 0: never. */
export const SCALE_TO_ZERO_AFTER_ANNOTATION = "torpor.dev/scale-to-zero-after-seconds";
/** Replicas to come back with (the chart's `replicas`). */
export const AWAKE_REPLICAS_ANNOTATION = "torpor.dev/awake-replicas";
/** Set when the operator scaled the pool to zero (RFC 3339); a request after it wakes the pool. */
export const SCALED_TO_ZERO_AT_ANNOTATION = "torpor.dev/scaled-to-zero-at";
/** Set when the operator woke the pool: idleness counts from here, so a pool is not put back to sleep before its wake-up request arrives. */
export const WOKEN_AT_ANNOTATION = "torpor.dev/woken-at";

/** The Ready condition's reason while a session's pool is scaled to zero: the next request wakes it. */
export const SCALED_TO_ZERO_REASON = "ScaledToZero";
/**
 * Ready reason of a session whose model no runtime pool serves at all (a typo in spec.model, a pool
 * not installed): waiting cannot help, so the gateway answers at once instead of holding the request.
 */
export const NO_RUNTIME_POOL_REASON = "NoRuntimePool";
/**
 * Ready reason of a session whose model's pools all stand at zero replicas that a person set (no
 * scale-to-zero policy, so no request brings them back): nothing serves it until someone scales a
 * pool up, so the gateway answers at once instead of holding the request for the wake timeout.
 */
export const POOL_STOPPED_REASON = "PoolStopped";
