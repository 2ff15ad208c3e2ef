// Verifies that a restore was real: the first evaluation after a rehydrate must start at the
// restored position, not from zero. llama.cpp's server has shipped restores that were silent
// no-ops, and sliding-window and hybrid models whose restores force a full re-prefill; a
// timing-only check would never notice. A client may also legitimately change earlier messages
// (OpenAI route): then reuse stops at the first changed token, which is divergence, not failure.

export interface RestoreCheck {
  /** Tokens the restored state held. */
  restoredTokens: number;
  /** How many of them the new prompt shares, from the start. */
  commonPrefix: number;
  /** How many the evaluation actually reused. */
  reusedTokens: number;
  /** The reuse reached the common prefix (the restore did its job). */
  verified: boolean;
  /** The prompt departs from the restored tokens before their end (the client changed history). */
  diverged: boolean;
}

export function checkRestore(restored: readonly number[], prompt: readonly number[], reused: number): RestoreCheck {
  let common = 0;
  while (common < restored.length && common < prompt.length && restored[common] === prompt[common]) common++;
  // The last matching token may be evaluated again for its logits: one short still counts as reused.
  return { restoredTokens: restored.length, commonPrefix: common, reusedTokens: reused, verified: reused >= Math.max(0, common - 1), diverged: common < restored.length };
}
