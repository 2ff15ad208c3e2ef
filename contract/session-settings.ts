// What a registration tells a runtime about a session besides where it is placed: the settings
// from its spec. The runtime reports a digest of the ones it holds; the operator registers the
// session again where its own differ, so a spec change reaches a session that is already placed.

export interface SessionSettings {
  path?: string;
  /** Absent: the pool's default size. */
  contextSize?: number;
  systemPrompt?: string;
  idleAfterSeconds?: number;
  checkpointAfterTurns?: number;
  checkpointIntervalSeconds?: number;
}

/** Field by field in a fixed order, absent as null: the same settings give the same string on both sides. */
export function settingsDigest(s: SessionSettings): string {
  return JSON.stringify([
    s.path ?? "", s.contextSize ?? null, s.systemPrompt ?? null, s.idleAfterSeconds ?? null,
    s.checkpointAfterTurns ?? null, s.checkpointIntervalSeconds ?? null,
  ]);
}
