/**
 * Runs tasks one at a time in arrival order. Each session owns one, so generations,
 * hibernates and rehydrates on a session never overlap and requests keep their order.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;

  /** Tasks queued or running. */
  get depth(): number { return this.pending; }

  run<T>(task: () => Promise<T>): Promise<T> {
    this.pending++;
    const result = this.tail.then(task);
    this.tail = result.then(() => undefined, () => undefined).finally(() => { this.pending--; });
    return result;
  }

  /** Resolves once everything queued so far has finished. */
  async drain(): Promise<void> {
    while (this.pending > 0) await this.tail;
  }
}
