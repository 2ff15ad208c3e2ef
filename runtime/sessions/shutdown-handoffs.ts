// The sessions this runtime's SIGTERM saved from memory, until the operator has asked for each one
// (its hand-off). The save alone is not enough: an operator that reaches the pod only after the
// runtime has exited learns nothing (the connection is refused), and a pool left with no pod (scaled
// to zero by hand) said InMemory for sessions nothing held, until a pod came back. So the runtime
// keeps answering a few seconds after the save, until every such hand-off has been asked for.

export class ShutdownHandOffs {
  private readonly waiting = new Set<string>();
  private wake?: () => void;

  /** Saved by the shutdown while placed by an operator (epoch > 0): its hand-off is awaited. */
  saved(key: string): void { this.waiting.add(key); }

  /** Asked for (a hand-off), or no longer ours to report (dropped, deleted). */
  settled(key: string): void {
    if (this.waiting.delete(key) && this.waiting.size === 0) this.wake?.();
  }

  /** Resolves once every saved session is settled, or after `timeoutMs`: what was left unasked. */
  async collected(timeoutMs: number): Promise<{ asked: number; unasked: string[] }> {
    const total = this.waiting.size;
    if (total > 0 && timeoutMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
      this.wake = undefined;
    }
    const unasked = [...this.waiting];
    return { asked: total - unasked.length, unasked };
  }
}
