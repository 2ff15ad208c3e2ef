// Durable, atomic hibernation files on the volume.
//
// Layout, per session, in <root>/<namespace>/[<sub-path>/]:
//   <name>@e<epoch>.torpor.json  manifest: the commit record of placement <epoch> (history, checksums,
//                                model fingerprint; hibernation-manifest.ts); <name>.torpor.json for
//                                unfenced use (no epoch)
//   <name>@e<epoch>.claim        placement <epoch> owns the session (empty; the fence)
//   <name>.<id>.state            llama.cpp sequence state named by a manifest
//   .<name>.*.tmp                in-flight writes; never read, removed on failure and by the sweeper
// The manifest's rename is the commit point: a crash before it leaves the previous manifest and
// its state untouched, and a state file no manifest names is never loaded.
//
// Fencing without a read-compare-rename race on a shared (NFS-style) volume: every placement has
// an epoch from the operator (the API server's optimistic concurrency makes them monotonic), and
// each epoch writes only files named by its own epoch, so two writers never replace each other's
// commit. A placement claims the session when it is registered; from then on a commit from an
// epoch older than the newest claim is ignored by every reader and cleaned up, whenever it lands.
// '@' cannot occur in a Kubernetes name, so no session's files can be mistaken for another's.
import { randomBytes } from "node:crypto";
import { lstat, open, readdir, realpath, rename, rm, rmdir, stat, unlink, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { StaleEpochError, StateRejectedError, TorporError } from "../../contract/errors.js";
import { resolveSessionDir, validateName } from "./hibernation-path.js";
import { checkManifest, looseManifest, manifestBody, MANIFEST_FORMAT, MANIFEST_VERSION, MAX_MANIFEST_BYTES, openManifestFile, parseManifestFile, UNFENCED,
  type EpochWindow, type HibernationManifest, type Reject, type SessionRef } from "./hibernation-manifest.js";
import { openSealedFile, SealError, sealFile, type SealingKeys, type SealIdentity } from "./sealing.js";
import { SealingThreads } from "./sealing-threads.js";
import { digestFile, digestHandle, type StateDigests } from "./state-digest.js";
import { openedPath, openRegular, readRegularFile, UNEXPECTED_FILE, UnexpectedFileError } from "./volume-file.js";
import type { HibernationFileEntry, HibernationRecord } from "../../contract/runtime-api.js";
import { CHECKSUM_MISMATCH, type PlainLoader, type StateLoaders, type StateWriter, type VerifiedState } from "./state-transfer.js";

export type { HibernationFileEntry, HibernationRecord };

const MANIFEST_SUFFIX = ".torpor.json";
const CLAIM_SUFFIX = ".claim";
const STAGED_SUFFIX = ".plain";

export interface StoreOptions {
  /** Hears failures that lose nothing (cleanup after a commit); the runtime logs them. */
  onWarning?: (err: unknown, message: string) => void;
  /**
   * Seal state and manifest (sealing.ts). llama.cpp writes and reads plaintext itself, so the
   * plaintext lives only in `stagingDir`: node-local, never the shared volume.
   */
  sealing?: { keys: SealingKeys; stagingDir: string; /** Threads that seal and open (0: the calling thread); default: the cores, at most 4. */ threads?: number };
}

interface SessionFiles {
  /** Committed manifests by epoch (0: the unfenced name). */
  manifests: Map<number, string>;
  claims: number[];
}

/** A new file (never an existing one) with this JSON, on disk before it returns. */
async function writeDurably(file: string, body: unknown): Promise<void> {
  const fh = await open(file, "wx", 0o600);
  try {
    await fh.writeFile(JSON.stringify(body));
    await fh.sync();
  } finally { await fh.close(); }
}

/** Asks for `file` to be read ahead if it opens as a regular file (openRegular's checks). A hint: failures are ignored. */
async function prefetchRegular(file: string, bytes: number, prefetch: (fd: number, bytes: number) => void): Promise<void> {
  const opened = await openRegular(file).catch(() => undefined);
  if (!opened) return;
  try { prefetch(opened.fh.fd, bytes); } catch { /* a hint not taken */ } finally {
    await opened.fh.close().catch(() => undefined);
  }
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, "r");
  try { await fh.sync(); } finally { await fh.close(); }
}

/**
 * A manifest holds the chat history: a 131,072-token conversation is well under 1 MiB of text, so
 * anything near this is not one torpor wrote.
 */

export class HibernationStore {
  private readonly onWarning: (err: unknown, message: string) => void;
  private readonly sealing?: { keys: SealingKeys; stagingDir: string; threads: SealingThreads };
  private readonly deleting = new Set<Promise<void>>();

  private realRoot?: Promise<string>;

  constructor(readonly root: string, opts: StoreOptions = {}) {
    this.onWarning = opts.onWarning ?? (() => undefined);
    if (opts.sealing) this.sealing = { ...opts.sealing, threads: new SealingThreads(opts.sealing.threads) };
  }

  /** Ends the sealing threads (after settled(): nothing may be sealing or opening then). */
  async close(): Promise<void> {
    await this.sealing?.threads.close();
  }

  async dirFor(ref: SessionRef): Promise<string> {
    validateName("name", ref.name);
    // The root is this runtime's mount, resolved once (a failure, say before the volume is there, is not kept).
    this.realRoot ??= realpath(this.root).catch((err: unknown) => { this.realRoot = undefined; throw err; });
    return resolveSessionDir(this.root, ref.namespace, ref.path ?? "", await this.realRoot);
  }

  private manifestPath(dir: string, name: string, epoch = 0): string {
    return path.join(dir, epoch > 0 ? `${name}@e${epoch}${MANIFEST_SUFFIX}` : name + MANIFEST_SUFFIX);
  }

  private async scan(dir: string, name: string): Promise<SessionFiles> {
    const entries = await readdirOrNone(dir);
    const esc = name.replace(/\./g, "\\.");
    const manifest = new RegExp(`^${esc}(?:@e(\\d+))?\\.torpor\\.json$`);
    const claim = new RegExp(`^${esc}@e(\\d+)\\.claim$`);
    const out: SessionFiles = { manifests: new Map(), claims: [] };
    for (const f of entries) {
      const m = manifest.exec(f);
      if (m) { out.manifests.set(m[1] ? Number(m[1]) : 0, f); continue; }
      const c = claim.exec(f);
      if (c) out.claims.push(Number(c[1]));
    }
    return out;
  }

  /** The newest epoch that has claimed or committed the session. */
  private static newest(f: SessionFiles): number {
    return Math.max(0, ...f.claims, ...f.manifests.keys());
  }

  /**
   * Placement `epoch` takes the session: refuses if a newer placement already has, writes its
   * claim, and returns the epoch of the placement before it (whose commit it may adopt).
   */
  async claim(ref: SessionRef, epoch: number): Promise<number> {
    if (epoch <= 0) return 0;
    const dir = await this.dirFor(ref);
    const files = await this.scan(dir, ref.name);
    const newest = HibernationStore.newest(files);
    if (newest > epoch) throw new StaleEpochError(epoch, newest, `cannot register ${ref.namespace}/${ref.name}`);
    const previous = Math.max(0, ...files.claims.filter((c) => c < epoch));
    if (!files.claims.includes(epoch)) {
      // Created, never opened if there: an open for writing of a FIFO planted under that name since
      // the scan would block a thread-pool thread until a reader came. Existing is all a claim says.
      await open(path.join(dir, `${ref.name}@e${epoch}${CLAIM_SUFFIX}`), "wx", 0o600).then((fh) => fh.close(), (err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw err;
      });
      await fsyncPath(dir);
    }
    // Claims older than the previous one fence nothing any more.
    for (const c of files.claims) if (c < previous) await rm(path.join(dir, `${ref.name}@e${c}${CLAIM_SUFFIX}`), { force: true });
    return previous;
  }

  /** Whether a placement strictly between these epochs claimed the session or committed it (it was elsewhere meanwhile). */
  async placedBetween(ref: SessionRef, older: number, newer: number): Promise<boolean> {
    const files = await this.scan(await this.dirFor(ref), ref.name);
    return files.claims.some((c) => c > older && c < newer) || [...files.manifests.keys()].some((e) => e > older && e < newer);
  }

  /** The committed manifest this window may load: the newest inside it. */
  private static pick(files: SessionFiles, w: EpochWindow): [number, string] | undefined {
    const eligible = [...files.manifests].filter(([e]) => (w.epoch === 0 ? e === 0 : e >= w.min && e <= w.epoch)).sort(([a], [b]) => b - a);
    return eligible[0];
  }

  /**
   * Writes state + manifest durably, as placement `window.epoch`. `writeState` fills the given temp
   * path (llama.cpp writes it itself), or writes or seals the state into an open file itself;
   * everything after is ours: fsync, checksum, rename, manifest commit, dir fsync. Refuses
   * (StaleEpochError) when a newer placement has claimed the session.
   */
  async save(
    ref: SessionRef,
    window: EpochWindow,
    writeState: StateWriter,
    fields: Omit<HibernationManifest, "format" | "version" | "namespace" | "name" | "path" | "stateFile" | "stateBytes" | "stateSha256" | "stateXxh64" | "hibernatedAt" | "epoch">,
  ): Promise<HibernationRecord> {
    const dir = await this.dirFor(ref);
    const { epoch } = window;
    const before = await this.scan(dir, ref.name);
    // Checked before the costly write. Racing a newer claim is harmless: our file carries our
    // epoch, which every reader after that claim ignores.
    const newest = HibernationStore.newest(before);
    if (epoch > 0 && newest > epoch) throw new StaleEpochError(epoch, newest, `cannot hibernate ${ref.namespace}/${ref.name}`);
    const id = randomBytes(6).toString("hex");
    const stateName = `${ref.name}.${id}.state`;
    const tmpState = path.join(dir, `.${stateName}.tmp`);
    const tmpManifest = path.join(dir, `.${ref.name}.${id}.json.tmp`);
    const finalState = path.join(dir, stateName);
    const manifestFile = this.manifestPath(dir, ref.name, epoch);
    // What this commit replaces: our epoch's previous manifest (renamed over) and older epochs' ones.
    const superseded = [...before.manifests].filter(([e]) => e <= epoch).map(([, f]) => path.join(dir, f));
    const supersededStates = (await Promise.all(superseded.map((f) => this.readManifestLoose(f))))
      .map((m) => m && path.join(dir, path.basename(m.stateFile))).filter((f): f is string => !!f && f !== finalState);
    let manifest: HibernationManifest;
    const identity: SealIdentity = { namespace: ref.namespace, name: ref.name, path: ref.path ?? "", modelFingerprint: fields.modelFingerprint };
    const writer = typeof writeState === "function" ? { toFile: writeState, plain: undefined, sealed: undefined } : writeState;
    const staging = this.sealing && !writer.sealed ? this.stagingPath() : undefined;
    try {
      let bytes: number, digests: StateDigests = {};
      // Settles when the state is on the disk: the manifest is written meanwhile where that is
      // possible (its digest is known before the fsync), so the two fsyncs overlap.
      let stateDurable: Promise<void> = Promise.resolve();
      if (this.sealing && writer.sealed) {
        // Sealed as llama.cpp streams it out: no plaintext anywhere.
        bytes = await sealFile(this.sealing.keys, identity, stateName, writer.sealed, tmpState, this.sealing.threads);
      } else if (this.sealing && staging) {
        // llama.cpp writes plaintext node-locally; only the sealed stream reaches the volume.
        await writer.toFile(staging);
        bytes = await sealFile(this.sealing.keys, identity, stateName, staging, tmpState, this.sealing.threads);
        this.removeLater(staging);
      } else if (writer.plain) {
        // Written with its checksum on the way: only the fsync is left, and it overlaps the manifest's.
        const fh = await open(tmpState, "wx", 0o600);
        const written = await writer.plain(fh.fd).catch(async (err: unknown) => { await fh.close(); throw err; });
        stateDurable = fh.sync().finally(() => fh.close());
        digests = { xxh64: written.xxh64 };
        bytes = written.bytes;
      } else {
        const fh = await open(tmpState, "wx", 0o600);
        try {
          await writer.toFile(tmpState);
          // fsync waits on the disk, hashing on the CPU (the file is still in the page cache): overlap them.
          [, digests] = await Promise.all([fh.sync(), digestFile(tmpState, { xxh64: true })]);
          bytes = (await fh.stat()).size;
        } finally { await fh.close(); }
      }
      manifest = {
        format: MANIFEST_FORMAT, version: MANIFEST_VERSION,
        namespace: ref.namespace, name: ref.name, path: ref.path ?? "",
        stateFile: stateName, stateBytes: bytes, stateSha256: digests.sha256 ?? "", ...(digests.xxh64 ? { stateXxh64: digests.xxh64 } : {}),
        hibernatedAt: new Date().toISOString(), epoch,
        ...fields,
      };
      // Both settle before either error is thrown, so the cleanup below never races an open file.
      const [state, written] = await Promise.allSettled([
        stateDurable.then(() => rename(tmpState, finalState)),
        writeDurably(tmpManifest, manifestBody(this.sealing?.keys, identity, manifest)),
      ]);
      if (state.status === "rejected") throw state.reason;
      if (written.status === "rejected") throw written.reason;
      // The commit point: after the state is durable under its final name and the manifest is too.
      await rename(tmpManifest, manifestFile);
    } catch (err) {
      await Promise.all([tmpState, tmpManifest, finalState, ...(staging ? [staging] : [])].map((p) => rm(p, { force: true })));
      // A state file named by a manifest we did not commit must not survive; the previous one stays.
      const code = (err as NodeJS.ErrnoException).code;
      const message = err instanceof Error ? err.message : String(err);
      throw new TorporError("storage_failed", `hibernate write failed${code ? ` (${code})` : ""}: ${message}`, { code });
    }
    // Past the commit point: failures are warnings, and nothing committed is ever deleted by one.
    await fsyncPath(dir).catch((err) => this.onWarning(err, "folder fsync after the commit failed; the commit may not survive a power loss"));
    for (const f of [...superseded.filter((x) => x !== manifestFile), ...supersededStates]) {
      await unlink(f).catch((err) => { if ((err as NodeJS.ErrnoException).code !== "ENOENT") this.onWarning(err, `could not remove superseded file ${path.basename(f)}; the sweeper will`); });
    }
    return { manifestFile, stateFile: finalState, bytes: manifest.stateBytes, ...(manifest.stateSha256 ? { sha256: manifest.stateSha256 } : {}), tokenCount: manifest.tokenCount, hibernatedAt: manifest.hibernatedAt };
  }

  /** Whether a commit this window may load exists (no verification: cheap, used to find hibernated sessions). */
  async exists(ref: SessionRef, window: EpochWindow = UNFENCED): Promise<boolean> {
    const dir = await this.dirFor(ref);
    return !!HibernationStore.pick(await this.scan(dir, ref.name), window);
  }

  /**
   * Adopts the previous placement's commit: renamed (atomically) to this epoch's name, so its
   * writer can no longer replace it, then rewritten (atomically) to say this epoch inside too, so
   * the placement after this one accepts it even if this one never loads it (a second reconcile,
   * a quick move, a crash after a restore kept for checkpoints). Runs at registration and before
   * a load. A manifest that cannot be opened is only renamed: loading it refuses it, and keeps it.
   * Idempotent; false when there was nothing to adopt.
   */
  async adopt(ref: SessionRef, window: EpochWindow): Promise<boolean> {
    if (window.epoch <= 0) return false;
    const dir = await this.dirFor(ref);
    const picked = HibernationStore.pick(await this.scan(dir, ref.name), window);
    if (!picked || picked[0] >= window.epoch) return false;
    const adopted = this.manifestPath(dir, ref.name, window.epoch);
    try {
      await rename(path.join(dir, picked[1]), adopted);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return this.adopt(ref, window);
      throw err;
    }
    await this.restamp(ref, adopted, window.epoch).catch((err) => this.onWarning(err, "could not restamp an adopted manifest with its new epoch; it loads, but only by this placement"));
    await fsyncPath(dir).catch((err) => this.onWarning(err, "folder fsync after adopting a hand-off failed"));
    return true;
  }

  /** Rewrites the manifest's own epoch (sealed: opened and sealed again); leaves anything it cannot open as it is. */
  private async restamp(ref: SessionRef, file: string, epoch: number): Promise<void> {
    const parsed = parseManifestFile(await readRegularFile(file, MAX_MANIFEST_BYTES).catch(() => ""));
    if (!parsed) return;
    let body: unknown;
    if (parsed.sealed) {
      if (!this.sealing) return;
      const identity: SealIdentity = { namespace: ref.namespace, name: ref.name, path: ref.path ?? "", modelFingerprint: String(parsed.modelFingerprint) };
      let m: HibernationManifest;
      try { m = openManifestFile(this.sealing.keys, identity, parsed); } catch { return; }
      body = manifestBody(this.sealing.keys, identity, { ...m, epoch });
    } else {
      body = { ...parsed, epoch };
    }
    const tmp = path.join(path.dirname(file), `.${ref.name}.${randomBytes(6).toString("hex")}.json.tmp`);
    try {
      await writeDurably(tmp, body);
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /** The commit this window may load, read without verification (what a crash left behind). */
  async peek(ref: SessionRef, window: EpochWindow = UNFENCED): Promise<{ tokenCount: number; hibernatedAt: string; bytes: number } | undefined> {
    const dir = await this.dirFor(ref);
    const picked = HibernationStore.pick(await this.scan(dir, ref.name), window);
    const m = picked && await this.readManifestLoose(path.join(dir, picked[1]));
    return m ? { tokenCount: m.tokenCount, hibernatedAt: m.hibernatedAt, bytes: m.stateBytes } : undefined;
  }

  // Relative to the volume: error bodies and status must not reveal the node's mount layout.
  private rejecter(manifestFile: string): Reject {
    return (reason, msg) => {
      throw new StateRejectedError(reason, msg, path.relative(this.root, manifestFile));
    };
  }

  /**
   * Reads, authenticates (when sealed) and checks a manifest for this session and window; throws
   * StateRejectedError, touches nothing. Undefined when the file is gone.
   */
  private async openManifest(ref: SessionRef, modelFingerprint: string, window: EpochWindow, manifestFile: string): Promise<{ m: HibernationManifest; modelChanged: boolean } | undefined> {
    const reject = this.rejecter(manifestFile);
    let raw: string;
    try {
      raw = await readRegularFile(manifestFile, MAX_MANIFEST_BYTES);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      if (err instanceof UnexpectedFileError) return reject("unexpected_file", `manifest: ${err.message}`);
      throw err;
    }
    return checkManifest(raw, { ref, modelFingerprint, window }, this.sealing?.keys, reject);
  }

  /**
   * The conversation in the commit this window may load, read without loading, verifying the state
   * or adopting anything (a reader of the history must not move files). Undefined where there is
   * no commit (never hibernated, or rehydrated since: its file goes after a load).
   */
  async history(ref: SessionRef, modelFingerprint: string, window: EpochWindow = UNFENCED): Promise<HibernationManifest["history"] | undefined> {
    const dir = await this.dirFor(ref);
    const picked = HibernationStore.pick(await this.scan(dir, ref.name), window);
    if (!picked) return undefined;
    return (await this.openManifest(ref, modelFingerprint, window, path.join(dir, picked[1])))?.m.history;
  }

  /**
   * Reads and verifies the hibernated state this window may load; throws StateRejectedError without
   * touching the files. A hand-off commit from the previous placement is first adopted: renamed
   * (atomically) to this epoch's name, so its writer can no longer replace it. `whileHashing` runs
   * once the manifest checks out, concurrently with the checksum (the caller allocates its context
   * meanwhile); if the checksum then fails, the caller undoes it. `loaders`, given the manifest,
   * may say how to load it straight into the caller's sequence after `whileHashing` (which
   * allocates it): a sealed state opened chunk by chunk, an unsealed one (with an xxHash64) read
   * once; it then comes back `loaded`, its integrity already known.
   */
  async verify(ref: SessionRef, modelFingerprint: string, window: EpochWindow = UNFENCED, whileHashing?: (m: HibernationManifest) => Promise<void>,
    loaders?: (m: HibernationManifest) => StateLoaders | undefined): Promise<VerifiedState | undefined> {
    const dir = await this.dirFor(ref);
    const files = await this.scan(dir, ref.name);
    const newest = HibernationStore.newest(files);
    if (window.epoch > 0 && newest > window.epoch) throw new StaleEpochError(window.epoch, newest, `cannot load ${ref.namespace}/${ref.name}`);
    const picked = HibernationStore.pick(files, window);
    if (!picked) return undefined;
    if (picked[0] < window.epoch && await this.adopt(ref, window)) return this.verify(ref, modelFingerprint, window, whileHashing, loaders);
    const manifestFile = path.join(dir, picked[1]);
    const manifest = await this.openManifest(ref, modelFingerprint, window, manifestFile);
    if (!manifest) return undefined;
    const { m, modelChanged } = manifest;
    const reject = this.rejecter(manifestFile);
    const identity: SealIdentity = { namespace: ref.namespace, name: ref.name, path: ref.path ?? "", modelFingerprint };
    const volumeState = path.join(dir, m.stateFile);
    const use = loaders?.(m);
    if (modelChanged) {
      if (whileHashing) await whileHashing(m);
      return { manifest: m, manifestFile, statePath: volumeState, release: async () => undefined, integrity: Promise.resolve(), modelChanged: true };
    }
    // A state that does not open as a sealed, regular file is refused (and kept), not an error.
    // (By its code: from a sealing thread an error arrives as its message and code only.)
    const refuseOpen = (err: unknown): void => {
      if (err instanceof SealError) reject("seal_invalid", err.message);
      if ((err as NodeJS.ErrnoException)?.code === UNEXPECTED_FILE) reject("unexpected_file", `state: ${(err as Error).message}`);
    };
    if (this.sealing) {
      // Checked beside the context's allocation; nothing opens the file before it passed. Not
      // followed if a symlink, and a regular file only: what reads it next would block on a FIFO.
      const sizeChecked = lstat(volumeState).then((st) => st, () => undefined).then((st) => {
        if (st && !st.isFile()) reject("unexpected_file", "state: not a regular file (a symlink, FIFO or device)");
        if (st?.size !== m.stateBytes) reject("truncated", `state file is ${st ? `${st.size} bytes` : "missing"}, manifest says ${m.stateBytes}`);
      });
      sizeChecked.catch(() => undefined); // observed below
      await sizeChecked;
      // Read ahead beside the allocation, as unsealed states are; only what passed the check.
      if (use?.prefetch) void prefetchRegular(volumeState, m.stateBytes, use.prefetch);
      const into = use?.sealed;
      if (into) {
        // Opened as llama.cpp reads it: each chunk authenticated before any byte of it is loaded.
        if (whileHashing) await whileHashing(m);
        try {
          await openSealedFile(this.sealing.keys, identity, m.stateFile, volumeState, into, this.sealing.threads);
        } catch (err) {
          refuseOpen(err);
          if ((err as NodeJS.ErrnoException).code === "ENOENT") reject("truncated", `state file is missing, manifest says ${m.stateBytes}`);
          return { manifest: m, manifestFile, statePath: volumeState, release: async () => undefined, integrity: Promise.resolve(), loadError: err };
        }
        return { manifest: m, manifestFile, statePath: volumeState, loaded: true, release: async () => undefined, integrity: Promise.resolve() };
      }
      const staging = this.stagingPath();
      const release = async () => this.removeLater(staging);
      const opening = openSealedFile(this.sealing.keys, identity, m.stateFile, volumeState, staging, this.sealing.threads);
      opening.catch(() => undefined); // observed below
      try {
        if (whileHashing) await whileHashing(m);
        await opening;
      } catch (err) {
        await opening.catch(() => undefined);
        await release();
        refuseOpen(err);
        throw err;
      }
      return { manifest: m, manifestFile, statePath: staging, release, integrity: Promise.resolve() };
    }
    // Unsealed, one open serves the checks and the load: a regular file, not followed if a
    // symlink, of the size the manifest says; its checksum is read from it, and llama.cpp loads it
    // through /proc/self/fd. What is checked is what loads, and a file swapped for a FIFO after
    // the check cannot block the load. Opened beside the context's allocation.
    const opened = openRegular(volumeState).then(async ({ fh, size }) => {
      if (size !== m.stateBytes) {
        await fh.close();
        reject("truncated", `state file is ${size} bytes, manifest says ${m.stateBytes}`);
      }
      use?.prefetch?.(fh.fd, size);
      return fh;
    }, (err: unknown) => {
      refuseOpen(err);
      if ((err as NodeJS.ErrnoException).code === "ENOENT") reject("truncated", `state file is missing, manifest says ${m.stateBytes}`);
      throw err;
    });
    opened.catch(() => undefined); // observed below
    const plain = m.stateXxh64 !== undefined ? use?.plain : undefined;
    if (plain) return this.loadPlain(m, manifestFile, volumeState, opened, plain, reject, whileHashing);
    const fast = m.stateXxh64 !== undefined;
    const integrity = opened.then((fh) => digestHandle(fh, fast ? { xxh64: true } : { sha256: true })).then((d) => {
      if (fast ? d.xxh64 !== m.stateXxh64 : d.sha256 !== m.stateSha256) reject("checksum_mismatch", `state file ${fast ? "xxHash64" : "SHA-256"} does not match the manifest`);
    });
    integrity.catch(() => undefined); // observed by the caller; never an unhandled rejection if whileHashing fails first
    // Closed once both the load (the caller's release) and the check are done with it.
    let loaded!: () => void;
    const loadDone = new Promise<void>((resolve) => { loaded = resolve; });
    void opened.then((fh) => Promise.allSettled([integrity, loadDone]).then(() => fh.close())).catch(() => undefined);
    let fh: FileHandle;
    try {
      if (whileHashing) await whileHashing(m);
      fh = await opened;
    } catch (err) {
      loaded();
      await integrity.catch(() => undefined);
      throw err;
    }
    return { manifest: m, manifestFile, statePath: openedPath(fh, volumeState), release: async () => loaded(), integrity };
  }

  /**
   * An unsealed state loaded into the caller's sequence in one pass, its checksum on the way. A
   * load that fails for another reason is told apart from a corrupt file by hashing the file, as
   * the separate check would have: corrupt is refused (and kept), authentic is a load error.
   */
  private async loadPlain(m: HibernationManifest, manifestFile: string, volumeState: string, opened: Promise<FileHandle>, plain: PlainLoader,
    reject: (reason: "checksum_mismatch", msg: string) => never, whileHashing?: (m: HibernationManifest) => Promise<void>): Promise<VerifiedState> {
    const done = { manifest: m, manifestFile, statePath: volumeState, release: async () => undefined, integrity: Promise.resolve() };
    try {
      if (whileHashing) await whileHashing(m);
    } catch (err) {
      await opened.then((fh) => fh.close(), () => undefined);
      throw err;
    }
    const fh = await opened;
    try {
      await plain(fh.fd, { bytes: m.stateBytes, xxh64: m.stateXxh64! });
      return { ...done, loaded: true };
    } catch (err) {
      const mismatch = (err as NodeJS.ErrnoException).code === CHECKSUM_MISMATCH || (await digestHandle(fh, { xxh64: true })).xxh64 !== m.stateXxh64;
      if (mismatch) reject("checksum_mismatch", "state file xxHash64 does not match the manifest");
      return { ...done, loadError: err };
    } finally {
      await fh.close();
    }
  }

  /**
   * Removes a session's manifests and every state/temp file of it; its claims too unless
   * `keepClaims` (after a rehydrate the claim keeps fencing off older placements). Idempotent.
   * Returns whether a manifest was there. Manifests first: once they are gone nothing can load the
   * state. With `background`, only the manifests are deleted before it returns; the state files
   * (freeing a large file's blocks took 16 ms of a 50 ms rehydrate here) go afterwards, once the
   * manifests' deletion is durable, so a crash can leave an orphan state file (the sweeper's) but
   * never a manifest without its state. State file names are unique per save: a later save's files
   * are never among those deleted late.
   */
  async remove(ref: SessionRef, opts: { keepClaims?: boolean; background?: boolean } = {}): Promise<boolean> {
    const dir = await this.dirFor(ref);
    const entries = await readdirOrNone(dir);
    const esc = ref.name.replace(/\./g, "\\.");
    const claims = opts.keepClaims ? "" : `|${esc}@e\\d+\\.claim`;
    const own = new RegExp(`^(${esc}(@e\\d+)?\\.torpor\\.json|${esc}\\.[0-9a-f]{12}\\.state|\\.${esc}\\.[0-9a-f]{12}\\.(state|json)\\.tmp${claims})$`);
    const mine = entries.filter((f) => own.test(f));
    const manifests = mine.filter((f) => f.endsWith(MANIFEST_SUFFIX));
    const rest = mine.filter((f) => !f.endsWith(MANIFEST_SUFFIX));
    for (const f of manifests) await rm(path.join(dir, f), { force: true });
    const finish = async () => {
      if (manifests.length && rest.length) await fsyncPath(dir);
      for (const f of rest) await rm(path.join(dir, f), { force: true });
      if (mine.length) await fsyncPath(dir);
    };
    if (opts.background) {
      this.inBackground(finish(), "could not delete a restored state file; the sweeper will");
    } else {
      await finish();
    }
    return manifests.length > 0;
  }

  /**
   * A new staging file's path, named by this process so that a restarted runtime knows what a crash
   * left; not by the session (a namespace and a 200-character name would pass 255 bytes, and a
   * shared /tmp need not list whose conversations are being sealed).
   */
  private stagingPath(): string {
    return path.join(this.sealing!.stagingDir, `${process.pid}.${randomBytes(8).toString("hex")}${STAGED_SUFFIX}`);
  }

  /**
   * Removes staged plaintext that a killed runtime left (an OOM kill mid-hibernate keeps the pod's
   * emptyDir, and with it a conversation in clear): every staged file of a process that is gone,
   * or of this one's pid (a restarted container often gets its predecessor's). Files of other live
   * processes sharing the folder (a developer's /tmp) are theirs. Call at startup; returns the
   * names removed.
   */
  async sweepStaging(): Promise<string[]> {
    if (!this.sealing) return [];
    const removed: string[] = [];
    for (const f of await readdir(this.sealing.stagingDir).catch(() => [] as string[])) {
      const pid = f.endsWith(STAGED_SUFFIX) ? /^(\d+)\./.exec(f)?.[1] : undefined;
      if (pid === undefined || (Number(pid) !== process.pid && processAlive(Number(pid)))) continue;
      await rm(path.join(this.sealing.stagingDir, f), { force: true });
      removed.push(f);
    }
    return removed;
  }

  /**
   * Deletes a staged plaintext file after the caller goes on: unlinking 55 MiB took 15 ms here,
   * on the path of every sealed hibernate and rehydrate. settled() waits for it.
   */
  private removeLater(file: string): void {
    this.inBackground(rm(file, { force: true }), `could not remove the staged plaintext ${path.basename(file)}`);
  }

  /** Work the caller does not wait for: its failure is a warning, and settled() waits for it. */
  private inBackground(work: Promise<unknown>, failure: string): void {
    const done: Promise<void> = work.then(() => undefined, (err: unknown) => this.onWarning(err, failure)).finally(() => this.deleting.delete(done));
    this.deleting.add(done);
  }

  /** Waits for deletions left running in the background (shutdown, tests). */
  async settled(): Promise<void> {
    while (this.deleting.size) await Promise.all([...this.deleting]);
  }

  /** Every committed manifest under the root (for the operator's sweeper and for humans). */
  async list(): Promise<HibernationFileEntry[]> {
    const out: HibernationFileEntry[] = [];
    const walk = async (dir: string, depth: number): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        const full = path.join(dir, e.name);
        if (e.isDirectory() && depth < 16) await walk(full, depth + 1);
        else if (e.isFile() && e.name.endsWith(MANIFEST_SUFFIX)) {
          const m = await this.readManifestLoose(full);
          if (!m) continue;
          out.push({ namespace: m.namespace, name: m.name, path: m.path, manifestFile: full, bytes: m.stateBytes, tokenCount: m.tokenCount, hibernatedAt: m.hibernatedAt });
        }
      }
    };
    await walk(this.root, 0);
    return out;
  }

  /**
   * Removes temp files and state files no manifest names, older than `minAgeMs` (in-flight writes
   * are younger), and folders left empty that long: a deleted namespace's or sub-path's folder
   * would otherwise stay on the volume for good. A session registered there again recreates it.
   */
  async sweepOrphans(minAgeMs: number, now = Date.now()): Promise<string[]> {
    const removed: string[] = [];
    const walk = async (dir: string, depth: number): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      const referenced = new Set<string>();
      for (const e of entries) {
        if (e.isFile() && e.name.endsWith(MANIFEST_SUFFIX)) {
          const m = await this.readManifestLoose(path.join(dir, e.name));
          if (m) referenced.add(m.stateFile);
        }
      }
      for (const e of entries) {
        const full = path.join(dir, e.name);
        if (e.isDirectory() && depth < 16) {
          await walk(full, depth + 1);
          if (await removeIfEmptySince(full, now - minAgeMs)) removed.push(`${full}${path.sep}`);
          continue;
        }
        if (!e.isFile() || referenced.has(e.name)) continue;
        if (!(e.name.endsWith(".tmp") || e.name.endsWith(".state"))) continue;
        const st = await stat(full).catch(() => undefined);
        if (st && now - st.mtimeMs >= minAgeMs) {
          await rm(full, { force: true });
          removed.push(full);
        }
      }
    };
    await walk(this.root, 0);
    return removed;
  }

  private async readManifestLoose(file: string): Promise<HibernationManifest | undefined> {
    return looseManifest(await readRegularFile(file, MAX_MANIFEST_BYTES).catch(() => ""));
  }
}

/**
 * Only folders torpor makes (namespace and sub-path names: no `lost+found`), empty since `before`.
 * rmdir refuses a folder with anything in it, so a file created meanwhile is never lost.
 */
async function removeIfEmptySince(dir: string, before: number): Promise<boolean> {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(path.basename(dir))) return false;
  const st = await stat(dir).catch(() => undefined);
  if (!st || st.mtimeMs > before) return false;
  const entries = await readdir(dir).catch(() => undefined);
  if (!entries || entries.length) return false;
  return rmdir(dir).then(() => true, () => false);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM"; // alive, someone else's
  }
}

/**
 * A folder's entries; none when it does not exist. Any other error (EACCES: the volume belongs to
 * another user) is thrown: taking it for "no files" would start sessions afresh over their saved
 * state, and let a cleanup report success while the files stay.
 */
async function readdirOrNone(dir: string): Promise<string[]> {
  try { return await readdir(dir); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new TorporError("storage_failed", `cannot list the session folder on the volume (${(err as NodeJS.ErrnoException).code ?? "error"}): check the volume's owner and mode against the runtime's user`);
  }
}

