// The one owner of a resident session's native memory: its leased sequence (in a context the
// pool owns) and its admission slot. Every way out (dispose, detach for a handover) goes through
// here, is idempotent, and releases the slot exactly once, the way node-llama-cpp's own
// LlamaContext registers its resources with one dispose aggregator.
import type { LlamaContextSequence } from "node-llama-cpp";
import type { Logger } from "../../common/logger.js";
import type { RuntimeMetrics } from "../metrics.js";
import type { FlashAttention } from "../model/model-host.js";
import type { ContextPool, SequenceLease } from "./context-pool.js";

/**
 * An emptied sequence taken from a session that was evicted to make room, for the session that
 * needed it. Whoever holds one owns it: give it to a ResidentContext, or back to the pool.
 */
export type SpareContext = SequenceLease;

export class ResidentContext {
  private lease?: SequenceLease;
  private released = false;

  /** Takes ownership of the admission grant (release) and of the spare, if any. */
  constructor(
    private readonly pool: ContextPool,
    private readonly metrics: RuntimeMetrics,
    private readonly log: Logger,
    private readonly release: () => void,
    private spare?: SpareContext,
  ) {}

  get allocated(): boolean { return !!this.lease; }

  get sequence(): LlamaContextSequence {
    if (!this.lease) throw new Error("resident context used before allocation or after disposal");
    return this.lease.sequence;
  }

  /** The size the context was requested with. */
  get contextSize(): number { return this.lease?.contextSize ?? 0; }

  /** The shape of the context the sequence lives in (sequences per context). */
  get sequences(): number { return this.lease?.sequences ?? this.pool.opts.sequencesPerContext; }

  /** The flash attention setting of the context it lives in (the saved state's layout depends on it). */
  get flashAttention(): FlashAttention { return this.lease?.flashAttention ?? "auto"; }

  /**
   * Allocates once: the spare if it has this very size and shape, else a sequence from the pool
   * (the spare goes back to it). `sequences` and `flashAttention` name the shape a saved state
   * needs (undefined: the pool's for new sessions).
   */
  async allocate(contextSize: number, sequences = this.pool.opts.sequencesPerContext, flashAttention?: FlashAttention): Promise<LlamaContextSequence> {
    if (this.lease) return this.lease.sequence;
    const spare = this.spare;
    this.spare = undefined;
    if (spare && spare.contextSize === contextSize && spare.sequences === sequences && (flashAttention === undefined || spare.flashAttention === flashAttention)) {
      this.lease = spare;
      this.metrics.contextHandovers.inc();
    } else {
      if (spare) await this.pool.give(spare);
      this.lease = await this.pool.take(contextSize, sequences, flashAttention);
    }
    return this.lease.sequence;
  }

  /** Empties the sequence and gives it away instead of returning it to the pool; falls back to dispose. */
  async detach(): Promise<SpareContext | undefined> {
    const lease = this.lease;
    if (!lease) { await this.dispose(); return undefined; }
    try {
      await lease.sequence.clearHistory();
    } catch (err) {
      this.log.warn({ err }, "could not empty the sequence for handover; returning it to the pool instead");
      await this.dispose();
      return undefined;
    }
    this.lease = undefined;
    this.releaseOnce();
    return lease;
  }

  async dispose(): Promise<void> {
    const lease = this.lease, spare = this.spare;
    this.lease = undefined;
    this.spare = undefined;
    try {
      if (spare) await this.pool.give(spare);
      if (lease) await this.pool.give(lease);
    } finally {
      this.releaseOnce();
    }
  }

  private releaseOnce(): void {
    if (this.released) return;
    this.released = true;
    this.release();
  }
}
