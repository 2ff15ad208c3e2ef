// Leader election on a coordination.k8s.io Lease, so two operator replicas never both act.
// Optimistic concurrency (resourceVersion) decides races; a leader that cannot renew in time
// stops acting (the caller exits, as controller-runtime does) rather than risk a split brain.
import { CoordinationV1Api, type KubeConfig, type V1Lease } from "@kubernetes/client-node";
import type { Logger } from "../common/logger.js";

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewEveryMs?: number;
}

const microTime = (d: Date) => d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

export class LeaderElector {
  private readonly api: CoordinationV1Api;
  private timer?: NodeJS.Timeout;
  private leading = false;
  private lastRenew = 0;
  private stopped = false;

  constructor(kc: KubeConfig, private readonly o: LeaderElectionOptions, private readonly log: Logger) {
    this.api = kc.makeApiClient(CoordinationV1Api);
  }

  get isLeader(): boolean { return this.leading; }

  /** Resolves when this replica leads; onLost fires if it stops leading. */
  run(onLost: () => void): Promise<void> {
    const duration = this.o.leaseDurationMs ?? 15_000;
    const every = this.o.renewEveryMs ?? 2_000;
    return new Promise((resolve) => {
      let inFlight = false;
      const tick = async () => {
        // Leadership ends at the deadline whatever the API server does: a renewal that hangs (a
        // partition, a stuck connection) must not keep a leader acting after its lease expired.
        if (this.leading && Date.now() - this.lastRenew > duration * 0.8) {
          this.leading = false;
          this.log.error("lost leadership: the lease was not renewed in time");
          onLost();
          return;
        }
        if (inFlight) return;
        inFlight = true;
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<boolean>((r) => { timer = setTimeout(() => r(false), Math.max(500, duration / 3)); });
        try {
          const ok = await Promise.race([
            this.tryAcquireOrRenew(duration).catch((err) => { this.log.warn({ err: String(err) }, "lease update failed"); return false; }),
            timeout,
          ]);
          if (ok && !this.stopped) {
            this.lastRenew = Date.now();
            if (!this.leading) { this.leading = true; this.log.info({ identity: this.o.identity }, "became leader"); resolve(); }
          }
        } finally {
          clearTimeout(timer);
          inFlight = false;
        }
      };
      void tick();
      this.timer = setInterval(() => void tick(), every);
    });
  }

  private async tryAcquireOrRenew(durationMs: number): Promise<boolean> {
    const { namespace, name, identity } = this.o;
    const now = new Date();
    let lease: V1Lease;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if ((err as { code?: number }).code !== 404) throw err;
      await this.api.createNamespacedLease({ namespace, body: {
        metadata: { name, namespace },
        spec: { holderIdentity: identity, leaseDurationSeconds: Math.ceil(durationMs / 1000), acquireTime: microTime(now) as unknown as Date, renewTime: microTime(now) as unknown as Date, leaseTransitions: 0 },
      } });
      return true;
    }
    const spec = lease.spec ?? {};
    const renewed = spec.renewTime ? new Date(spec.renewTime as unknown as string).getTime() : 0;
    const expired = renewed + (spec.leaseDurationSeconds ?? 15) * 1000 < now.getTime();
    // No holder: released by a leader that stopped (release()), free at once.
    if (spec.holderIdentity && spec.holderIdentity !== identity && !expired) return false;
    const transitions = (spec.leaseTransitions ?? 0) + (spec.holderIdentity === identity ? 0 : 1);
    await this.api.replaceNamespacedLease({ name, namespace, body: {
      ...lease,
      spec: {
        holderIdentity: identity, leaseDurationSeconds: Math.ceil(durationMs / 1000), leaseTransitions: transitions,
        acquireTime: microTime(spec.holderIdentity === identity && spec.acquireTime ? new Date(spec.acquireTime as unknown as string) : now) as unknown as Date,
        renewTime: microTime(now) as unknown as Date,
      },
    } });
    return true;
  }

  stop(): void { this.stopped = true; if (this.timer) clearInterval(this.timer); }

  /**
   * Stops renewing and gives the lease up, as client-go's ReleaseOnCancel does: a standby takes
   * over at its next try instead of after the lease runs out (15 s in which no session is placed
   * or moved, on every rolling update of the operator). Call only once nothing acts any more.
   * Best effort: if it fails, the lease simply expires.
   */
  async release(): Promise<void> {
    this.stop();
    if (!this.leading) return;
    this.leading = false;
    const { namespace, name, identity } = this.o;
    try {
      const lease = await this.api.readNamespacedLease({ name, namespace });
      if (lease.spec?.holderIdentity !== identity) return;
      const now = microTime(new Date()) as unknown as Date;
      await this.api.replaceNamespacedLease({ name, namespace, body: {
        ...lease,
        spec: { ...lease.spec, holderIdentity: undefined, leaseDurationSeconds: 1, renewTime: now },
      } });
      this.log.info({ identity }, "released leadership");
    } catch (err) {
      this.log.warn({ err: String(err) }, "could not release the lease; it expires on its own");
    }
  }
}
