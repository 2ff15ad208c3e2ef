// The owner of every llama context the runtime allocates. Sessions lease one sequence each; a
// context holds `sequencesPerContext` of them, so sessions that share a context decode in one
// batch (node-llama-cpp batches the sequences of a context together), as llama-server's slots do.
// A returned sequence is emptied and kept for the next session: a rehydrate then costs the state
// load alone, not llama.cpp's allocation and clearing of a whole KV buffer. A context nobody uses
// is freed after `graceMs`, so hibernation still gives the memory back; except `spares` contexts of
// the pool's default size, allocated ahead and refilled in the background, so that a cold
// rehydrate (grace over, or a session that moved here) pays only for its state, not for a context.
import type { LlamaContext, LlamaContextSequence } from "node-llama-cpp";
import type { Logger } from "../../common/logger.js";
import type { RuntimeMetrics } from "../metrics.js";
import { addCosts, NO_COST, type MemoryCost } from "../model/memory-cost.js";
import type { FlashAttention, ModelHost } from "../model/model-host.js";
import { composeBatches } from "./batch-composition.js";
import { greedyFromLogits } from "./greedy-sampling.js";
import { SerialQueue } from "./serial-queue.js";

export interface ContextPoolOptions {
  /** Sequences per context (llama-server's `-np`); 1 gives each session a context of its own. */
  sequencesPerContext: number;
  /** How long an unused context stays allocated for the next session; 0 frees it at once. */
  graceMs: number;
  /** Make every generating sequence of a context join each decode batch (batch-composition.ts). */
  gatherBatches?: boolean;
  /** Unused contexts of `spareContextSize` (and the pool's default shape) kept allocated ahead of need (default 0). */
  spares?: number;
  spareContextSize?: number;
  /** Whether the memory budget has room for one more context of this cost (a spare never pushes it over). */
  roomFor?: (cost: MemoryCost) => Promise<boolean>;
  /** A context no session used was freed (after a hibernate, or its grace): room for a spare, maybe. */
  onFreed?: () => void;
}

interface PooledContext {
  context: LlamaContext;
  contextSize: number;
  sequences: number;
  flashAttention: FlashAttention;
  /** Emptied sequences ready for the next lease. */
  free: LlamaContextSequence[];
  leased: number;
  cost: MemoryCost;
  timer?: NodeJS.Timeout;
}

/** Whether take() can lease a sequence of this size and shape from the context without allocating. */
function hasRoomFor(c: PooledContext, contextSize: number, sequences: number, flashAttention: FlashAttention): boolean {
  return !c.context.disposed && c.contextSize === contextSize && c.sequences === sequences && c.flashAttention === flashAttention &&
    (c.free.length > 0 || c.context.sequencesLeft > 0);
}

/** One session's sequence. Whoever holds a lease gives it back to the pool exactly once. */
export interface SequenceLease {
  readonly sequence: LlamaContextSequence;
  /** The size per sequence the context was requested with. */
  readonly contextSize: number;
  /** The shape of the context it lives in: a saved state loads only into the same shape. */
  readonly sequences: number;
  /** Flash attention changes the KV cache's layout (V transposed without it): part of the shape. */
  readonly flashAttention: FlashAttention;
}

export class ContextPool {
  private readonly contexts: PooledContext[] = [];
  private readonly owners = new WeakMap<SequenceLease, PooledContext>();
  private closed = false;
  /** Takes one at a time: sessions arriving together fill one new context instead of each making one. */
  private readonly takes = new SerialQueue();

  constructor(
    private readonly host: ModelHost,
    private readonly metrics: RuntimeMetrics,
    private readonly log: Logger,
    readonly opts: ContextPoolOptions,
  ) {
    metrics.pooledContexts = () => this.counts();
  }

  /** A sequence of `contextSize` tokens in a context of `sequences` sequences: an emptied one if any is kept, else a new context. */
  take(contextSize: number, sequences = this.opts.sequencesPerContext, flashAttention: FlashAttention = this.host.flashAttention): Promise<SequenceLease> {
    return this.takes.run(() => this.takeNow(contextSize, sequences, flashAttention));
  }

  private async takeNow(contextSize: number, sequences: number, flashAttention: FlashAttention): Promise<SequenceLease> {
    if (this.closed) throw new Error("context pool used after shutdown");
    // A context in use first (its free sequence costs nothing more), then an unused one.
    const c = this.contexts.find((x) => x.leased > 0 && hasRoomFor(x, contextSize, sequences, flashAttention)) ??
      this.contexts.find((x) => hasRoomFor(x, contextSize, sequences, flashAttention));
    if (c) {
      this.stopTimer(c);
      const kept = takeLowest(c.free);
      if (kept || c.leased === 0) this.metrics.contextReuses.inc();
      return this.lease(c, kept ?? c.context.getSequence());
    }
    const pooled = await this.allocate(contextSize, sequences, flashAttention, await this.host.estimateContextCost(contextSize, sequences));
    return this.lease(pooled, pooled.context.getSequence());
  }

  /** A new context, owned by the pool from now on (unused until leased). */
  private async allocate(contextSize: number, sequences: number, flashAttention: FlashAttention, cost: MemoryCost): Promise<PooledContext> {
    const context = await this.host.createContext(contextSize, sequences, flashAttention);
    if (sequences > 1 && !composeBatches(context, { gather: this.opts.gatherBatches ?? false })) this.log.warn("node-llama-cpp's batching internals changed: sessions sharing a context may decode in more batches than needed");
    // False with node-llama-cpp's own addon: every token is then sampled in a job of its own.
    greedyFromLogits(context);
    const pooled: PooledContext = { context, contextSize, sequences, flashAttention, free: [], leased: 0, cost };
    this.contexts.push(pooled);
    return pooled;
  }

  /** Empties the sequence and keeps it for the next session (or frees it: grace 0, or it will not empty). */
  async give(lease: SequenceLease): Promise<void> {
    const c = this.owners.get(lease);
    if (!c) return;
    this.owners.delete(lease);
    c.leased--;
    if (c.context.disposed) { this.forget(c); return; }
    try {
      await lease.sequence.clearHistory();
      c.free.push(lease.sequence);
    } catch (err) {
      this.log.warn({ err }, "could not empty a returned sequence; freeing it");
      // Whoever gives a sequence back has already saved or given up the session: never fail them.
      await Promise.resolve(lease.sequence.dispose()).catch((e: unknown) => this.log.warn({ err: e }, "could not free a returned sequence"));
    }
    if (c.leased > 0) return;
    // Kept without a timer while the spares are short of one (it is one now).
    if (this.isSpareShape(c) && this.idleSpares().length <= this.spareCount) return;
    if (this.opts.graceMs <= 0) { await this.free(c); this.opts.onFreed?.(); return; }
    this.stopTimer(c);
    // A timer's rejection would be unhandled, and Node ends the process for those.
    c.timer = setTimeout(() => void this.free(c).then(() => this.opts.onFreed?.(), (err: unknown) => this.log.warn({ err }, "could not free a context after its grace")), this.opts.graceMs);
    c.timer.unref();
  }

  /** Estimated cost of every context allocated, leased or kept. */
  allocatedCost(): MemoryCost {
    return addCosts(...this.contexts.map((c) => c.cost));
  }

  /** Estimated cost of contexts no session uses (what trim() would give back now). */
  idleCost(): MemoryCost {
    return addCosts(...this.contexts.filter((c) => c.leased === 0).map((c) => c.cost));
  }

  /** Estimated cost one new session of this size adds: nothing when an allocated sequence fits (a kept context, a shared one's free slot). */
  async costToAdmit(contextSize: number): Promise<MemoryCost> {
    const S = this.opts.sequencesPerContext;
    return this.contexts.some((c) => hasRoomFor(c, contextSize, S, this.host.flashAttention)) ? NO_COST : this.host.estimateContextCost(contextSize, S);
  }

  /** Frees every context no session uses, now (memory pressure, admission). */
  async trim(): Promise<number> {
    const idle = this.contexts.filter((c) => c.leased === 0);
    for (const c of idle) await this.free(c);
    return idle.length;
  }

  /**
   * Allocates spare contexts until there are `spares` unused ones of the spare shape, as far as the
   * memory budget has room. Runs in the take queue: a take arriving meanwhile gets the new spare.
   * The caller serialises it with admissions (SessionManager.replenishSpares), so that a spare
   * never takes room a session was just promised.
   */
  refill(): Promise<number> {
    return this.takes.run(async () => {
      let made = 0;
      // Unused contexts already there serve as spares: no grace timer frees them now.
      for (const c of this.idleSpares().slice(0, this.spareCount)) this.stopTimer(c);
      if (this.idleSpares().length >= this.spareCount) return 0;
      const size = this.opts.spareContextSize!, S = this.opts.sequencesPerContext;
      const cost = await this.host.estimateContextCost(size, S);
      // Bounded by the count, whatever idleSpares() says: a context that did not come out in the
      // spare's shape must not make this allocate forever.
      for (let i = 0; i < this.spareCount && !this.closed && this.idleSpares().length < this.spareCount; i++) {
        if (this.opts.roomFor && !await this.opts.roomFor(cost)) break;
        await this.allocate(size, S, this.host.flashAttention, cost);
        made++;
      }
      if (made) this.metrics.spareContextsAllocated.inc(made);
      return made;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    // In the take queue, so after a refill in flight: a spare it was still allocating (a freed
    // context starts one) is freed too, instead of outliving the pool, which made the model's
    // dispose wait forever.
    await this.takes.run(async () => {
      for (const c of [...this.contexts]) await this.free(c, true);
    });
  }

  counts(): { leased: number; idle: number } {
    const idle = this.contexts.filter((c) => c.leased === 0).length;
    return { leased: this.contexts.length - idle, idle };
  }

  private get spareCount(): number { return this.opts.spareContextSize ? this.opts.spares ?? 0 : 0; }

  private isSpareShape(c: PooledContext): boolean {
    return this.spareCount > 0 && c.contextSize === this.opts.spareContextSize && c.sequences === this.opts.sequencesPerContext && c.flashAttention === this.host.flashAttention;
  }

  /** Unused contexts of the spare shape. */
  private idleSpares(): PooledContext[] {
    return this.contexts.filter((c) => c.leased === 0 && !c.context.disposed && this.isSpareShape(c));
  }

  private lease(c: PooledContext, sequence: LlamaContextSequence): SequenceLease {
    const lease: SequenceLease = { sequence, contextSize: c.contextSize, sequences: c.sequences, flashAttention: c.flashAttention };
    c.leased++;
    this.owners.set(lease, c);
    return lease;
  }

  private async free(c: PooledContext, evenIfLeased = false): Promise<void> {
    if (c.leased > 0 && !evenIfLeased) return;
    this.stopTimer(c);
    this.forget(c);
    if (!c.context.disposed) await c.context.dispose();
  }

  private forget(c: PooledContext): void {
    const i = this.contexts.indexOf(c);
    if (i >= 0) this.contexts.splice(i, 1);
  }

  private stopTimer(c: PooledContext): void {
    if (c.timer) clearTimeout(c.timer);
    c.timer = undefined;
  }
}

/**
 * The kept sequence of the lowest id, out of `free`. llama.cpp decodes the sequences of one batch in
 * a single compute only where their ids follow each other (batch-composition.ts), so the sessions
 * of a context keep the lowest ids, without holes where it can be helped. Ids node-llama-cpp has not
 * handed out yet are all higher than any it has.
 */
function takeLowest(free: LlamaContextSequence[]): LlamaContextSequence | undefined {
  if (free.length === 0) return undefined;
  let best = 0;
  for (let i = 1; i < free.length; i++) if (sequenceId(free[i]!) < sequenceId(free[best]!)) best = i;
  return free.splice(best, 1)[0];
}

/** node-llama-cpp keeps a sequence's id internal; unknown reads as 0 (then the first kept one is taken). */
const sequenceId = (s: LlamaContextSequence): number => (s as unknown as { _sequenceId?: number })._sequenceId ?? 0;
