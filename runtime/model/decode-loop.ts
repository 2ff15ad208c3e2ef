// Greedy generation for all the sequences of a context in one native loop, through the methods
// scripts/build-runtime-addon.sh adds to node-llama-cpp's addon (runtime/native/AddonContextDecodeLoop.cpp):
// the decode, the greedy token of every sequence and the next batch without a return to JavaScript
// between steps, as llama-server's slots run. Tokens come back as each step ends, while the next
// computes.
//
// A run holds node-llama-cpp's context lock, so nothing else decodes, samples or edits this
// context's KV cache meanwhile, and lasts at most STEPS_PER_RUN steps; the jobs still generating go
// on in the next run, and jobs join a run in progress. Whoever else needs the context takes turns
// with the loop step by step: a state save asks the run under way to end after its step, and a
// turn that samples (node-llama-cpp's batches) gets one batch in after each step of the loop (see
// `of`). The context lock is node-llama-cpp's own (lifecycle-utils, checked to be the same module
// as node-llama-cpp's at start-up).
import { acquireLock } from "lifecycle-utils";
import type { Llama, LlamaContext } from "node-llama-cpp";
import { sharedLocks } from "./node-llama-cpp-locks.js";

/**
 * Steps a run takes when nobody else waits for the context: about 0.4 s of SmolLM2 on 2 cores with
 * 4 sequences; a return to JavaScript every 16 steps costs well under 1% of them.
 */
const STEPS_PER_RUN = 16;

interface LoopAddon {
  decodeLoopJoin(job: number, sequenceId: number, keep: number, tokens: Uint32Array, maxTokens: number, stopTokens: Uint32Array): void;
  decodeLoopCancel(job: number): void;
  decodeLoopRun(maxSteps: number, onEvents: (events: Uint32Array) => void): Promise<number>;
  decodeLoopYield(): void;
}

export type LoopEndReason = "stop" | "length" | "cancelled" | "failed";
const REASONS: readonly LoopEndReason[] = ["stop", "length", "cancelled", "failed"];

export interface LoopJobEnd {
  reason: LoopEndReason;
  /** The sequence's tokens the KV cache holds now: those kept, then the prompt's, then the generated ones it decoded. */
  kvTokens: number;
}

export interface LoopJob {
  /** Settles when the job is over; rejects only when the context could not run at all. */
  readonly end: Promise<LoopJobEnd>;
  /** Ends the job at the start of the loop's next step (a token may still arrive before). */
  cancel(): void;
}

export interface LoopJobSpec {
  sequenceId: number;
  /** The sequence's tokens to keep: the rest is removed before the prompt is decoded. */
  keep: number;
  /** The prompt's tokens after those kept (at least one: its logits give the first token). */
  prompt: readonly number[];
  maxTokens: number;
  /** Tokens that end the answer besides the model's end-of-generation tokens; never sent. */
  stopTokens: readonly number[];
  onTokens(tokens: number[]): void;
}

interface Job { spec: LoopJobSpec; resolve(end: LoopJobEnd): void; reject(err: unknown): void }

interface Disposable { dispose(): void }
type Allocation = [threads: number, handle: Disposable] | undefined;

/**
 * What node-llama-cpp's own batch dispatch does around every decode (LlamaContext._dispatchPendingBatch
 * in 3.22.1), done here around every run: the context reserves its share of the process's CPU
 * threads and takes what the splitter allots it now (contexts decoding at once share
 * `maxThreads`: two contexts with two threads each on two cores would make ggml's spinning
 * barriers wait on preempted threads, 20 times slower here), and holds off its disposal.
 */
interface ContextInternals {
  _ctx: LoopAddon & { setThreads(threads: number): void };
  _reserveThreads(): void;
  _scheduleToFreeReservedThreads(): void;
  _threadSplitterConsumer?: { getAllocationToConsume(): Allocation | Promise<Allocation> };
  _backendContextDisposeGuard: { createPreventDisposalHandle(): Disposable };
  _llama: { gpu: string | false };
  /** Where node-llama-cpp queues a sequence's tokens for its next batch (batch-composition.ts hooks it too). */
  _decodeTokens(...args: unknown[]): Promise<unknown>;
}

function internalsOf(context: LlamaContext): ContextInternals | undefined {
  const c = context as unknown as Partial<ContextInternals>;
  const ctx = c._ctx as Partial<ContextInternals["_ctx"]> | undefined;
  if (typeof ctx?.decodeLoopJoin !== "function" || typeof ctx.decodeLoopRun !== "function" || typeof ctx.decodeLoopCancel !== "function"
    || typeof ctx.decodeLoopYield !== "function" || typeof ctx.setThreads !== "function" || typeof c._decodeTokens !== "function" || typeof c._reserveThreads !== "function" || typeof c._scheduleToFreeReservedThreads !== "function"
    || typeof c._backendContextDisposeGuard?.createPreventDisposalHandle !== "function") return undefined;
  // node-llama-cpp serialises Vulkan decodes across contexts with a lock of its own (its decodes
  // crash the process in parallel there), which a run could not take: LlamaChat decodes there.
  if (c._llama?.gpu === "vulkan") return undefined;
  return c as ContextInternals;
}

/** Whether contexts of this process generate greedy turns in the addon's loop, or why not (said once, at start-up). */
export function decodeLoopSupport(llama: Llama): { ok: true } | { ok: false; reason: string } {
  const proto = (llama as unknown as { _bindings?: { AddonContext?: { prototype: Partial<LoopAddon> } } })._bindings?.AddonContext?.prototype;
  if (typeof proto?.decodeLoopJoin !== "function" || typeof proto.decodeLoopCancel !== "function" || typeof proto.decodeLoopRun !== "function" || typeof proto.decodeLoopYield !== "function") {
    return { ok: false, reason: "node-llama-cpp's addon has no torpor decode loop (scripts/build-runtime-addon.sh did not build it here)" };
  }
  return sharedLocks();
}

let lastJobId = 0;
const loops = new WeakMap<LlamaContext, DecodeLoop>();

/** Lets whatever waits for `context` in after the current step of its decode loop, if it has one running. */
export function yieldDecodeLoop(context: LlamaContext): void {
  loops.get(context)?.yieldSoon();
}

export class DecodeLoop {
  private readonly jobs = new Map<number, Job>();
  private driving = false;
  private yielding = false;
  private stepWaiters: Array<() => void> = [];

  private readonly addon: ContextInternals["_ctx"];

  private constructor(private readonly context: LlamaContext, private readonly internals: ContextInternals) {
    this.addon = internals._ctx;
  }

  /** The context's loop; undefined where the addon has none or node-llama-cpp's internals changed. */
  static of(context: LlamaContext): DecodeLoop | undefined {
    let loop = loops.get(context);
    if (loop) return loop;
    const internals = internalsOf(context);
    if (!internals) return undefined;
    loop = new DecodeLoop(context, internals);
    loops.set(context, loop);
    // A turn that samples queues each token's batch here. Without a turn of its own it would wait
    // a whole run for each token, and once in, node-llama-cpp's dispatch keeps the context for as
    // long as batches are queued, which with a token queued after each batch is the whole turn
    // (the loop's sequences stop meanwhile). So while the loop generates, a batch is queued only
    // after the loop's next step (a run of one step once asked): one step, one batch, in turn.
    const decode = internals._decodeTokens;
    const owner = loop;
    internals._decodeTokens = function (this: unknown, ...args: unknown[]) {
      if (!owner.generating) return decode.apply(this, args);
      owner.yieldSoon();
      return owner.afterStep().then(() => decode.apply(this, args));
    };
    return loop;
  }

  private get generating(): boolean {
    return this.driving && this.jobs.size > 0;
  }

  /** Someone else waits for the context: the run under way ends after its current step, and the next takes one. */
  yieldSoon(): void {
    if (!this.driving) return;
    this.yielding = true;
    this.addon.decodeLoopYield();
  }

  /** Settles after the loop's next run ends (at once when it is not running). */
  private afterStep(): Promise<void> {
    if (!this.driving) return Promise.resolve();
    return new Promise((resolve) => this.stepWaiters.push(resolve));
  }

  /** Starts generating on a sequence; the caller holds the sequence (nothing else evaluates it meanwhile). */
  start(spec: LoopJobSpec): LoopJob {
    const id = lastJobId = (lastJobId + 1) >>> 0;
    // Throws on a bad job (no prompt, past the context): nothing is queued then.
    this.addon.decodeLoopJoin(id, spec.sequenceId, spec.keep, Uint32Array.from(spec.prompt), spec.maxTokens, Uint32Array.from(spec.stopTokens));
    const end = new Promise<LoopJobEnd>((resolve, reject) => this.jobs.set(id, { spec, resolve, reject }));
    void this.drive();
    return { end, cancel: () => { if (this.jobs.has(id)) this.addon.decodeLoopCancel(id); } };
  }

  private async drive(): Promise<void> {
    if (this.driving) return;
    this.driving = true;
    try {
      while (this.jobs.size > 0) {
        const lock = await acquireLock([this.context, "context"]);
        const steps = this.yielding ? 1 : STEPS_PER_RUN;
        const yielded = this.yielding;
        this.yielding = false;
        let left: number;
        try {
          left = await this.run(steps);
        } finally {
          lock.dispose();
        }
        // Every event of a run is handed over before its promise settles, and the jobs left are
        // counted after: a job the loop does not hold that has not ended is lost, so it fails
        // rather than spin.
        if (left === 0 && this.jobs.size > 0) throw new Error(`the decode loop lost ${this.jobs.size} job(s)`);
        if (yielded || this.yielding || this.stepWaiters.length > 0) {
          // node-llama-cpp asks for the context a turn of the event loop after a batch is queued
          // (setImmediate): those turns pass before the loop asks again, so the other goes first.
          this.releaseStepWaiters();
          await new Promise((resolve) => setImmediate(resolve));
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    } catch (err) {
      for (const [id, job] of this.jobs) {
        this.jobs.delete(id);
        // Whatever the loop still holds of it must not decode into a sequence handed on.
        try { this.addon.decodeLoopCancel(id); } catch { /* the context is gone */ }
        job.reject(err);
      }
    } finally {
      this.driving = false;
      this.yielding = false;
      this.releaseStepWaiters();
    }
  }

  private releaseStepWaiters(): void {
    for (const resolve of this.stepWaiters.splice(0)) resolve();
  }

  /** One run, within the context's share of the CPU threads (see ContextInternals). */
  private async run(steps: number): Promise<number> {
    const c = this.internals;
    c._reserveThreads();
    try {
      const guard = c._backendContextDisposeGuard.createPreventDisposalHandle();
      try {
        const offered = c._threadSplitterConsumer?.getAllocationToConsume();
        const [threads, handle] = (offered instanceof Promise ? await offered : offered) ?? [];
        try {
          if (threads !== undefined) this.addon.setThreads(threads);
          return await this.addon.decodeLoopRun(steps, this.onEvents);
        } finally {
          handle?.dispose();
        }
      } finally {
        guard.dispose();
      }
    } finally {
      c._scheduleToFreeReservedThreads();
    }
  }

  private readonly onEvents = (events: Uint32Array): void => {
    let tokens: number[] = [];
    let tokensOf: number | undefined;
    const flush = () => {
      const job = tokensOf === undefined ? undefined : this.jobs.get(tokensOf);
      // A consumer that throws loses its turn, not the loop's other jobs.
      if (job && tokens.length > 0) {
        try { job.spec.onTokens(tokens); } catch { this.addon.decodeLoopCancel(tokensOf!); }
      }
      tokens = [];
    };
    for (let i = 0; i + 3 < events.length; i += 4) {
      const id = events[i]!;
      const job = this.jobs.get(id);
      if (!job) continue;
      if (id !== tokensOf) { flush(); tokensOf = id; }
      if (events[i + 1] === 0) { tokens.push(events[i + 2]!); continue; }
      flush();
      this.jobs.delete(id);
      job.resolve({ reason: REASONS[events[i + 2]!] ?? "failed", kvTokens: events[i + 3]! });
    }
    flush();
  };
}
