// How a session's state travels between llama.cpp and the hibernation store: what a hibernate
// hands the store to write, what a rehydrate hands it to load into, and what a verified state is.
// The store owns the files; these are the hooks through which llama.cpp (or the runtime addon,
// sequence-state-files.ts) reads and writes them without a second pass over the bytes.
import type { ChunkOpener, ChunkSealer } from "./sealing.js";
import type { HibernationManifest } from "./hibernation-manifest.js";

/**
 * What a hibernate writes: llama.cpp's state file at a path it is given or, where the runtime can
 * (sequence-state-files.ts), the same file written into an open descriptor with its xxHash64, or
 * the state sealed straight into the file's chunks.
 */
export type StateWriter = ((tmpPath: string) => Promise<void>) | {
  toFile(tmpPath: string): Promise<void>;
  plain?: (fd: number) => Promise<{ bytes: number; xxh64: string }>;
  sealed?: ChunkSealer;
};

/**
 * Loads an unsealed state from an open file straight into the caller's sequence, checking its
 * xxHash64 on the way (sequence-state-files.ts). Rejects with code CHECKSUM_MISMATCH when the bytes
 * are not the manifest's, and with llama.cpp's reason when the state does not load; either way
 * the sequence is left empty.
 */
export type PlainLoader = (fd: number, expect: { bytes: number; xxh64: string }) => Promise<void>;

/** The error code a PlainLoader rejects with when the file's checksum is not the manifest's. */
export const CHECKSUM_MISMATCH = "TORPOR_CHECKSUM_MISMATCH";

/** What verify() may load a state into, given its manifest: sealed chunks as they are opened, or an unsealed file in one pass. */
export interface StateLoaders {
  sealed?: ChunkOpener;
  plain?: PlainLoader;
  /** Asked to read the state ahead as soon as it is open (sealed: once its size checked), beside the context's allocation; a hint that returns at once. */
  prefetch?: (fd: number, bytes: number) => void;
}

export interface VerifiedState {
  manifest: HibernationManifest;
  manifestFile: string;
  /**
   * The plaintext state to load: on the volume when unsealed, a node-local staging file when
   * sealed; the sealed file on the volume when `loaded`.
   */
  statePath: string;
  /** Loaded straight into the caller's sequence (verify's `loaders`): there is nothing left to load. */
  loaded?: boolean;
  /** A loader's failure on an authentic file (llama.cpp refused the state): the caller rebuilds from the history. */
  loadError?: unknown;
  /** Removes the staging plaintext, if any; call it once the state is loaded (or not). */
  release(): Promise<void>;
  /**
   * Settles once the state's integrity is known: sealed states, and unsealed ones the caller's
   * loader read, are checked before verify() returns; otherwise an unsealed state's checksum is
   * computed while llama.cpp loads it, and a mismatch rejects here with the reason. Whoever loads
   * the state awaits it before the loaded state is used.
   */
  integrity: Promise<void>;
  /**
   * The session's own file (its identity and, when sealed, its key check out), written while its
   * pool served another model: the pool's model was changed. Its KV state means nothing to this
   * model and is not loaded or read; its history is the conversation, and is replayed.
   */
  modelChanged?: boolean;
}
