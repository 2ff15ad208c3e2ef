import { pino, type Logger } from "pino";

export type { Logger };

/** JSON lines on stdout; every session-scoped line carries namespace and name. */
export function createLogger(component: string, level = process.env.TORPOR_LOG_LEVEL ?? "info"): Logger {
  return pino({ level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime });
}
