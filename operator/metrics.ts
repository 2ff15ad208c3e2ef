import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconciles = new Counter({ name: "torpor_operator_reconciles_total", help: "Reconciles by result.", labelNames: ["result"], registers: [this.registry] });
  readonly reconcileDuration = new Histogram({
    name: "torpor_operator_reconcile_duration_seconds", help: "Time per reconcile.", registers: [this.registry],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  readonly queueDepth = new Gauge({ name: "torpor_operator_queue_depth", help: "Keys waiting in the work queue.", registers: [this.registry] });
  readonly transitions = new Counter({ name: "torpor_operator_transitions_total", help: "Runtime transitions requested, by kind.", labelNames: ["transition"], registers: [this.registry] });
  readonly poolScalings = new Counter({ name: "torpor_operator_pool_scalings_total", help: "Runtime pools scaled by the operator, by model and action (to_zero, wake, resize).", labelNames: ["model", "action"], registers: [this.registry] });
  readonly sweptFiles = new Counter({ name: "torpor_operator_swept_files_total", help: "Hibernation files removed because no session owns them.", registers: [this.registry] });
  constructor(defaults = true) { if (defaults) collectDefaultMetrics({ register: this.registry }); }
}
