// Types of the runtime's session API, shared by the runtime, the operator's runtime client and tests.

/** A committed hibernation file, as the runtime reports it. */
export interface HibernationRecord {
  manifestFile: string;
  stateFile: string;
  bytes: number;
  /** SHA-256 of an unsealed state; sealed files carry AEAD tags instead. */
  sha256?: string;
  tokenCount: number;
  hibernatedAt: string;
}

/** A hibernation file on the volume (the sweeper's view). */
export interface HibernationFileEntry {
  namespace: string;
  name: string;
  path: string;
  manifestFile: string;
  bytes: number;
  tokenCount: number;
  hibernatedAt: string;
}

/** One message of a conversation read back (`GET .../messages`), in OpenAI's chat shape. */
export interface ConversationMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

/** A session's conversation, as the runtime holding it has it (in memory, or in its hibernation manifest). */
export interface Conversation {
  messages: ConversationMessage[];
  /** Where it was read: memory, or the manifest of the state on the volume (the session was not woken). */
  source: "memory" | "volume";
}

/** Sent by the gateway: the placement epoch it routed by; a runtime holding an older one refuses. */
export const EPOCH_HEADER = "x-torpor-epoch";

export type Residency = "NotCreated" | "InMemory" | "Hibernated";
/** What the session is doing right now; transitions are visible to callers. */
export type Phase = "Idle" | "Creating" | "Generating" | "Hibernating" | "Rehydrating";

export interface SessionSpec {
  contextSize: number;
  systemPrompt?: string;
  /** Per-session idle policy; falls back to the runtime's default. 0 disables. */
  idleAfterMs?: number;
  /** Checkpoints while resident (absent: none): the session's own policy, else its pool's. */
  checkpoint?: CheckpointSettings;
}

/** When a resident session writes its state between turns; a field absent or 0 does not trigger. */
export interface CheckpointSettings {
  afterTurns?: number;
  intervalMs?: number;
}

export interface GenerateOptions {
  maxTokens: number;
  temperature: number;
  seed?: number;
  topP?: number;
  /** Stop sequences (request-validation.ts). */
  stop?: string[];
  /** OpenAI's penalties over the last generated tokens; absent: none. */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** [token id, bias] pairs (request-validation.ts); a token id outside the model's vocabulary is refused. */
  logitBias?: Array<[number, number]>;
  signal?: AbortSignal;
  onText?: (text: string) => void;
  /** Called once the session is resident, before generation: streaming responses send headers here. */
  onStart?: (wake: Wake) => void;
}

export interface Wake {
  rehydrated: boolean;
  rehydrateMs?: number;
  created: boolean;
  /**
   * A conditional pre-warm not done; the session stays hibernated until its next request.
   * `no_room`: asked for only if there was room (`?ifRoom=true`); `idle`: asked for only if the
   * session was used within its idle policy (`?ifActive=true`), and it was not.
   */
  deferred?: "no_room" | "idle";
}

export interface GenerateResult {
  text: string;
  finishReason: "stop" | "length" | "aborted";
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens reused from the session's evaluated state (the prefix cache). */
  cachedTokens: number;
  rehydrated: boolean;
  rehydrateMs?: number;
  created: boolean;
}

export interface HibernationSummary extends HibernationRecord {
  durationMs: number;
  reason: string;
}

export interface HibernateOutcome {
  outcome: "hibernated" | "already-hibernated" | "not-created";
  record?: HibernationSummary;
}

export interface SessionStatus {
  namespace: string;
  name: string;
  path: string;
  residency: Residency;
  phase: Phase;
  /** The placement epoch this runtime serves the session under (0: unfenced). */
  epoch: number;
  contextSize: number;
  tokenCount: number;
  messages: number;
  queued: number;
  createdAt: string;
  lastActivity: string;
  lastHibernation?: HibernationSummary;
  /** `replayed`: why the state was not loaded and the history was evaluated again instead. */
  lastRehydrate?: {
    at: string; durationMs: number; bytes: number; tokenCount: number; replayed?: string;
    /** Filled by the first evaluation after the rehydrate: tokens it reused, and whether that covered what the prompt shared with the restore. */
    reusedTokens?: number; restoreVerified?: boolean;
  };
  lastCheckpoint?: HibernationRecord & { durationMs: number };
  /** The commit found on the volume when the session was registered here (what a crash left). */
  foundOnVolume?: { tokenCount: number; hibernatedAt: string; bytes?: number };
  lastError?: { code: string; message: string; at: string; reason?: string };
  /** settingsDigest() of the settings the runtime holds for the session (contract/session-settings.ts). */
  settings?: string;
}

export interface RuntimeInfo {
  pod: string;
  node: string;
  model: { name: string; fingerprint: string; trainContextSize: number };
  capacity: { maxResident: number; resident: number; sessions: number };
  memory: { rssBytes: number; vramUsedBytes: number };
  ready: boolean;
}
