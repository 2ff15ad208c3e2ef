// Worker threads that seal and open ranges of a state file side by side. AES-256-GCM runs at about
// 3 GB/s on one core here: a 500 MB state is 170 ms of one core's work, on the path of every
// hibernate and rehydrate. Split over threads, each reading and writing its own ranges, it scales
// with the node's cores (two threads on two cores: 55 MiB opened in 27 ms instead of 47).
import os from "node:os";
import { Worker } from "node:worker_threads";
import { runRange, SealError, type RangeJob } from "./sealed-chunks.js";

/** What a thread answers: nothing, or the error as data (errors do not cross threads intact). */
export type RangeReply = { ok: true } | { ok: false; seal: boolean; message: string; code?: string };

export function replyFor(err: unknown): RangeReply {
  const e = err as NodeJS.ErrnoException;
  return { ok: false, seal: err instanceof SealError, message: e?.message ?? String(err), ...(typeof e?.code === "string" ? { code: e.code } : {}) };
}

function errorFrom(reply: Extract<RangeReply, { ok: false }>): Error {
  if (reply.seal) return new SealError(reply.message);
  return Object.assign(new Error(reply.message), reply.code ? { code: reply.code } : {});
}

/** The default thread count: the node's cores, at most 4 (past that the disk, not the AEAD, bounds it). */
export function defaultSealingThreads(): number {
  return Math.min(4, os.availableParallelism());
}

interface Pending { job: RangeJob; resolve: () => void; reject: (err: Error) => void }

export class SealingThreads {
  private readonly idle: Worker[] = [];
  private readonly busy = new Map<Worker, Pending>();
  private readonly queue: Pending[] = [];
  private started = 0;
  private closed = false;

  /** `threads` 0 runs every range on the calling thread (tests, and nodes that want no workers). */
  constructor(readonly threads: number = defaultSealingThreads()) {}

  /** How many ranges a file of `chunks` chunks is split into. */
  ranges(chunks: number): number {
    return Math.max(1, Math.min(this.threads, chunks));
  }

  /** Runs every job; settles once all have, and throws the first failure (a SealError over others). */
  async run(jobs: RangeJob[]): Promise<void> {
    const results = await Promise.allSettled(jobs.map((job) => this.threads === 0 ? runRange(job) : this.submit(job)));
    const failures = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => r.reason as Error);
    if (failures.length) throw failures.find((e) => e instanceof SealError) ?? failures[0];
  }

  /** Ends the threads; jobs still queued fail. */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.queue.splice(0)) p.reject(new Error("sealing threads closed"));
    await Promise.all([...this.idle.splice(0), ...this.busy.keys()].map((w) => w.terminate()));
  }

  private submit(job: RangeJob): Promise<void> {
    if (this.closed) return Promise.reject(new Error("sealing threads closed"));
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ job, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.queue.length) {
      const worker = this.idle.pop() ?? (this.started < this.threads ? this.spawn() : undefined);
      if (!worker) return;
      const pending = this.queue.shift()!;
      this.busy.set(worker, pending);
      // A thread with a job keeps the process alive (its caller awaits nothing else); an idle one does not.
      worker.ref();
      worker.postMessage(pending.job);
    }
  }

  private spawn(): Worker {
    this.started++;
    const worker = new Worker(new URL("./sealing-thread.js", import.meta.url));
    worker.on("message", (reply: RangeReply) => {
      const pending = this.busy.get(worker);
      this.busy.delete(worker);
      this.idle.push(worker);
      worker.unref();
      if (pending) {
        if (reply.ok) pending.resolve();
        else pending.reject(errorFrom(reply));
      }
      this.pump();
    });
    // A thread that dies (out of memory, a bug) fails its job, not the process; the next job gets a new one.
    const gone = (err: Error) => {
      const pending = this.busy.get(worker);
      this.busy.delete(worker);
      const i = this.idle.indexOf(worker);
      if (i >= 0) this.idle.splice(i, 1);
      this.started--;
      pending?.reject(err);
      if (!this.closed) this.pump();
    };
    worker.on("error", gone);
    worker.on("exit", (code) => { if (this.busy.has(worker) || this.idle.includes(worker)) gone(new Error(`sealing thread exited (${code})`)); });
    return worker;
  }
}
