// The one owner of a resident session's native memory: its llama context (or, later, its sequence
// of a shared context) and its admission slot. Every way out (dispose, detach for a handover)
// goes through here, is idempotent, and releases the slot exactly once, the way node-llama-cpp's
// own LlamaContext registers its resources with one dispose aggregator.
import type { LlamaContext, LlamaContextSequence } from "node-llama-cpp";
import type { Logger } from "../../common/logger.js";
import type { RuntimeMetrics } from "../metrics.js";
import type { ModelHost } from "../model/model-host.js";

/**
 * A clean context taken from a session that was evicted to make room: reusing it spares the next
 * session llama.cpp's allocation and clearing of a whole KV buffer (the bulk of a rehydrate's
 * latency when contexts are large). Whoever holds one owns it: give it to a ResidentContext, or
 * dispose it.
 */
export interface SpareContext {
  context: LlamaContext;
  /** Its one sequence, emptied. */
  sequence: LlamaContextSequence;
  /** The size it was requested with (the key for reuse). */
  contextSize: number;
}

export class ResidentContext {
  private context?: LlamaContext;
  private seq?: LlamaContextSequence;
  private size = 0;
  private released = false;

  /** Takes ownership of the admission grant (release) and of the spare, if any. */
  constructor(
    private readonly host: ModelHost,
    private readonly metrics: RuntimeMetrics,
    private readonly log: Logger,
    private readonly release: () => void,
    private spare?: SpareContext,
  ) {}

  get allocated(): boolean { return !!this.seq; }

  get sequence(): LlamaContextSequence {
    if (!this.seq) throw new Error("resident context used before allocation or after disposal");
    return this.seq;
  }

  /** The size the context was requested with. */
  get contextSize(): number { return this.size; }

  /** Allocates once: the spare if it has this very size, else a new context (the spare is freed). */
  async allocate(contextSize: number): Promise<LlamaContextSequence> {
    if (this.seq) return this.seq;
    const spare = this.spare;
    this.spare = undefined;
    if (spare && spare.contextSize === contextSize && !spare.context.disposed) {
      this.context = spare.context;
      this.seq = spare.sequence;
      this.metrics.contextHandovers.inc();
    } else {
      if (spare && !spare.context.disposed) await spare.context.dispose();
      this.context = await this.host.createContext(contextSize);
      this.seq = this.context.getSequence();
    }
    this.size = contextSize;
    return this.seq;
  }

  /** Empties the sequence and gives the context away instead of freeing it; falls back to dispose. */
  async detach(): Promise<SpareContext | undefined> {
    const context = this.context, sequence = this.seq;
    if (!context || !sequence) { await this.dispose(); return undefined; }
    try {
      await sequence.clearHistory();
    } catch (err) {
      this.log.warn({ err }, "could not empty the sequence for handover; freeing the context instead");
      await this.dispose();
      return undefined;
    }
    this.context = undefined;
    this.seq = undefined;
    this.releaseOnce();
    return { context, sequence, contextSize: this.size };
  }

  async dispose(): Promise<void> {
    const context = this.context, spare = this.spare;
    this.context = undefined;
    this.seq = undefined;
    this.spare = undefined;
    try {
      if (spare && !spare.context.disposed) await spare.context.dispose();
      if (context && !context.disposed) await context.dispose();
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
