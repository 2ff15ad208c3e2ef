// One conversation: its history, its leased sequence (of a context the pool owns) while resident, and a FIFO of work.
// Every operation (generate, hibernate, rehydrate, delete) runs on the session's queue, which is
// what makes hibernate wait for in-flight generation and requests wait for a hibernate.
import path from "node:path";
import type { ChatHistoryItem } from "node-llama-cpp";
import type { Clock } from "../../common/clock.js";
import { StaleEpochError, StateRejectedError, TorporError } from "../../contract/errors.js";
import type { EpochWindow, SessionRef } from "../storage/hibernation-manifest.js";
import type { HibernationRecord, HibernationStore } from "../storage/hibernation-store.js";
import type { VerifiedState } from "../storage/state-transfer.js";
import type { Logger } from "../../common/logger.js";
import type { RuntimeMetrics } from "../metrics.js";
import { NODE_LLAMA_CPP_VERSION, type FlashAttention, type ModelHost } from "../model/model-host.js";
import { loadSequenceState, openSequenceState, sealSequenceState, writeSequenceState } from "../model/sequence-state-files.js";
import { ResidentContext, type SpareContext } from "./resident-context.js";
import type { ContextPool } from "./context-pool.js";
import { checkRestore, type RestoreCheck } from "./restore-check.js";
import { NoRoom } from "./no-room.js";
import { SerialQueue } from "./serial-queue.js";
import { generateTurn } from "./turn-generation.js";

export type { SpareContext };
import type { GenerateOptions, GenerateResult, HibernateOutcome, Phase, Residency, SessionSpec, SessionStatus, Wake } from "../../contract/runtime-api.js";

/** Grants a context slot (evicting others if needed, possibly handing over one's context) and takes it back. */
export interface Admission {
  /** `evict: false`: throws NoRoom instead of making room (contexts kept only for their grace may still go). */
  acquire(session: Session, opts?: { evict?: boolean }): Promise<SpareContext | undefined>;
  /** The session's context is allocated (the admitted room is in use). */
  allocated(session: Session): void;
  release(session: Session): void;
  /** Hibernates one idle resident session other than `session`; false when there is none. */
  evictOne(session: Session): Promise<boolean>;
  /** Refills the spare contexts in the background (after a session took one and has loaded its state). */
  replenishSpares(): void;
}

interface HibernateResult {
  outcome: HibernateOutcome;
  spare?: SpareContext;
}

export interface SessionDeps {
  host: ModelHost;
  /** Owns the contexts; the session leases one sequence while resident. */
  pool: ContextPool;
  store: HibernationStore;
  clock: Clock;
  metrics: RuntimeMetrics;
  log: Logger;
  admission: Admission;
  podName: string;
  /** The pool's largest context: no file can make a rehydrate allocate more. */
  maxContextSize: number;
}


export class Session {
  residency: Residency;
  phase: Phase = "Idle";
  lastActivity: number;
  private history: ChatHistoryItem[] = [];
  /** Present while the session holds native memory (resident, or being made resident). */
  private resident?: ResidentContext;
  private readonly queue = new SerialQueue();
  private pendingHibernate?: Promise<HibernateResult>;
  private deleted = false;
  /**
   * Stops a generation under way, and any later one: the session was deleted, moved to a newer
   * placement, or its pod is going and it must be saved (`interruption` says which, first wins).
   */
  private readonly interrupt = new AbortController();
  private interruption?: "deleted" | "moved" | "shutdown";
  /** The newer epoch that took the session over, once dropped. */
  private dropped = 0;
  /** Turns since the volume last held this session's exact state, and when the first of them ended. */
  private unsavedTurns = 0;
  private unsavedSince?: number;
  /** The volume holds exactly the resident state (a checkpoint, or a restore kept for checkpoints). */
  private volumeCurrent = false;
  private pendingCheckpoint?: Promise<void>;
  private lastCheckpoint?: SessionStatus["lastCheckpoint"];
  /** The tokens a rehydrate restored, until the next evaluation shows whether they were reused. */
  private restoredTokens?: readonly number[];
  /**
   * A restored state in use before its integrity check finished (the check runs beside the next
   * prompt's evaluation), and what the session was before that restore, to go back to if it fails.
   */
  private unverified?: { check: Promise<void>; before: { history: ChatHistoryItem[]; spec: SessionSpec; window: EpochWindow } };
  private readonly createdAt: string;
  /**
   * The context size asked for now (the session's spec.contextSize, else its pool's default);
   * `spec.contextSize` is the size of the context it has, or will get. A change applies when the
   * session next allocates a context, and at its next turn when resident (resizeIfAsked).
   */
  desiredContextSize: number;
  /** settingsDigest() of the registration these settings came from (absent: registered without one). */
  settings?: string;
  private lastHibernation?: SessionStatus["lastHibernation"];
  private lastRehydrate?: SessionStatus["lastRehydrate"];
  private lastError?: SessionStatus["lastError"];
  private readonly log: Logger;

  /**
   * @param window the placement epoch this copy serves, and the oldest epoch whose commit it may
   * adopt (the placement before it: a hand-off); narrowed to its own epoch once resident.
   */
  constructor(readonly ref: Required<SessionRef>, public spec: SessionSpec, private window: EpochWindow,
    private readonly foundOnVolume: SessionStatus["foundOnVolume"], private readonly deps: SessionDeps) {
    this.residency = foundOnVolume ? "Hibernated" : "NotCreated";
    this.desiredContextSize = spec.contextSize;
    this.lastActivity = deps.clock.now();
    this.createdAt = new Date(deps.clock.now()).toISOString();
    this.log = deps.log.child({ namespace: ref.namespace, name: ref.name });
  }

  get epoch(): number { return this.window.epoch; }

  /**
   * Placed here again under a newer epoch with no other placement in between (the caller checked
   * the volume): this copy is still the newest, so it serves the new epoch instead of being
   * dropped. It keeps accepting what it accepted (its own commits under the old epoch included:
   * a save may be under way).
   */
  advanceEpoch(epoch: number): void {
    if (this.dropped || epoch <= this.window.epoch) return;
    this.window = { epoch, min: this.window.min };
    this.log.info({ epoch, min: this.window.min }, "placed here again under a newer epoch with no placement in between; this copy keeps serving");
  }

  /** Refuses a request routed by a placement newer than this copy: the caller must follow it. */
  checkEpoch(requested: number | undefined): void {
    if (requested !== undefined && this.window.epoch > 0 && requested > this.window.epoch) {
      throw new StaleEpochError(this.window.epoch, requested, `session ${this.ref.namespace}/${this.ref.name} moved`);
    }
  }

  /**
   * The operator moves the session to placement `newer`: from now on this copy refuses new
   * requests (the gateway follows the session), and once the work already queued has run, the
   * state is committed for the new placement to adopt.
   */
  handOff(newer: number): Promise<HibernateOutcome> {
    if (!this.dropped || newer > this.dropped) this.dropped = newer;
    return this.queue.run(async () => {
      const out = (await this.doHibernate("handoff", false)).outcome;
      // Saved from memory by this pod's SIGTERM just before the ask: for its next placement it is a
      // session that was in memory when its pod went (it goes back into memory there).
      return out.outcome === "already-hibernated" && this.lastHibernation?.reason === "shutdown" ? { ...out, outcome: "hibernated" } : out;
    });
  }

  /**
   * A newer placement owns the session: give up this copy without saving it (its state would be
   * older than the new owner's), after in-flight work finishes.
   */
  drop(newer: number): Promise<void> {
    this.dropped = newer;
    this.stopGenerating("moved");
    return this.queue.run(async () => {
      // Routine after a hand-off or a hibernate (nothing here but a record); worth a warning only
      // when an in-memory copy is given up unsaved, as after a partition.
      const live = this.residency === "InMemory";
      await this.releaseResident();
      this.residency = "NotCreated";
      if (live) this.log.warn({ epoch: this.window.epoch, newer }, "dropped an unsaved in-memory copy: a newer placement owns the session");
      else this.log.info({ epoch: this.window.epoch, newer }, "dropped: a newer placement owns the session");
    });
  }

  /** True while anything is queued or running: such a session is never evicted. */
  get busy(): boolean { return this.queue.depth > 0; }

  status(): SessionStatus {
    return {
      namespace: this.ref.namespace, name: this.ref.name, path: this.ref.path,
      residency: this.residency, phase: this.phase, contextSize: this.spec.contextSize,
      epoch: this.window.epoch,
      tokenCount: this.resident?.allocated ? this.resident.sequence.contextTokens.length : 0, messages: this.history.length,
      queued: this.queue.depth, createdAt: this.createdAt,
      lastActivity: new Date(this.lastActivity).toISOString(),
      ...(this.lastHibernation ? { lastHibernation: this.lastHibernation } : {}),
      ...(this.lastRehydrate ? { lastRehydrate: this.lastRehydrate } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
      ...(this.lastCheckpoint ? { lastCheckpoint: this.lastCheckpoint } : {}),
      ...(this.foundOnVolume ? { foundOnVolume: this.foundOnVolume } : {}),
      ...(this.settings !== undefined ? { settings: this.settings } : {}),
    };
  }

  /** The stateful call: append one user message, generate, keep both in the history. */
  submit(prompt: string, opts: GenerateOptions): Promise<GenerateResult> {
    return this.run(async () => {
      await this.resizeIfAsked();
      const wake = await this.ensureResident();
      const next: ChatHistoryItem[] = [...this.history, { type: "user", text: prompt }];
      const out = { ...(await this.generateChecked(next, opts, wake)), ...wake };
      this.afterTurn();
      return out;
    });
  }

  /** OpenAI-style: the caller sends the whole conversation; our evaluated tokens are a prefix cache. */
  complete(messages: ChatHistoryItem[], opts: GenerateOptions): Promise<GenerateResult> {
    return this.run(async () => {
      await this.resizeIfAsked();
      const wake = await this.ensureResident();
      const withSystem: ChatHistoryItem[] = this.spec.systemPrompt && messages[0]?.type !== "system"
        ? [{ type: "system", text: this.spec.systemPrompt }, ...messages]
        : messages;
      const out = { ...(await this.generateChecked(withSystem, opts, wake)), ...wake };
      this.afterTurn();
      return out;
    });
  }

  /**
   * Restores the session now (pre-warming) without generating. `ifRoom`: only if no resident
   * session must give up its place for it; otherwise it stays hibernated (`deferred: "no_room"`).
   * `ifActiveWithin` (ms, 0: no idle policy): only if the session was used that recently
   * (`deferred: "idle"`); such a pre-warm (the operator's, after a move) is not the user's
   * activity, so it leaves the idle clock where it was.
   */
  warm(opts: { ifRoom?: boolean; ifActiveWithin?: number } = {}): Promise<Wake> {
    const active = opts.ifActiveWithin;
    return this.run(async () => {
      if (active !== undefined && active > 0 && this.residency !== "InMemory" && this.deps.clock.now() - this.lastActivity >= active) {
        return { rehydrated: false, created: false, deferred: "idle" };
      }
      let wake: Wake;
      try {
        wake = await this.ensureResident(opts.ifRoom);
      } catch (err) {
        if (err instanceof NoRoom) return { rehydrated: false, created: false, deferred: "no_room" };
        throw err;
      }
      const pending = this.unverified;
      this.unverified = undefined;
      if (pending) await pending.check.catch(async (err: unknown) => { await this.abandonRestore(pending.before, err); throw err; });
      return wake;
    }, active === undefined);
  }

  /** Coalesced: concurrent calls share one save; it runs after whatever is already queued. */
  async hibernate(reason: string): Promise<HibernateOutcome> {
    return (await this.hibernateOnce(reason, false)).outcome;
  }

  /**
   * Hibernates for the bulkhead and hands the freed context to the caller instead of disposing it.
   * A save already under way is joined instead (its context is disposed as usual: no spare).
   */
  async evict(reason: string): Promise<HibernateResult> {
    const joined = this.pendingHibernate;
    const r = await this.hibernateOnce(reason, true);
    return joined ? { outcome: r.outcome } : r;
  }

  private hibernateOnce(reason: string, handOver: boolean): Promise<HibernateResult> {
    // Joins a save under way even when requests were queued after it: the bulkhead holds the
    // admission queue while it waits here, and one of those requests may be waiting for
    // admission (waiting for a hibernate queued behind it would deadlock). A request that makes
    // the session resident again is seen by whoever checks afterwards (shutdown goes round).
    if (this.pendingHibernate) return this.pendingHibernate;
    const result = this.queue.run(() => this.doHibernate(reason, handOver)).finally(() => {
      if (this.pendingHibernate === result) this.pendingHibernate = undefined;
    });
    this.pendingHibernate = result;
    return result;
  }

  /** Starts a checkpoint if the session's interval policy says one is due (the runtime's timer calls it). */
  checkpointIfDue(now: number): void {
    const interval = this.spec.checkpoint?.intervalMs;
    if (interval && this.unsavedTurns > 0 && this.unsavedSince !== undefined && now - this.unsavedSince >= interval) this.scheduleCheckpoint();
  }

  private afterTurn(): void {
    this.volumeCurrent = false;
    this.unsavedTurns++;
    this.unsavedSince ??= this.deps.clock.now();
    const after = this.spec.checkpoint?.afterTurns;
    if (after && this.unsavedTurns >= after) this.scheduleCheckpoint();
  }

  /** Queued behind the turn that made it due (and anything already waiting): it never cuts a generation. */
  private scheduleCheckpoint(): void {
    if (this.pendingCheckpoint || this.deleted || this.dropped) return;
    const p = this.queue.run(() => this.doCheckpoint()).catch((err) => {
      this.log.warn({ err }, "checkpoint failed; the session stays in memory and tries again after its next turn");
    }).finally(() => { if (this.pendingCheckpoint === p) this.pendingCheckpoint = undefined; });
    this.pendingCheckpoint = p;
  }

  private async doCheckpoint(): Promise<void> {
    if (this.residency !== "InMemory" || !this.resident?.allocated || this.unsavedTurns === 0) return;
    const t0 = performance.now();
    const record = await this.save("checkpoint");
    const ms = performance.now() - t0;
    this.lastCheckpoint = { ...record, durationMs: ms };
    this.unsavedTurns = 0;
    this.unsavedSince = undefined;
    this.volumeCurrent = true;
    this.deps.metrics.checkpointDuration.observe(ms / 1000);
    this.deps.metrics.bytesWritten.inc(record.bytes);
    this.log.info({ bytes: record.bytes, tokens: record.tokenCount, ms: Math.round(ms * 10) / 10 }, "checkpointed");
  }

  /**
   * Commits the resident state under this session's epoch. A newer placement's claim means this
   * copy is stale: it is dropped (never saved over the newer state) and the error says so.
   */
  private async save(reason: string): Promise<HibernationRecord> {
    const { store, host } = this.deps;
    const seq = this.resident!.sequence;
    try {
      const toFile = async (tmp: string) => { await seq.saveStateToFile(tmp); };
      return await store.save(this.ref, this.window, host.stateFiles?.ok ? { toFile, plain: writeSequenceState(seq), sealed: sealSequenceState(seq) } : toFile, {
        modelFingerprint: host.fingerprint,
        contextSize: this.spec.contextSize,
        contextSequences: this.resident!.sequences,
        // "auto" is left out: every file before the setting existed was saved with it.
        ...(typeof this.resident!.flashAttention === "boolean" ? { flashAttention: this.resident!.flashAttention } : {}),
        tokenCount: seq.contextTokens.length,
        ...(this.spec.systemPrompt ? { systemPrompt: this.spec.systemPrompt } : {}),
        history: this.history,
        createdAt: this.createdAt,
        runtime: { nodeLlamaCpp: NODE_LLAMA_CPP_VERSION, pod: this.deps.podName },
      });
    } catch (err) {
      this.recordError(err);
      if (err instanceof StaleEpochError) {
        this.dropped = err.newer;
        await this.releaseResident();
        this.residency = "NotCreated";
        this.log.warn({ err, reason }, "save refused: a newer placement owns the session; this copy is dropped");
      }
      throw err;
    }
  }

  /**
   * A resident session whose context size was changed (a user raising it after
   * context_length_exceeded, say) moves to a context of the new size before its turn: saved to
   * the volume and restored into the new one, durable all along. Not below the conversation it
   * holds: that one keeps its context.
   */
  private async resizeIfAsked(): Promise<void> {
    const want = this.desiredContextSize;
    if (this.residency !== "InMemory" || !this.resident?.allocated || want === this.spec.contextSize) return;
    if (want <= this.resident.sequence.contextTokens.length) return;
    this.log.info({ from: this.spec.contextSize, to: want }, "context size changed: moving the session to a context of the new size");
    try {
      await this.doHibernate("resize", false);
    } catch (err) {
      // Still in memory in its old context (a full disk, say: status says so): this turn is
      // served there, and the next one tries again. A newer placement's refusal ends it below.
      if (err instanceof StaleEpochError) throw err;
      this.log.warn({ err }, "could not move to a context of the new size; this turn uses the current one");
      return;
    }
    this.spec = { ...this.spec, contextSize: want };
  }

  /**
   * Ends a generation under way so that the shutdown save can run (the pod's grace would otherwise
   * run out first, and the conversation go with the process). A streamed answer so far is kept and
   * saved; its caller is told (shutting_down).
   */
  stopForShutdown(): void {
    this.stopGenerating("shutdown");
  }

  private stopGenerating(why: NonNullable<Session["interruption"]>): void {
    this.interruption ??= why;
    this.interrupt.abort();
  }

  /** Frees the context and removes the session's files, once a generation under way has stopped. */
  delete(): Promise<void> {
    this.deleted = true;
    this.stopGenerating("deleted");
    return this.queue.run(async () => {
      await this.releaseResident();
      await this.deps.store.remove(this.ref);
      this.residency = "NotCreated";
      this.log.info("session deleted");
    });
  }

  /** History as stored (for tests and the API's detail view). */
  messages(): ChatHistoryItem[] { return this.history.slice(); }

  /**
   * The conversation, without waking the session: from memory, or, for a session registered here
   * asleep (a new pod holds no history until it rehydrates; a hand-off may also commit after the
   * registration, as ensureResident knows), from its manifest on the volume. Not on the session's
   * queue: a reader must not wait for a turn under way, nor count as activity.
   */
  async conversation(): Promise<{ history: ChatHistoryItem[]; source: "memory" | "volume" }> {
    const gone = this.gone();
    if (gone) throw gone;
    if (this.residency === "InMemory" || this.history.length > 0) return { history: this.messages(), source: "memory" };
    const saved = await this.deps.store.history(this.ref, this.deps.host.fingerprint, this.window);
    // Rehydrated meanwhile (its file goes after a load): memory has it now.
    return saved ? { history: saved, source: "volume" } : { history: this.messages(), source: "memory" };
  }

  /** Why this copy no longer serves anything: deleted, or moved to a newer placement. */
  private gone(): TorporError | StaleEpochError | undefined {
    if (this.deleted) return new TorporError("session_deleted", `session ${this.ref.namespace}/${this.ref.name} is being deleted`);
    if (this.dropped) return new StaleEpochError(this.window.epoch, this.dropped, `session ${this.ref.namespace}/${this.ref.name} moved`);
    return undefined;
  }

  /** Runs on the session's queue; `touch`: the task is the user's activity (it restarts the idle clock). */
  private run<T>(task: () => Promise<T>, touch = true): Promise<T> {
    const gone = this.gone();
    if (gone) return Promise.reject(gone);
    // Touched when a task ends (a queued or running one keeps the session busy: no idle sweep or
    // LRU eviction takes it meanwhile); not when it failed and left nothing in memory (a refused
    // state, no room). Counted, such a failure changed the session's status at every retry, and
    // each status write set off the next retry at once: the operator rewrote a Degraded session's
    // status about 100 times a second.
    return this.queue.run(async () => {
      try {
        const out = await task();
        if (touch) this.lastActivity = this.deps.clock.now();
        return out;
      } catch (err) {
        if (touch && this.residency === "InMemory") this.lastActivity = this.deps.clock.now();
        throw err;
      }
    });
  }

  private async ensureResident(ifRoom = false): Promise<Wake> {
    if (this.deleted) throw new TorporError("session_deleted", `session ${this.ref.namespace}/${this.ref.name} is being deleted`);
    if (this.residency === "InMemory") return { rehydrated: false, created: false };
    if (this.dropped) throw new StaleEpochError(this.window.epoch, this.dropped, `session ${this.ref.namespace}/${this.ref.name} moved`);
    const { pool, store, admission, metrics } = this.deps;
    // A hand-off may have committed after this session was registered: always look on the volume.
    if (this.residency === "NotCreated" && await store.exists(this.ref, this.window)) this.residency = "Hibernated";
    const spare = await admission.acquire(this, { evict: !ifRoom });
    const resident = new ResidentContext(pool, metrics, this.log, () => admission.release(this), spare);
    this.resident = resident;
    try {
      if (this.residency === "Hibernated") {
        const wake = await this.rehydrate(resident);
        if (wake) { admission.replenishSpares(); return wake; }
        // The files went away (deleted by hand, or swept): start over rather than fail forever.
        this.log.warn("hibernated state missing on the volume; starting a fresh context");
        this.residency = "NotCreated";
      }
      this.phase = "Creating";
      await this.allocateEvicting(resident, this.spec.contextSize);
      this.history = this.spec.systemPrompt ? [{ type: "system", text: this.spec.systemPrompt }] : [];
      this.residency = "InMemory";
      this.window = { epoch: this.window.epoch, min: this.window.epoch };
      this.log.info({ contextSize: this.spec.contextSize }, "context created");
      admission.replenishSpares();
      return { rehydrated: false, created: true };
    } catch (err) {
      await this.releaseResident();
      this.recordError(err);
      throw err;
    } finally {
      this.phase = "Idle";
    }
  }

  /** Loads the state on the volume into `resident`; undefined when there is none. */
  private async rehydrate(resident: ResidentContext): Promise<Wake | undefined> {
    const { host, store } = this.deps;
    this.phase = "Rehydrating";
    const t0 = performance.now();
    let need = 0;
    const verified = await store.verify(this.ref, host.fingerprint, this.window, async (m) => {
      // The pool's maximum caps what is allocated, whatever the file says.
      // The size asked for now, unless the conversation no longer fits it: then the one it had.
      need = this.desiredContextSize > m.tokenCount ? this.desiredContextSize : Math.max(m.contextSize, m.tokenCount);
      if (need > this.deps.maxContextSize) {
        throw new TorporError("capacity_exhausted", `the hibernated session needs a context of ${need} tokens, more than this pool's maximum of ${this.deps.maxContextSize}; raise maxContextSize for the pool`);
      }
      // No setting recorded: saved under "auto", which llama.cpp resolves the same way again for
      // the same model on the same backend.
      await this.allocateEvicting(resident, need, m.contextSequences ?? 1, m.flashAttention ?? "auto");
    // Loaded straight into the sequence (allocated by then, hence resolved late), unless it is not
    // to be loaded at all (restore()).
    }, (m) => host.stateFiles?.ok && m.runtime?.nodeLlamaCpp === NODE_LLAMA_CPP_VERSION ? {
      sealed: (source) => openSequenceState(resident.sequence)(source),
      plain: (fd, expect) => loadSequenceState(resident.sequence)(fd, expect),
      ...(host.prefetchStateFile ? { prefetch: host.prefetchStateFile } : {}),
    } : undefined);
    if (!verified) return undefined;
    try {
      return await this.restore(resident, verified, t0, need);
    } finally {
      await verified.release();
    }
  }

  private async restore(resident: ResidentContext, verified: VerifiedState, t0: number, contextSize: number): Promise<Wake> {
    const { metrics, store } = this.deps;
    const { manifest, manifestFile, statePath } = verified;
    // A state from another model (the pool's model was changed) or another llama.cpp (its layout
    // may differ silently) is not loaded; one that fails to load is not retried forever: each
    // time the saved history is evaluated again.
    let replayed: string | undefined = verified.modelChanged ? "model_changed"
      : manifest.runtime?.nodeLlamaCpp !== NODE_LLAMA_CPP_VERSION ? "runtime_version" : undefined;
    const loading = replayed || verified.loaded ? Promise.resolve(undefined)
      : verified.loadError !== undefined ? Promise.resolve(verified.loadError)
      : resident.sequence.loadStateFromFile(statePath, { acceptRisk: true }).then(() => undefined, (err: unknown) => err);
    // A state that fails its integrity check is refused (and kept), whether or not it loaded: the
    // caller frees the sequence it went into.
    const loadError = await loading;
    const integrity = verified.integrity;
    if (replayed || loadError) {
      // Nothing restored is in use: the check decides before anything else.
      await integrity;
    }
    if (loadError) {
      replayed = "load_failed";
      this.log.warn({ err: loadError, file: path.join(path.dirname(manifestFile), manifest.stateFile) }, "the saved state could not be loaded; replaying the saved history instead");
    }
    if (!replayed) this.restoredTokens = resident.sequence.contextTokens.slice() as number[];
    if (replayed) {
      await resident.sequence.clearHistory();
      metrics.replays.inc({ reason: replayed });
      this.log.warn({
        reason: replayed, wroteWith: manifest.runtime?.nodeLlamaCpp, runningWith: NODE_LLAMA_CPP_VERSION,
        ...(verified.modelChanged ? { wroteWithModel: manifest.modelFingerprint.slice(0, 16), runningModel: this.deps.host.fingerprint.slice(0, 16) } : {}),
        messages: manifest.history.length,
      }, "session rebuilt from its saved history; the next turn evaluates it again");
    }
    const before = { history: this.history, spec: this.spec, window: this.window };
    this.history = manifest.history;
    this.spec = { ...this.spec, contextSize };
    this.residency = "InMemory";
    // From here on only this epoch's commits count: an older placement's late write is stale.
    this.window = { epoch: this.window.epoch, min: this.window.epoch };
    const checkpointed = !!this.spec.checkpoint && !replayed;
    // Only a state that passed its check is committed to: its file is deleted (or, with
    // checkpoints, kept as the session's current commit); a refused one stays for inspection.
    const commit = integrity.then(async () => {
      if (checkpointed) {
        // With checkpoints the file stays until the next checkpoint replaces it: a crash right
        // after this restore loses nothing.
        this.volumeCurrent = true;
        // The record names the file on the volume (statePath is a staging copy when sealed, the
        // open file's /proc path when not).
        this.lastCheckpoint = { manifestFile, stateFile: path.join(path.dirname(manifestFile), manifest.stateFile), bytes: manifest.stateBytes, sha256: manifest.stateSha256, tokenCount: manifest.tokenCount, hibernatedAt: manifest.hibernatedAt, durationMs: 0 };
      } else {
        // The conversation is in memory now: a failed delete costs disk space, never the session.
        // The state file's blocks are freed after the answer (store.remove); the manifest goes now.
        await store.remove(this.ref, { keepClaims: true, background: true }).catch((err) => this.log.warn({ err }, "could not delete the restored hibernation files; the sweeper or the next hibernate will"));
      }
    });
    commit.catch(() => undefined);
    // The next turn's prompt evaluation runs beside the rest of the check (generateChecked).
    this.unverified = { check: commit, before };
    const ms = performance.now() - t0;
    this.lastRehydrate = { at: new Date(this.deps.clock.now()).toISOString(), durationMs: ms, bytes: manifest.stateBytes, tokenCount: manifest.tokenCount, ...(replayed ? { replayed } : {}) };
    this.lastError = undefined;
    metrics.rehydrateDuration.observe(ms / 1000);
    metrics.bytesRead.inc(manifest.stateBytes);
    this.log.info({ bytes: manifest.stateBytes, tokens: manifest.tokenCount, ms: Math.round(ms * 10) / 10, ...(replayed ? { replayed } : {}) }, "rehydrated");
    return { rehydrated: true, rehydrateMs: ms, created: false };
  }

  /**
   * The estimate the admission used can be wrong (VRAM is fragmented, another process holds
   * some): when the allocation itself fails, idle sessions make room one at a time before the
   * request is refused.
   */
  private async allocateEvicting(resident: ResidentContext, contextSize: number, sequences?: number, flashAttention?: FlashAttention): Promise<void> {
    for (;;) {
      try {
        await resident.allocate(contextSize, sequences, flashAttention);
        this.deps.admission.allocated(this);
        return;
      } catch (err) {
        if (!(err instanceof TorporError && err.code === "capacity_exhausted") || !await this.deps.admission.evictOne(this)) throw err;
        this.log.warn({ contextSize }, "context allocation failed; hibernated an idle session to make room and trying again");
      }
    }
  }

  /** Frees the session's native memory (idempotent). */
  private async releaseResident(): Promise<void> {
    const r = this.resident;
    this.resident = undefined;
    await r?.dispose();
  }

  /** Gives the emptied context away for a handover instead of freeing it. */
  private async detachResident(): Promise<SpareContext | undefined> {
    const r = this.resident;
    this.resident = undefined;
    return r?.detach();
  }

  private async doHibernate(reason: string, handOver: boolean): Promise<HibernateResult> {
    if (this.residency === "NotCreated") return { outcome: { outcome: "not-created" } };
    if (this.residency === "Hibernated") {
      return { outcome: { outcome: "already-hibernated", ...(this.lastHibernation ? { record: this.lastHibernation } : {}) } };
    }
    const { metrics } = this.deps;
    this.phase = "Hibernating";
    const t0 = performance.now();
    try {
      let record: HibernationRecord;
      if (this.volumeCurrent && this.lastCheckpoint) {
        // Nothing happened since the last checkpoint: it is this state, already durable.
        record = this.lastCheckpoint;
      } else {
        try {
          record = await this.save(reason);
        } catch (err) {
          if (!(err instanceof StaleEpochError)) this.log.error({ err, reason }, "hibernate failed; the session stays in memory");
          throw err;
        }
        metrics.bytesWritten.inc(record.bytes);
      }
      const spare = handOver ? await this.detachResident() : (await this.releaseResident(), undefined);
      const ms = performance.now() - t0;
      this.residency = "Hibernated";
      this.unsavedTurns = 0;
      this.unsavedSince = undefined;
      this.volumeCurrent = false;
      this.lastHibernation = { ...record, durationMs: ms, reason };
      this.lastError = undefined;
      metrics.hibernateDuration.observe({ reason }, ms / 1000);
      this.log.info({ reason, bytes: record.bytes, tokens: record.tokenCount, ms: Math.round(ms * 10) / 10 }, "hibernated");
      return { outcome: { outcome: "hibernated", record: this.lastHibernation }, ...(spare ? { spare } : {}) };
    } finally {
      this.phase = "Idle";
    }
  }

  /**
   * generate(), with a restore's pending integrity check: the prompt is evaluated while the check
   * finishes, but nothing reaches the caller (not the start, not a token) until it has passed. A
   * failed check stops the generation, discards the turn and puts the session back where it was
   * before the restore, Hibernated, with its file kept: the caller gets the check's error.
   * Deleting the session stops its generation too: the deletion (and a `kubectl delete` waiting on
   * the finalizer) would otherwise wait for the rest of max_tokens; so does a shutdown that cannot
   * wait longer. The caller is told why. A turn is kept only if its caller saw some of the answer.
   */
  private async generateChecked(history: ChatHistoryItem[], opts: GenerateOptions, wake: Wake): Promise<Omit<GenerateResult, keyof Wake>> {
    const pending = this.unverified;
    this.unverified = undefined;
    const interrupt = this.interrupt.signal;
    const abort = new AbortController();
    const stop = () => abort.abort();
    if (opts.signal?.aborted || interrupt.aborted) abort.abort();
    for (const signal of [opts.signal, interrupt]) signal?.addEventListener("abort", stop, { once: true });
    const before = this.history;
    /** Why the generation stopped when it was not its caller who stopped it. */
    const interrupted = (): TorporError | undefined => {
      const { namespace, name } = this.ref;
      switch (this.interruption) {
        case "deleted": return new TorporError("session_deleted", `session ${namespace}/${name} was deleted while it was generating; the answer stopped there`);
        // The gateway follows a non-streamed request to the session's next pod and asks it there.
        case "moved": return new StaleEpochError(this.window.epoch, this.dropped, `the answer for ${namespace}/${name} stopped here, since the session moved while it was generating; send the turn again`);
        case "shutdown": return new TorporError("shutting_down", opts.onText
          ? `the runtime pod serving ${namespace}/${name} is shutting down: the answer stopped here, and the conversation up to this point is saved; send the next turn and another pod continues it`
          : `the runtime pod serving ${namespace}/${name} is shutting down before the answer was finished: the turn is not kept; send it again and another pod answers it`);
        default: return undefined;
      }
    };
    const finish = <T>(result: T): T => {
      // Stopped before any of a non-streamed answer reached its caller (it hung up: a client
      // timeout; a shutdown), the turn will be sent again: keeping it would ask it twice.
      // Streamed, the caller has the answer so far, and so does the saved conversation.
      if (!opts.onText && (opts.signal?.aborted || this.interruption === "shutdown")) this.history = before;
      const e = interrupted();
      if (e) throw e;
      return result;
    };
    try {
      if (!pending) {
        opts.onStart?.(wake);
        return finish(await this.generate(history, { ...opts, signal: abort.signal }));
      }
      let open = false;
      let failed: { err: unknown } | undefined;
      const held: string[] = [];
      const gate = pending.check.then(() => {
        open = true;
        opts.onStart?.(wake);
        for (const text of held.splice(0)) opts.onText?.(text);
      }, (err: unknown) => { failed = { err }; abort.abort(); });
      try {
        const result = await this.generate(history, { ...opts, signal: abort.signal, onText: (text) => { if (open) opts.onText?.(text); else held.push(text); } });
        await gate;
        if (failed) throw failed.err;
        return finish(result);
      } catch (err) {
        await gate;
        if (failed) {
          await this.abandonRestore(pending.before, failed.err);
          throw failed.err;
        }
        throw err;
      }
    } catch (err) {
      // Stopped before its first token (still reading the prompt), node-llama-cpp throws an
      // AbortError: the caller is told why instead, and a caller that hung up is not counted as a
      // fault (an internal error, logged as one).
      throw interrupted() ?? (opts.signal?.aborted ? new TorporError("client_closed", `the caller of ${this.ref.namespace}/${this.ref.name} hung up before the answer began`) : err);
    } finally {
      for (const signal of [opts.signal, interrupt]) signal?.removeEventListener("abort", stop);
    }
  }

  /** A restored state failed its check after it was loaded: back to Hibernated, the file kept. */
  private async abandonRestore(before: { history: ChatHistoryItem[]; spec: SessionSpec; window: EpochWindow }, err: unknown): Promise<void> {
    this.history = before.history;
    this.spec = before.spec;
    this.window = before.window;
    this.residency = "Hibernated";
    this.restoredTokens = undefined;
    this.lastRehydrate = undefined;
    await this.releaseResident();
    this.recordError(err);
    this.log.warn({ err }, "the restored state failed its integrity check; the turn is discarded and the file kept");
  }

  private async generate(history: ChatHistoryItem[], opts: GenerateOptions): Promise<Omit<GenerateResult, keyof Wake>> {
    // Set before the prompt is even measured: generateTurn reaches its first await only once the
    // prompt fits, so a refused turn is never seen Generating.
    this.phase = "Generating";
    try {
      const { promptTokenIds, ...turn } = await generateTurn(this.deps.host, this.resident!.sequence, history, opts);
      this.history = [...history, { type: "model", response: [turn.text] }];
      this.deps.metrics.generatedTokens.inc(turn.completionTokens);
      if (this.restoredTokens) this.recordRestoreCheck(checkRestore(this.restoredTokens, promptTokenIds, turn.cachedTokens));
      return turn;
    } finally {
      this.phase = "Idle";
    }
  }

  private recordRestoreCheck(check: RestoreCheck): void {
    this.restoredTokens = undefined;
    if (this.lastRehydrate) this.lastRehydrate = { ...this.lastRehydrate, reusedTokens: check.reusedTokens, restoreVerified: check.verified };
    if (check.verified) return;
    this.deps.metrics.restoresNotReused.inc();
    this.log.warn(check, "a restore was not reused: the evaluation after the rehydrate started below the restored tokens the prompt shares");
  }

  private recordError(err: unknown): void {
    const e = err instanceof TorporError ? err : new TorporError("internal", String((err as Error)?.message ?? err));
    this.lastError = {
      code: e.code, message: e.message, at: new Date(this.deps.clock.now()).toISOString(),
      ...(e instanceof StateRejectedError ? { reason: e.reason } : {}),
    };
    this.deps.metrics.errors.inc({ code: e.code });
  }
}
