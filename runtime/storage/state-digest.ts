// Checksums of an unsealed state file. Hibernate writes xxHash64 (stateXxh64), which a rehydrate
// checks. Files of releases before it carry a SHA-256 alone (stateSha256), still checked when they
// open; the release before this one wrote both and checks xxHash64 where it is there, so it opens
// files written here during a rolling update. Unsealed files guard against accidents (a bit flip,
// a truncated copy), not forgery (anyone who can write the volume can recompute either: sealing is
// the answer to that), and xxHash64 in WebAssembly reads a 68 MB state in about 11 ms where
// SHA-256 takes 60 ms here: dropping it made a 69 MB hibernate 54 ms instead of 83.
import { createHash } from "node:crypto";
import { createXXHash64 } from "hash-wasm";
import type { FileHandle } from "node:fs/promises";
import { openRegular } from "./volume-file.js";

export interface StateDigests {
  sha256?: string;
  xxh64?: string;
}

/**
 * Reads the file once and returns the digests asked for. Two 1 MiB buffers, reused: the next read
 * runs on the thread pool while this one is hashed, which keeps hashing at its CPU bound. A read
 * stream would leave one garbage Buffer per chunk (tens of MiB for a large state) in RSS until V8
 * collects it, eating the memory a hibernate just freed.
 */
export async function digestFile(p: string, want: { sha256?: boolean; xxh64?: boolean }): Promise<StateDigests> {
  const { fh } = await openRegular(p);
  try {
    return await digestHandle(fh, want);
  } finally {
    await fh.close();
  }
}

/** The same over a file already open, from its first byte (positioned reads: the handle's own position is left alone). */
export async function digestHandle(fh: FileHandle, want: { sha256?: boolean; xxh64?: boolean }): Promise<StateDigests> {
  const sha = want.sha256 ? createHash("sha256") : undefined;
  const xx = want.xxh64 ? await createXXHash64() : undefined;
  xx?.init();
  const size = 1 << 20;
  const bufs = [Buffer.allocUnsafeSlow(size), Buffer.allocUnsafeSlow(size)] as const;
  let pending: Promise<{ bytesRead: number }> | undefined;
  let at = 0;
  try {
    let i = 0;
    pending = fh.read(bufs[0], 0, size, at);
    for (;;) {
      const { bytesRead } = await pending;
      pending = undefined;
      if (bytesRead === 0) break;
      at += bytesRead;
      const current = bufs[i]!;
      i ^= 1;
      pending = fh.read(bufs[i]!, 0, size, at);
      const chunk = current.subarray(0, bytesRead);
      sha?.update(chunk);
      xx?.update(chunk);
    }
  } finally {
    await pending?.catch(() => undefined); // never let the caller close the handle under a read in flight
  }
  return { ...(sha ? { sha256: sha.digest("hex") } : {}), ...(xx ? { xxh64: xx.digest("hex") } : {}) };
}
