// A hibernation's manifest: the commit record of a saved session (its history, the state file it
// names and that file's checksum, the model it was saved under, the placement epoch that wrote it),
// and the checks one read back from the volume must pass before anything it names is touched.
// Anyone with write access to the volume can put a file there: a manifest is refused with a reason
// (StateRejectedError) unless it is well formed, belongs to this session, is sealed where sealing is
// on, and comes from a placement the reader may load.
import path from "node:path";
import type { ChatHistoryItem } from "node-llama-cpp";
import { StateRejectedError } from "../../contract/errors.js";
import { openJson, sealJson, type SealedEnvelope, type SealingKeys, type SealIdentity } from "./sealing.js";

export const MANIFEST_FORMAT = "torpor.dev/hibernation";
export const MANIFEST_VERSION = 1;
/** Far more than any history: a larger file is refused unread. */
export const MAX_MANIFEST_BYTES = 64 << 20;

export interface SessionRef {
  namespace: string;
  name: string;
  /** Sub-path inside the namespace's folder (per-tenant separation). */
  path?: string;
}

/**
 * Which commits a session may load: its own epoch's, and until it has been resident once, those of
 * the placement before it (`min`: a hand-off, adopted under its own epoch). 0/0 is unfenced.
 */
export interface EpochWindow { epoch: number; min: number }
export const UNFENCED: EpochWindow = { epoch: 0, min: 0 };

/** More sequences than any pool is configured with: a manifest naming more is refused, not allocated. */
export const MAX_CONTEXT_SEQUENCES = 64;

export interface HibernationManifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  namespace: string;
  name: string;
  path: string;
  modelFingerprint: string;
  contextSize: number;
  /** Sequences of the context it was saved from (absent: 1): a state loads only into the same shape. */
  contextSequences?: number;
  /** The flash attention that context was told to use (absent: "auto", llama.cpp's choice): the state's layout depends on it. */
  flashAttention?: boolean;
  tokenCount: number;
  stateFile: string;
  stateBytes: number;
  /** SHA-256 of the state file (hex) in files of earlier releases; "" in new and sealed ones (the release before this one requires the field). */
  stateSha256: string;
  /** xxHash64 of the state file (hex), checked on rehydrate instead of the SHA-256 when present (state-digest.ts). */
  stateXxh64?: string;
  systemPrompt?: string;
  history: ChatHistoryItem[];
  createdAt: string;
  hibernatedAt: string;
  /** The placement epoch that wrote it (0: unfenced). */
  epoch?: number;
  runtime: { nodeLlamaCpp: string; pod?: string };
}

/** What a manifest file holds: a manifest, or a sealed envelope with the fields listings may read. */
type ManifestFile = HibernationManifest & Partial<SealedEnvelope>;

/** Refuses a manifest with the reason a user can act on. */
export type Reject = (reason: ConstructorParameters<typeof StateRejectedError>[0], msg: string) => never;

/** The body of a manifest file: the manifest, or when sealing, its sealed envelope plus the fields listings may read. */
export function manifestBody(keys: SealingKeys | undefined, identity: SealIdentity, m: HibernationManifest): unknown {
  return keys ? { ...sealJson(keys, identity, MANIFEST_FORMAT, m), ...outerFields(m) } : m;
}

/** A manifest file's JSON when it is a torpor manifest at all; nothing is checked beyond that. */
export function parseManifestFile(raw: string): ManifestFile | undefined {
  try {
    const parsed = JSON.parse(raw) as ManifestFile;
    return parsed?.format === MANIFEST_FORMAT ? parsed : undefined;
  } catch { return undefined; }
}

/**
 * The outer fields of a manifest file (sealed ones included, without keys): what a sweeper or a
 * listing needs to find the state it names. Never trusted for a load.
 */
export function looseManifest(raw: string): HibernationManifest | undefined {
  const m = parseManifestFile(raw);
  return m && typeof m.stateFile === "string" ? m : undefined;
}

/** Opens a sealed manifest file under the identity it must have; throws where it does not authenticate. */
export function openManifestFile(keys: SealingKeys, identity: SealIdentity, parsed: ManifestFile): HibernationManifest {
  return openJson<HibernationManifest>(keys, identity, parsed as SealedEnvelope);
}

/**
 * Checks a manifest file's text for this session and window: authenticated when sealed (under the
 * model it names, which binds the history to the session), complete, this session's own, from a
 * placement the window accepts. `modelChanged`: the session's own file, saved under another model.
 */
export function checkManifest(raw: string, expect: { ref: SessionRef; modelFingerprint: string; window: EpochWindow }, keys: SealingKeys | undefined,
  reject: Reject): { m: HibernationManifest; modelChanged: boolean } {
  const { ref, modelFingerprint, window } = expect;
  let parsed: ManifestFile;
  try { parsed = JSON.parse(raw) as ManifestFile; } catch { return reject("manifest_invalid", "manifest is not valid JSON"); }
  if (parsed?.format !== MANIFEST_FORMAT) reject("manifest_invalid", "not a torpor hibernation manifest");
  const identity: SealIdentity = { namespace: ref.namespace, name: ref.name, path: ref.path ?? "", modelFingerprint };
  let m: HibernationManifest;
  const modelChanged = typeof parsed.modelFingerprint === "string" && parsed.modelFingerprint !== modelFingerprint;
  if (parsed.sealed) {
    if (!keys) return reject("seal_invalid", "the file is sealed and this runtime has no sealing keys (TORPOR_SEALING_KEYS)");
    if (typeof parsed.modelFingerprint !== "string") reject("manifest_invalid", "manifest names no model");
    try { m = openManifestFile(keys, { ...identity, modelFingerprint: parsed.modelFingerprint }, parsed); } catch (err) {
      return reject("seal_invalid", (err as Error).message);
    }
  } else {
    // Plaintext where sealing is on is exactly what someone with write access to the volume could forge.
    if (keys) reject("unsealed", "the file is not sealed and this runtime requires sealed files");
    m = parsed;
    if (m.version !== MANIFEST_VERSION) reject("format_unsupported", `manifest version ${m.version} is not supported (want ${MANIFEST_VERSION})`);
  }
  if (typeof m.stateFile !== "string" || path.basename(m.stateFile) !== m.stateFile || !Array.isArray(m.history) || typeof m.modelFingerprint !== "string" ||
      typeof m.stateSha256 !== "string" || typeof m.stateBytes !== "number" || typeof m.contextSize !== "number" ||
      (m.contextSequences !== undefined && !(Number.isInteger(m.contextSequences) && m.contextSequences >= 1 && m.contextSequences <= MAX_CONTEXT_SEQUENCES)) ||
      (m.flashAttention !== undefined && typeof m.flashAttention !== "boolean") ||
      (m.stateXxh64 !== undefined && !(typeof m.stateXxh64 === "string" && /^[0-9a-f]{16}$/.test(m.stateXxh64)))) {
    reject("manifest_invalid", "manifest is missing required fields");
  }
  if (m.modelFingerprint !== parsed.modelFingerprint) reject("manifest_invalid", "the manifest's model differs inside and outside its seal");
  if (m.namespace !== ref.namespace || m.name !== ref.name || (m.path ?? "") !== (ref.path ?? "")) {
    reject("manifest_invalid", `manifest belongs to ${m.namespace}/${m.name}, not to ${ref.namespace}/${ref.name}`);
  }
  if (window.epoch > 0 && (m.epoch ?? 0) < window.min) {
    reject("epoch_too_old", `written by placement epoch ${m.epoch ?? 0}; this placement accepts ${window.min} and newer`);
  }
  return { m, modelChanged };
}

/** What the sweeper and `kubectl`-side listings may read of a sealed manifest without keys (no history). */
function outerFields(m: HibernationManifest) {
  return { namespace: m.namespace, name: m.name, path: m.path, stateFile: m.stateFile, stateBytes: m.stateBytes, tokenCount: m.tokenCount, hibernatedAt: m.hibernatedAt, epoch: m.epoch };
}
