// The runtime's sessions: registration, the resident-session bulkhead with LRU eviction, the idle
// policy and graceful shutdown. Holds nothing a restart would need: hibernated sessions are found
// again on the volume when the operator re-registers them.
import type { Clock } from "../../common/clock.js";
import { StaleEpochError, TorporError } from "../../contract/errors.js";
import { validateName, validateSubPath } from "../storage/hibernation-path.js";
import type { HibernationStore } from "../storage/hibernation-store.js";
import type { Logger } from "../../common/logger.js";
import type { RuntimeMetrics } from "../metrics.js";
import { addCosts, describeBudget, describeCost, isFree, isLimited, NO_COST, overspent, type MemoryCost } from "../model/memory-cost.js";
import type { ModelHost } from "../model/model-host.js";
import { SerialQueue } from "./serial-queue.js";
import { ContextPool } from "./context-pool.js";
import { Session, type Admission, type SpareContext } from "./session.js";
import { effectiveCheckpoint } from "./checkpoint-policy.js";
import { NoRoom } from "./no-room.js";
import { ShutdownHandOffs } from "./shutdown-handoffs.js";
import type { CheckpointSettings, HibernateOutcome, SessionSpec } from "../../contract/runtime-api.js";
import type { NamespaceLimits } from "./namespace-limits.js";

export interface ManagerOptions {
  maxResident: number;
  idleAfterMs: number;
  defaultContextSize: number;
  maxContextSize: number;
  /**
   * Optional caps on the estimated memory of resident contexts, RAM and VRAM each on its own
   * (0 or absent: no cap on that one; only maxResident applies).
   */
  memoryBudget?: MemoryCost;
  /** How long a request waits for a resident slot when every resident session is busy. */
  admissionTimeoutMs?: number;
  /** Reuse an evicted session's context for the session that needed the room (default true). */
  contextHandover?: boolean;
  /** Sequences per llama context: sessions sharing one decode in one batch (default 1). */
  sequencesPerContext?: number;
  /** How long a context no session uses stays allocated for the next rehydrate (default 0: freed at once). */
  contextGraceMs?: number;
  /** Make every session of a shared context join each decode batch (sessions/batch-composition.ts; default off). */
  gatherBatches?: boolean;
  /** Unused contexts of defaultContextSize kept allocated ahead of need, within the memory budget (default 0). */
  spareContexts?: number;
  /**
   * How long a request waits for an idle resident session before it takes the slot of a busy one
   * between two of its turns (default 2000 ms). Without it, sessions that always have a request
   * queued would keep their slots and starve every other session until the admission timeout.
   */
  preemptAfterMs?: number;
  podName: string;
  /** Per-namespace caps (largest context, resident sessions). */
  namespaceLimits?: NamespaceLimits;
  /** Checkpoints for sessions whose spec sets none (default: none). */
  checkpoint?: CheckpointSettings;
}

export interface RegisterRequest {
  namespace: string;
  name: string;
  path?: string;
  contextSize?: number;
  systemPrompt?: string;
  idleAfterMs?: number;
  /** The operator's placement epoch (0 or absent: unfenced, for local use without an operator). */
  epoch?: number;
  /** The session's own checkpoint policy; absent: the pool's. Fields at 0: none, whatever the pool's. */
  checkpoint?: CheckpointSettings;
  /** When the session was last used (epoch ms): a session registered after a move keeps its idle clock. */
  lastActivity?: number;
  /** settingsDigest() of the request's settings, reported back in the session's status. */
  settings?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class SessionManager implements Admission {
  private readonly sessions = new Map<string, Session>();
  /**
   * Resident (or being made resident) sessions, since when, and the memory admitted for them that
   * the pool has not allocated yet (so two admissions in a row cannot both take the same room).
   */
  private readonly resident = new Map<Session, { since: number; pending: MemoryCost }>();
  private readonly admissions = new SerialQueue();
  private draining = false;
  private readonly shutdownHandOffs = new ShutdownHandOffs();
  readonly pool: ContextPool;

  constructor(
    private readonly host: ModelHost,
    private readonly store: HibernationStore,
    private readonly clock: Clock,
    private readonly metrics: RuntimeMetrics,
    private readonly log: Logger,
    readonly opts: ManagerOptions,
  ) {
    metrics.sessionCounts = () => this.countByResidency();
    this.pool = new ContextPool(host, metrics, log, {
      sequencesPerContext: opts.sequencesPerContext ?? 1, graceMs: opts.contextGraceMs ?? 0, gatherBatches: opts.gatherBatches ?? false,
      spares: opts.spareContexts ?? 0, spareContextSize: opts.defaultContextSize,
      // A spare never takes room that admitted sessions were promised, and gives way to them (trim).
      roomFor: async (cost) => {
        const budget = this.opts.memoryBudget ?? NO_COST;
        return !isLimited(budget) || overspent(addCosts(this.pool.allocatedCost(), this.pendingCost(), cost), budget) === undefined;
      },
      onFreed: () => void this.replenishSpares(),
    });
  }

  get shuttingDown(): boolean { return this.draining; }
  get residentCount(): number { return this.resident.size; }
  get sessionCount(): number { return this.sessions.size; }

  /** Idempotent: returns the existing session, or a new one that is Hibernated if the volume has its state. */
  async register(req: RegisterRequest): Promise<Session> {
    this.checkAccepting();
    validateName("namespace", req.namespace);
    validateName("name", req.name);
    const path = req.path ?? "";
    validateSubPath(path);
    const contextSize = req.contextSize ?? this.opts.defaultContextSize;
    if (!Number.isInteger(contextSize) || contextSize < 256 || contextSize > this.opts.maxContextSize) {
      throw new TorporError("bad_request", `contextSize must be an integer between 256 and ${this.opts.maxContextSize}, got ${req.contextSize}`);
    }
    this.opts.namespaceLimits?.checkContextSize(req.namespace, contextSize);
    const spec: SessionSpec = {
      contextSize,
      ...(req.systemPrompt ? { systemPrompt: req.systemPrompt } : {}),
      ...(req.idleAfterMs !== undefined ? { idleAfterMs: req.idleAfterMs } : {}),
    };
    const checkpoint = effectiveCheckpoint(req.checkpoint, this.opts.checkpoint);
    if (checkpoint) spec.checkpoint = checkpoint;
    const key = `${req.namespace}/${req.name}`;
    const epoch = req.epoch ?? 0;
    let existing = this.sessions.get(key);
    if (existing && epoch > existing.epoch && existing.epoch > 0 && !await this.store.placedBetween(existing.ref, existing.epoch, epoch)) {
      // Placed here again and nowhere else meanwhile (every placement claims on the volume first):
      // a retried reconcile, not a move. Dropping this copy would lose what it holds in memory.
      await this.store.claim(existing.ref, epoch);
      existing.advanceEpoch(epoch);
    }
    if (existing && epoch > existing.epoch) {
      // Placed here again under a newer epoch (it was elsewhere meanwhile): this copy may be older
      // than what the other placement committed, so it goes and the volume decides.
      await existing.drop(epoch);
      this.sessions.delete(key);
      existing = undefined;
    }
    if (existing && epoch < existing.epoch) throw new StaleEpochError(epoch, existing.epoch, `cannot register ${key}`);
    if (existing) {
      if (existing.ref.path !== path) {
        throw new TorporError("bad_request", `session ${key} already uses hibernation path "${existing.ref.path}"; it cannot change`);
      }
      // New settings apply from the next context the session allocates; a resident one's size
      // from its next turn (Session.resizeIfAsked).
      existing.spec = { ...spec, contextSize: existing.residency === "InMemory" ? existing.spec.contextSize : contextSize };
      existing.desiredContextSize = contextSize;
      existing.settings = req.settings;
      return existing;
    }
    const ref = { namespace: req.namespace, name: req.name, path };
    const previous = await this.store.claim(ref, epoch);
    const window = { epoch, min: previous };
    await this.store.adopt(ref, window);
    const found = await this.store.peek(ref, window);
    const session = new Session(ref, spec, window, found, {
      host: this.host, pool: this.pool, store: this.store, clock: this.clock, metrics: this.metrics, log: this.log, admission: this, podName: this.opts.podName, maxContextSize: this.opts.maxContextSize,
    });
    // Never in the future: a clock skewed between nodes must not keep a session from idling out.
    if (req.lastActivity !== undefined) session.lastActivity = Math.min(session.lastActivity, req.lastActivity);
    session.settings = req.settings;
    this.sessions.set(key, session);
    return session;
  }

  get(namespace: string, name: string): Session {
    const s = this.sessions.get(`${namespace}/${name}`);
    if (!s) throw new TorporError("session_not_found", `session ${namespace}/${name} is not registered on this runtime (PUT /v1/sessions/${namespace}/${name} first)`);
    return s;
  }

  list(): Session[] { return [...this.sessions.values()]; }

  /** Commits the session for placement `newer` and stops serving it here (see Session.handOff). */
  async handOff(namespace: string, name: string, newer: number): Promise<HibernateOutcome> {
    const s = this.get(namespace, name);
    if (s.epoch >= newer) throw new StaleEpochError(newer, s.epoch, `cannot hand ${namespace}/${name} off`);
    const out = await s.handOff(newer);
    this.shutdownHandOffs.settled(`${namespace}/${name}`);
    return out;
  }

  /** A newer placement owns the session elsewhere: forget this copy without saving it. */
  async drop(namespace: string, name: string, newer: number): Promise<boolean> {
    const key = `${namespace}/${name}`;
    const s = this.sessions.get(key);
    if (!s || s.epoch >= newer) return false;
    this.sessions.delete(key);
    this.shutdownHandOffs.settled(key);
    await s.drop(newer);
    return true;
  }

  async remove(namespace: string, name: string): Promise<void> {
    const s = this.get(namespace, name);
    await s.delete();
    this.sessions.delete(`${namespace}/${name}`);
    this.shutdownHandOffs.settled(`${namespace}/${name}`);
  }

  async acquire(session: Session, opts: { evict?: boolean } = {}): Promise<SpareContext | undefined> {
    const budget = this.opts.memoryBudget ?? NO_COST;
    const limited = isLimited(budget);
    const size = session.spec.contextSize;
    const S = this.pool.opts.sequencesPerContext;
    const whole = limited ? await this.host.estimateContextCost(size, S) : NO_COST;
    const never = overspent(whole, budget);
    if (never) {
      throw new TorporError("capacity_exhausted", `a context of ${size} tokens${S > 1 ? ` x ${S} sequences` : ""} needs about ${describeCost(whole)}, more than the runtime's whole ${never === "vram" ? "VRAM" : "RAM"} budget (${describeBudget(budget)}); ask for a smaller contextSize or a pool with more memory`);
    }
    return this.admissions.run(async () => {
      const started = Date.now();
      const deadline = started + (this.opts.admissionTimeoutMs ?? 30_000);
      const ns = session.ref.namespace;
      const nsMax = this.opts.namespaceLimits?.of(ns).maxResidentSessions;
      const nsResident = () => [...this.resident.keys()].filter((s) => s.ref.namespace === ns).length;
      // A namespace at its own cap makes room among its own sessions, never its neighbours'.
      const nsFull = () => nsMax !== undefined && nsResident() >= nsMax;
      // The budget counts what the pool has allocated (leased or kept for its grace) plus what
      // this session adds: nothing when it fits a free sequence of a context in use.
      const overBudget = async () => limited && overspent(addCosts(this.pool.allocatedCost(), this.pendingCost(), await this.pool.costToAdmit(size)), budget) !== undefined;
      const full = async () => nsFull() || this.resident.size >= this.opts.maxResident || await overBudget();
      let spare: SpareContext | undefined;
      try {
        while (await full()) {
          // Contexts kept only for their grace go first: no session loses its place for them.
          if (!nsFull() && this.resident.size < this.opts.maxResident && !isFree(this.pool.idleCost())) {
            await this.pool.trim();
            continue;
          }
          if (opts.evict === false) {
            throw new NoRoom(`no room for ${session.ref.namespace}/${session.ref.name} without evicting a resident session (cap ${this.opts.maxResident}${nsFull() ? `, namespace cap ${nsMax}` : ""}${limited ? `, budget ${describeBudget(budget)}` : ""})`);
          }
          const candidates = [...this.resident.keys()].filter((s) => s !== session && s.residency === "InMemory" && (!nsFull() || s.ref.namespace === ns));
          const idle = candidates.filter((s) => !s.busy).sort((a, b) => a.lastActivity - b.lastActivity)[0];
          // Time-slicing under sustained load: the session resident longest gives up its slot
          // after the requests already queued on it (its queue is FIFO: no generation is cut).
          const preempted = !idle && Date.now() - started >= (this.opts.preemptAfterMs ?? 2000)
            ? candidates.sort((a, b) => this.resident.get(a)!.since - this.resident.get(b)!.since)[0]
            : undefined;
          const victim = idle ?? preempted;
          if (victim) {
            const reason = idle ? "lru" : "preempt";
            // Only a sequence of the very size this session asks for is worth keeping.
            const handOver = this.opts.contextHandover !== false && !spare && victim.spec.contextSize === size;
            this.log.info({ namespace: victim.ref.namespace, name: victim.ref.name, for: `${session.ref.namespace}/${session.ref.name}`, handOver, reason }, "evicting a resident session");
            if (handOver) spare = (await victim.evict(reason)).spare;
            else await victim.hibernate(reason);
            this.metrics.evictions.inc({ reason });
            // A spare is this session's: the budget no longer needs room for it.
            if (spare && !nsFull() && this.resident.size < this.opts.maxResident) break;
            continue;
          }
          if (Date.now() > deadline) {
            throw new TorporError("capacity_exhausted", `every resident session is busy generating (cap ${this.opts.maxResident}${limited ? `, budget ${describeBudget(budget)}` : ""}); retry shortly`);
          }
          await sleep(25);
        }
      } catch (err) {
        if (spare) await this.pool.give(spare);
        throw err;
      }
      this.resident.set(session, { since: Date.now(), pending: spare || !limited ? NO_COST : await this.pool.costToAdmit(size) });
      return spare;
    });
  }

  /**
   * Tops the spare contexts up, in turn with admissions: a refill decides on the budget only
   * between two admissions, never while one has checked the room and not yet claimed it. Resolves
   * to the number allocated; never rejects (without a spare, a rehydrate allocates its own).
   */
  replenishSpares(): Promise<number> {
    if (!this.opts.spareContexts || this.draining) return Promise.resolve(0);
    return this.admissions.run(() => this.pool.refill()).catch((err: unknown) => {
      this.log.warn({ err }, "could not allocate a spare context; a cold rehydrate allocates its own");
      return 0;
    });
  }

  /** Memory admitted for resident sessions that the pool has not allocated yet. */
  private pendingCost(): MemoryCost {
    return addCosts(...[...this.resident.values()].map((r) => r.pending));
  }

  /** The session's sequence is allocated: the pool accounts for it from now on. */
  allocated(session: Session): void {
    const r = this.resident.get(session);
    if (r) r.pending = NO_COST;
  }

  release(session: Session): void {
    this.resident.delete(session);
  }

  async evictOne(session: Session): Promise<boolean> {
    if (!isFree(this.pool.idleCost())) return (await this.pool.trim()) > 0;
    const victim = [...this.resident.keys()].filter((s) => s !== session && s.residency === "InMemory" && !s.busy)
      .sort((a, b) => a.lastActivity - b.lastActivity)[0];
    if (!victim) return false;
    await victim.hibernate("memory");
    this.metrics.evictions.inc({ reason: "memory" });
    return true;
  }

  /** How long the session may stay idle in memory (0: no idle policy). */
  idleAfterOf(s: Session): number {
    return s.spec.idleAfterMs ?? this.opts.idleAfterMs;
  }

  /** Hibernates every resident session idle for longer than its policy allows; starts due checkpoints. */
  async sweepIdle(): Promise<number> {
    const now = this.clock.now();
    for (const s of this.resident.keys()) s.checkpointIfDue(now);
    const due = [...this.resident.keys()].filter((s) => {
      const idleAfter = this.idleAfterOf(s);
      return idleAfter > 0 && !s.busy && s.residency === "InMemory" && now - s.lastActivity >= idleAfter;
    });
    await Promise.all(due.map(async (s) => {
      await s.hibernate("idle");
      this.metrics.evictions.inc({ reason: "idle" });
    }));
    return due.length;
  }

  /** Frees every context, kept or not; after shutdown() (nothing is resident any more). */
  async close(): Promise<void> {
    await this.pool.close();
  }

  /**
   * SIGTERM: stops taking work and hibernates every resident session. Generations under way may go on for
   * `generationMs`; then they are stopped, so that their sessions are saved within the pod's grace.
   */
  async shutdown(generationMs = Infinity): Promise<{ hibernated: number; failed: number }> {
    this.draining = true;
    // Every session, not only the busy ones: a request queued before SIGTERM must not start a
    // generation after the deadline either.
    const deadline = Number.isFinite(generationMs) ? setTimeout(() => {
      const busy = [...this.sessions.values()].filter((s) => s.busy).length;
      if (busy) this.log.warn({ sessions: busy, generationMs }, "generations still under way at the shutdown deadline; stopping them so their sessions are saved");
      for (const s of this.sessions.values()) s.stopForShutdown();
    }, generationMs) : undefined;
    try {
      return await this.hibernateAll();
    } finally {
      clearTimeout(deadline);
    }
  }

  private async hibernateAll(): Promise<{ hibernated: number; failed: number }> {
    let hibernated = 0, failed = 0;
    const failedSessions = new Set<Session>();
    // Requests accepted before SIGTERM may still be queued (waiting for admission, say) and make a
    // session resident again after its shutdown save: go round until nothing is resident or busy.
    for (let round = 0; ; round++) {
      const pending = [...this.sessions.values()].filter((s) => !failedSessions.has(s) && (s.busy || s.residency === "InMemory"));
      if (pending.length === 0) break;
      if (round > 0) this.log.info({ sessions: pending.length, round }, "sessions became resident again during shutdown; hibernating them too");
      await Promise.all(pending.map(async (s) => {
        try {
          const r = await s.hibernate("shutdown");
          if (r.outcome === "hibernated") {
            hibernated++;
            this.metrics.evictions.inc({ reason: "shutdown" });
            if (s.epoch > 0) this.shutdownHandOffs.saved(`${s.ref.namespace}/${s.ref.name}`);
          }
        } catch (err) {
          failed++;
          failedSessions.add(s);
          this.log.error({ err, namespace: s.ref.namespace, name: s.ref.name }, "could not hibernate at shutdown; live state is lost");
        }
      }));
    }
    return { hibernated, failed };
  }

  /**
   * After shutdown(): waits up to `timeoutMs` for the operator to ask for every session the
   * shutdown saved from memory (shutdown-handoffs.ts), so that it learns of each save.
   */
  handOffsCollected(timeoutMs: number): Promise<{ asked: number; unasked: string[] }> {
    return this.shutdownHandOffs.collected(timeoutMs);
  }

  /** Throws shutting_down once SIGTERM has been received. */
  checkAccepting(): void {
    if (this.draining) throw new TorporError("shutting_down", "runtime is shutting down; retry on another pod");
  }

  countByResidency(): Record<string, number> {
    const counts = { NotCreated: 0, InMemory: 0, Hibernated: 0 };
    for (const s of this.sessions.values()) counts[s.residency]++;
    return counts;
  }
}
