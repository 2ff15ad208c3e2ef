// A bounded LRU of access decisions. Denials live in their own, smaller LRU: a flood of junk
// tokens can evict only other denials, never the allowed decisions that keep real users fast.
export class DecisionCache<T> {
  private readonly allowed: Map<string, { until: number; value: T }>;
  private readonly denied: Map<string, { until: number; error: Error }>;

  constructor(private readonly ttlMs: number, private readonly maxAllowed = 10_000, private readonly maxDenied = 1_000) {
    this.allowed = new Map();
    this.denied = new Map();
  }

  get(key: string): { value: T } | { error: Error } | undefined {
    const now = Date.now();
    for (const m of [this.allowed, this.denied] as Array<Map<string, { until: number; value?: T; error?: Error }>>) {
      const hit = m.get(key);
      if (!hit) continue;
      m.delete(key);
      if (hit.until <= now) continue;
      m.set(key, hit); // most recently used last
      return hit.error ? { error: hit.error } : { value: hit.value as T };
    }
    return undefined;
  }

  allow(key: string, value: T): void { this.put(this.allowed, this.maxAllowed, key, { until: Date.now() + this.ttlMs, value }); }
  deny(key: string, error: Error): void { this.put(this.denied, this.maxDenied, key, { until: Date.now() + this.ttlMs, error }); }

  get size(): { allowed: number; denied: number } { return { allowed: this.allowed.size, denied: this.denied.size }; }

  private put<V>(m: Map<string, V>, max: number, key: string, v: V): void {
    m.delete(key);
    m.set(key, v);
    while (m.size > max) m.delete(m.keys().next().value as string);
  }
}
