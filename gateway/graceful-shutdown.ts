// How the gateway leaves on SIGTERM (a rolling update, a drain, a scale-down) without cutting the
// answers it is streaming.
//
// Its requests run long: a generation streams for as long as the model takes to write max_tokens,
// and a request that wakes a pool from zero waits for a pod first. Kubernetes sends SIGTERM and
// takes the pod out of the Service's endpoints at the same time, and the load balancers and
// kube-proxy on every node learn it a little later: a server that stops accepting at once refuses
// the connections still routed to it, and one that ends what it is serving after a few seconds cuts
// the answers under way (the gateway did both: 10 s, then exit).
import type { Server } from "node:http";
import type { NextFunction, Request, Response } from "express";
import type { Logger } from "../common/logger.js";

export interface ShutdownTimes {
  /** After SIGTERM, connections are still accepted this long, while the endpoints change. */
  drainMs: number;
  /** Then requests in flight may run this long before the process exits anyway. */
  inFlightMs: number;
}

export class GracefulShutdown {
  private draining = false;

  constructor(private readonly times: ShutdownTimes, private readonly log: Logger, private readonly exit: (code: number) => void = process.exit) {}

  /** Not ready once draining: /readyz answers 503, so the pod leaves every endpoint list. */
  get ready(): boolean {
    return !this.draining;
  }

  /** While draining, each response asks its client to open its next connection elsewhere. */
  readonly closeConnections = (_req: Request, res: Response, next: NextFunction): void => {
    if (this.draining) res.setHeader("connection", "close");
    next();
  };

  /**
   * Starts leaving (once): drain, then stop accepting and wait for the requests in flight. SIGINT
   * (a Ctrl-C: no endpoints to leave) skips the drain, and a second one exits at once.
   */
  begin(server: Server, signal: string): void {
    if (this.draining) {
      if (signal === "SIGINT") this.exit(0);
      return;
    }
    this.draining = true;
    const inFlightMs = this.times.inFlightMs;
    const drainMs = signal === "SIGINT" ? 0 : this.times.drainMs;
    this.log.info({ signal, drainMs, inFlightMs }, "shutting down: accepting while the endpoints change, then finishing the requests in flight");
    setTimeout(() => {
      server.close(() => { this.log.info("requests in flight finished"); this.exit(0); });
      // A keep-alive connection whose request began before the drain goes idle after its
      // response: closed within a second rather than at its keep-alive timeout.
      server.closeIdleConnections();
      setInterval(() => server.closeIdleConnections(), 1000).unref();
      setTimeout(() => {
        this.log.warn({ inFlightMs }, "requests still in flight at the shutdown deadline; exiting");
        this.exit(0);
      }, inFlightMs).unref();
    }, drainMs).unref();
  }
}
