// Which checkpoint policy a session follows: its own where its spec sets one, else its pool's
// (the chart's checkpoint values), so that a cluster can make every session durable against a
// crash without each manifest asking. A session's own policy with nothing on (`interval: 0s`) opts
// it out of the pool's.
import type { CheckpointSettings } from "../../contract/runtime-api.js";

/** Undefined: no checkpoints. */
export function effectiveCheckpoint(own: CheckpointSettings | undefined, pool: CheckpointSettings | undefined): CheckpointSettings | undefined {
  return active(own ?? pool);
}

function active(c: CheckpointSettings | undefined): CheckpointSettings | undefined {
  if (!c) return undefined;
  const out: CheckpointSettings = {
    ...(c.afterTurns ? { afterTurns: c.afterTurns } : {}),
    ...(c.intervalMs ? { intervalMs: c.intervalMs } : {}),
  };
  return out.afterTurns || out.intervalMs ? out : undefined;
}
