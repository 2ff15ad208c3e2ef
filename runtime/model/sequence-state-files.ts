// A context sequence's state written straight into a hibernation file and read straight from one
// (sealed or plain), through the methods scripts/build-runtime-addon.sh adds to node-llama-cpp's
// addon (runtime/native/AddonContextStateFiles.cpp): llama.cpp streams the state through 1 MiB
// buffers (AES-256-GCM chunks when sealed, the xxHash64 when plain), so no plaintext is staged on
// the node, no pass reads a file a second time, no state goes out in tens of thousands of small
// writes (llama.cpp's own writer, for a state stored transposed), and large pieces go between the
// file and the KV cache without a copy through a buffer (llama.cpp's own loader copies each).
//
// node-llama-cpp keeps a sequence's tokens and serialises state calls with its own locks, both
// internal: this does what its saveStateToFile/loadStateFromFile do with them, and
// `stateFileSupport` checks every piece it relies on once, at start-up. Where anything is
// missing the runtime uses node-llama-cpp's file calls as before; the files are the same either way.
import { acquireLock } from "lifecycle-utils";
import type { Llama, LlamaContext, LlamaContextSequence } from "node-llama-cpp";
import type { PlainLoader } from "../storage/state-transfer.js";
import { yieldDecodeLoop } from "./decode-loop.js";
import { sharedLocks } from "./node-llama-cpp-locks.js";
import type { ChunkOpener, ChunkSealer, SealedChunks } from "../storage/sealing.js";

interface AddonContext {
  saveSequenceStatePlain(sequenceId: number, target: { fd: number }, tokens: Uint32Array): Promise<{ bytes: number; xxh64: string }>;
  saveSequenceStateSealed(sequenceId: number, target: SealedChunks, tokens: Uint32Array): Promise<number>;
  loadSequenceStateSealed(sequenceId: number, source: SealedChunks, layout: { chunks: number; plainBytes: number; maxTokens: number }): Promise<Uint32Array>;
  loadSequenceStatePlain(sequenceId: number, source: { fd: number }, expect: { plainBytes: number; maxTokens: number; xxh64: string }): Promise<Uint32Array>;
}

/** The internals of node-llama-cpp's LlamaContextSequence that its own state calls use. */
interface SequenceInternals {
  _sequenceId: number;
  _lock: object;
  _context: { _ctx: AddonContext };
  _contextTokens: number[];
  _nextTokenIndex: number;
  _loadedTokenPredictions: unknown[];
  _tokenPredictorOwner: object;
  _abortTokenPredictor(skipClearingPredictionsFromState?: boolean): Promise<void>;
  _ensureNotDisposed(): void;
  contextTokens: readonly number[];
  contextSize: number;
}

/**
 * Whether this process writes (and opens sealed) state files in the addon, or why not (said once,
 * at start-up). Checks the addon's methods and that node-llama-cpp's locks are the ones imported
 * here (one lifecycle-utils module, or the locks would exclude nothing).
 */
export function stateFileSupport(llama: Llama): { ok: true } | { ok: false; reason: string } {
  const bindings = (llama as unknown as { _bindings?: { AddonContext?: { prototype: Partial<AddonContext> } } })._bindings;
  const proto = bindings?.AddonContext?.prototype;
  if (typeof proto?.saveSequenceStateSealed !== "function" || typeof proto.loadSequenceStateSealed !== "function" || typeof proto.saveSequenceStatePlain !== "function"
    || typeof proto.loadSequenceStatePlain !== "function") {
    return { ok: false, reason: "node-llama-cpp's addon has no torpor state-file methods (scripts/build-runtime-addon.sh did not build it here)" };
  }
  return sharedLocks();
}

/**
 * Starts reading an open state file into the page cache on a native thread and returns at once
 * (the addon's prefetchStateFile): a rehydrate calls it as it opens the file, so the disk reads
 * while the context is allocated. Undefined where the addon lacks it.
 */
export function stateFilePrefetcher(llama: Llama): ((fd: number, bytes: number) => void) | undefined {
  const AddonContext = (llama as unknown as { _bindings?: { AddonContext?: { prefetchStateFile?: (fd: number, bytes: number) => boolean } } })._bindings?.AddonContext;
  const prefetch = AddonContext?.prefetchStateFile;
  if (typeof prefetch !== "function") return undefined;
  return (fd, bytes) => { prefetch.call(AddonContext, fd, bytes); };
}

function internals(sequence: LlamaContextSequence): SequenceInternals {
  const s = sequence as unknown as SequenceInternals;
  if (typeof s._sequenceId !== "number" || !Array.isArray(s._contextTokens) || typeof s._context?._ctx?.saveSequenceStateSealed !== "function"
    || typeof s._abortTokenPredictor !== "function" || !Array.isArray(s._loadedTokenPredictions)) {
    throw new Error("this node-llama-cpp's sequences lack the internals the addon's state files rely on");
  }
  return s;
}

/** Both of node-llama-cpp's locks for a state call on this sequence, taken in its order. */
async function locked<T>(s: SequenceInternals, body: () => Promise<T>): Promise<T> {
  const evaluatorLock = await acquireLock([s._lock, "evaluate"]);
  try {
    // Other sessions' greedy turns on this context let it go after their current step.
    yieldDecodeLoop(s._context as unknown as LlamaContext);
    const contextLock = await acquireLock([s._context, "context"]);
    try {
      s._ensureNotDisposed();
      return await body();
    } finally { contextLock.dispose(); }
  } finally { evaluatorLock.dispose(); }
}

/** Writes the sequence's state, as llama.cpp's saveStateToFile would, into an open file from its start; returns its size and xxHash64. */
export function writeSequenceState(sequence: LlamaContextSequence): (fd: number) => Promise<{ bytes: number; xxh64: string }> {
  return (fd) => {
    const s = internals(sequence);
    return locked(s, () => s._context._ctx.saveSequenceStatePlain(s._sequenceId, { fd }, Uint32Array.from(s.contextTokens)));
  };
}

/** Seals the sequence's state into the file's chunks (sealing.ts's sealFile). */
export function sealSequenceState(sequence: LlamaContextSequence): ChunkSealer {
  return (target) => {
    const s = internals(sequence);
    return locked(s, () => s._context._ctx.saveSequenceStateSealed(s._sequenceId, target, Uint32Array.from(s.contextTokens)));
  };
}

/** Replaces what the sequence held with the tokens `load` puts into it, as loadStateFromFile does; a refusal leaves it empty. */
function replaceState(sequence: LlamaContextSequence, load: (s: SequenceInternals) => Promise<Uint32Array>): Promise<void> {
  const s = internals(sequence);
  return locked(s, async () => {
    s._tokenPredictorOwner = {};
    await s._abortTokenPredictor(true);
    s._ensureNotDisposed();
    s._loadedTokenPredictions.length = 0;
    s._nextTokenIndex = 0;
    s._contextTokens = [];
    const tokens = Array.from(await load(s));
    s._contextTokens = tokens;
    s._nextTokenIndex = tokens.length;
  });
}

/** Opens the file's chunks into the sequence (sealing.ts's openSealedFile). */
export function openSequenceState(sequence: LlamaContextSequence): ChunkOpener {
  return (source) => replaceState(sequence, (s) => s._context._ctx.loadSequenceStateSealed(s._sequenceId, source, { chunks: source.chunks, plainBytes: source.plainBytes, maxTokens: s.contextSize }));
}

/**
 * Loads an unsealed state from an open file into the sequence in one pass, its xxHash64 checked
 * on the way; a file whose checksum differs fails with code CHECKSUM_MISMATCH, and one that does
 * not load with the reason, both leaving the sequence empty (hibernation-store.ts's PlainLoader).
 */
export function loadSequenceState(sequence: LlamaContextSequence): PlainLoader {
  return (fd, expect) => replaceState(sequence, (s) => s._context._ctx.loadSequenceStatePlain(s._sequenceId, { fd }, { plainBytes: expect.bytes, maxTokens: s.contextSize, xxh64: expect.xxh64 }));
}
