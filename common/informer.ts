// A watch-backed cache that keeps watching: the client's informer does not always restart its
// watch after an error, so every informer in torpor is made here and restarts itself.
import { makeInformer, type Informer, type KubeConfig, type KubernetesObject, type ListPromise } from "@kubernetes/client-node";
import type { Logger } from "./logger.js";

export interface ObjectHandlers<T> {
  upsert(obj: T): void;
  remove(obj: T): void;
}

export class RestartingInformer<T> {
  private readonly informer: Informer<KubernetesObject>;
  private stopped = false;

  constructor(kc: KubeConfig, path: string, list: () => Promise<unknown>, handlers: ObjectHandlers<T>, log: Logger, labelSelector?: string) {
    this.informer = makeInformer<KubernetesObject>(kc, path, list as ListPromise<KubernetesObject>, labelSelector);
    this.informer.on("add", (o) => handlers.upsert(o as T));
    this.informer.on("update", (o) => handlers.upsert(o as T));
    this.informer.on("delete", (o) => handlers.remove(o as T));
    this.informer.on("error", (err: unknown) => {
      log.warn({ err: String(err), path }, "watch failed; restarting");
      if (!this.stopped) setTimeout(() => { if (!this.stopped) void this.informer.start().catch(() => undefined); }, 1000);
    });
  }

  start(): Promise<void> { return this.informer.start(); }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.informer.stop();
  }
}
