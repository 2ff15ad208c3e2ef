// What the runtime's HTTP routes need, and the wake headers both route sets send.
import type { Response } from "express";
import type { Logger } from "../../common/logger.js";
import type { Wake } from "../../contract/runtime-api.js";
import type { RuntimeMetrics } from "../metrics.js";
import type { ModelHost } from "../model/model-host.js";
import type { SessionManager } from "../sessions/session-manager.js";
import type { HibernationStore } from "../storage/hibernation-store.js";

export interface ApiDeps {
  manager: SessionManager;
  store: HibernationStore;
  host: ModelHost;
  metrics: RuntimeMetrics;
  log: Logger;
  token: string;
  maxBodyBytes: number;
  defaultMaxTokens: number;
  podName: string;
  nodeName: string;
  /** The `model` OpenAI responses name (RuntimeConfig.modelName); unset, the GGUF's own name. */
  modelName?: string;
}

export const REHYDRATED_HEADER = "x-torpor-rehydrated";
export const REHYDRATE_MS_HEADER = "x-torpor-rehydrate-ms";

export function wakeHeaders(res: Response, wake: Wake): void {
  res.setHeader(REHYDRATED_HEADER, String(wake.rehydrated));
  if (wake.rehydrateMs !== undefined) res.setHeader(REHYDRATE_MS_HEADER, wake.rehydrateMs.toFixed(1));
}

