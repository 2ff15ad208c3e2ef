// Token buckets keyed by caller: unauthenticated attempts per source address (each new token costs
// the API server a TokenReview) and requests per authenticated identity. Bounded in memory.
import { TorporError } from "../contract/errors.js";

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly perSecond: number, private readonly burst: number, private readonly maxKeys = 50_000) {}

  /** Takes one token for `key` or throws 429 with how long to wait. */
  take(key: string, what: string): void {
    if (this.perSecond <= 0) return;
    const now = Date.now();
    const b = this.buckets.get(key) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    this.buckets.delete(key);
    this.buckets.set(key, b);
    while (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
    if (b.tokens < 1) {
      const retry = Math.ceil((1 - b.tokens) / this.perSecond);
      throw new TorporError("rate_limited", `too many ${what}; retry in ${retry} s`, { retryAfterSeconds: retry });
    }
    b.tokens -= 1;
  }

  /** Gives back what `take` took (the attempt turned out legitimate). */
  refund(key: string): void {
    const b = this.buckets.get(key);
    if (b) b.tokens = Math.min(this.burst, b.tokens + 1);
  }
}
