// Typed errors with a stable machine-readable code, an HTTP status and a message a user can act on.

export type ErrorCode =
  | "bad_request"
  | "payload_too_large"
  | "unauthorized"
  | "forbidden"
  | "session_not_found"
  | "model_not_found"
  | "invalid_path"
  | "state_rejected"
  | "context_length_exceeded"
  | "capacity_exhausted"
  | "shutting_down"
  | "storage_failed"
  | "session_deleted"
  | "session_invalid"
  | "stale_epoch"
  | "wake_timeout"
  | "pool_stopped"
  | "rate_limited"
  | "runtime_unavailable"
  | "upstream_unavailable"
  | "client_closed"
  | "internal";

const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  payload_too_large: 413,
  unauthorized: 401,
  forbidden: 403,
  session_not_found: 404,
  model_not_found: 404,
  invalid_path: 400,
  state_rejected: 422,
  context_length_exceeded: 400,
  capacity_exhausted: 503,
  shutting_down: 503,
  storage_failed: 507,
  session_deleted: 409,
  session_invalid: 409,
  stale_epoch: 409,
  wake_timeout: 503,
  pool_stopped: 503,
  rate_limited: 429,
  runtime_unavailable: 502,
  upstream_unavailable: 503,
  // nginx's "client closed request": nobody reads it, but logs and the error metric tell it from a fault.
  client_closed: 499,
  internal: 500,
};

export class TorporError extends Error {
  readonly status: number;
  constructor(readonly code: ErrorCode, message: string, readonly details?: Record<string, unknown>) {
    super(message);
    this.name = "TorporError";
    this.status = STATUS[code];
  }
  toJSON(): { error: { code: ErrorCode; message: string; details?: Record<string, unknown> } } {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

/**
 * Why a hibernation file was refused; kept stable because status conditions and alerts key on it.
 * `model_mismatch` is no longer raised (a session's own file from another model replays its history).
 */
export type StateRejectReason = "manifest_invalid" | "format_unsupported" | "model_mismatch" | "truncated" | "checksum_mismatch" | "load_failed"
  /** Sealed files: does not authenticate (tampered, edited, transplanted, unknown key); plaintext where sealing is required; written by a placement older than the reader accepts. */
  | "seal_invalid" | "unsealed" | "epoch_too_old"
  /** A manifest or state that is not a regular file: a symlink, a FIFO, a device (planted by someone with write access to the volume). */
  | "unexpected_file";

export class StateRejectedError extends TorporError {
  constructor(readonly reason: StateRejectReason, message: string, readonly file: string) {
    super("state_rejected", `hibernation state refused (${reason}): ${message}; the file is kept for inspection at <volume>/${file}`, { reason, file });
  }
}

export function asTorporError(err: unknown): TorporError {
  if (err instanceof TorporError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TorporError("internal", message);
}

/**
 * This runtime's copy of the session belongs to an older placement: the operator has placed it
 * elsewhere (a newer epoch claimed it on the volume). Nothing it holds may be served or saved.
 */
export class StaleEpochError extends TorporError {
  constructor(readonly epoch: number, readonly newer: number, what: string) {
    super("stale_epoch", `${what}: this runtime holds placement epoch ${epoch} but epoch ${newer} now owns the session (it moved to another runtime pod)`, { epoch, newer });
  }
}
