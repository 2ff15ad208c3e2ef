// Prometheus metrics of one runtime process, on its own registry so tests can run several.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class RuntimeMetrics {
  readonly registry = new Registry();
  readonly hibernateDuration = new Histogram({
    name: "torpor_runtime_hibernate_duration_seconds", help: "Time to serialise a session and free its context.",
    buckets: DURATION_BUCKETS, registers: [this.registry], labelNames: ["reason"],
  });
  readonly rehydrateDuration = new Histogram({
    name: "torpor_runtime_rehydrate_duration_seconds", help: "Time to verify and restore a hibernated session.",
    buckets: DURATION_BUCKETS, registers: [this.registry],
  });
  readonly bytesWritten = new Counter({
    name: "torpor_runtime_hibernate_written_bytes_total", help: "State bytes written by hibernations.", registers: [this.registry],
  });
  readonly bytesRead = new Counter({
    name: "torpor_runtime_rehydrate_read_bytes_total", help: "State bytes read by rehydrations.", registers: [this.registry],
  });
  /** Set by the session manager: counts are read at scrape time instead of tracked on every change. */
  sessionCounts?: () => Record<string, number>;
  readonly sessions: Gauge<"residency"> = new Gauge({
    name: "torpor_runtime_sessions", help: "Sessions known to this runtime, by residency.", labelNames: ["residency"], registers: [this.registry],
    collect: () => {
      for (const [residency, n] of Object.entries(this.sessionCounts?.() ?? {})) this.sessions.set({ residency }, n);
    },
  });
  readonly evictions = new Counter({
    name: "torpor_runtime_evictions_total", help: "Sessions hibernated by the runtime itself, by reason (lru, preempt, idle, shutdown).",
    labelNames: ["reason"], registers: [this.registry],
  });
  readonly contextHandovers = new Counter({
    name: "torpor_runtime_context_handovers_total", help: "Contexts reused from an evicted session instead of being freed and allocated again.",
    registers: [this.registry],
  });
  readonly contextReuses = new Counter({
    name: "torpor_runtime_context_reuses_total", help: "Sessions given a sequence of a context allocated before they asked (kept after its last session, or a spare), instead of a newly allocated context.",
    registers: [this.registry],
  });
  readonly spareContextsAllocated = new Counter({
    name: "torpor_runtime_spare_contexts_allocated_total", help: "Contexts allocated ahead of need (TORPOR_SPARE_CONTEXTS), at start-up and after a session took one.",
    registers: [this.registry],
  });
  /** Set by the context pool, read at scrape time. */
  pooledContexts?: () => { leased: number; idle: number };
  readonly contexts: Gauge<"state"> = new Gauge({
    name: "torpor_runtime_contexts", help: "llama contexts allocated, by state (leased: a session uses one of its sequences; idle: kept for the grace period, or a spare).",
    labelNames: ["state"], registers: [this.registry],
    collect: () => {
      for (const [state, n] of Object.entries(this.pooledContexts?.() ?? {})) this.contexts.set({ state }, n);
    },
  });
  readonly errors = new Counter({
    name: "torpor_runtime_errors_total", help: "Errors returned, by stable error code.", labelNames: ["code"], registers: [this.registry],
  });
  readonly checkpointDuration = new Histogram({
    name: "torpor_runtime_checkpoint_duration_seconds", help: "Time to write a checkpoint of a resident session (it stays in memory).",
    buckets: DURATION_BUCKETS, registers: [this.registry],
  });
  readonly replays = new Counter({
    name: "torpor_runtime_state_replays_total", help: "Rehydrates that could not load the saved state and evaluated the saved history instead, by reason (model_changed, runtime_version, load_failed).",
    labelNames: ["reason"], registers: [this.registry],
  });
  readonly restoresNotReused = new Counter({
    name: "torpor_runtime_restores_not_reused_total", help: "Rehydrates whose next evaluation did not reuse the restored tokens the prompt shared (a restore that did nothing).",
    registers: [this.registry],
  });
  readonly generatedTokens = new Counter({
    name: "torpor_runtime_generated_tokens_total", help: "Tokens generated.", registers: [this.registry],
  });

  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry });
  }
}
