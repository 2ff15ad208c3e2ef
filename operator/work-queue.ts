// A per-key work queue in the style of client-go's: a key queued many times is processed once,
// never by two workers at once, and failures come back with per-key exponential backoff.
export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private waiters: Array<() => void> = [];
  private shuttingDown = false;

  constructor(private readonly baseDelayMs = 200, private readonly maxDelayMs = 30_000) {}

  get depth(): number { return this.queue.length; }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return; // re-queued by done()
    this.queue.push(key);
    this.waiters.shift()?.();
  }

  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    const existing = this.timers.get(key);
    if (existing) clearTimeout(existing);
    this.timers.set(key, setTimeout(() => { this.timers.delete(key); this.add(key); }, ms));
  }

  addRateLimited(key: string, minDelayMs = 0): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = Math.max(minDelayMs, Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** n));
    this.addAfter(key, delay);
    return delay;
  }

  forget(key: string): void { this.failures.delete(key); }

  async get(): Promise<string | undefined> {
    while (this.queue.length === 0) {
      if (this.shuttingDown) return undefined;
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const key = this.queue.shift()!;
    this.dirty.delete(key);
    this.processing.add(key);
    return key;
  }

  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.queue.push(key);
      this.waiters.shift()?.();
    }
  }

  shutdown(): void {
    this.shuttingDown = true;
    for (const t of this.timers.values()) clearTimeout(t);
    for (const w of this.waiters.splice(0)) w();
  }
}
