// The sealed state file's chunks, and the loops that seal or open a range of them. Every chunk but
// the last holds exactly CHUNK bytes of plaintext, so chunk i sits at a fixed offset in both files
// and ranges can be sealed or opened by separate threads (sealing-threads.ts) without a scan.
//
// Layout: header (sealing.ts), then per chunk: u32 plaintext length, ciphertext, 16-byte tag.
// Each chunk's nonce is the file's random 8-byte prefix and the chunk index; its associated data is
// the file's identity, the index and a last-chunk flag, so chunks cannot be reordered, dropped,
// truncated or moved to another file.
import { createCipheriv, createDecipheriv } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import { openRegular } from "./volume-file.js";

export const CHUNK = 1 << 20;
export const TAG = 16;
const LEN = 4;
export const SEALED_CHUNK = LEN + CHUNK + TAG;
/**
 * Each cipher update() allocates its output. A 1 MiB output is above glibc's mmap threshold (the
 * runtime fixes it at 128 KiB, process-tuning.ts), so every chunk was a fresh mmap whose pages fault
 * in and are unmapped again: that held the AEAD to about 0.43 GB/s. 64 KiB pieces come from the
 * heap, still warm in cache: about 3 GB/s on the same core.
 */
const PIECE = 64 << 10;

/** A sealed file that does not open: tampered, truncated, transplanted, or sealed with an unknown key. */
export class SealError extends Error {}

/** One thread's share of a file: chunks [from, to). Plain data, so it crosses to a worker thread. */
export interface RangeJob {
  op: "seal" | "open";
  key: Uint8Array;
  prefix: Uint8Array;
  fileAad: Uint8Array;
  src: string;
  dst: string;
  from: number;
  to: number;
  chunks: number;
  /** Bytes before chunk 0 in the sealed file. */
  headerBytes: number;
  plainBytes: number;
}

export function chunkCount(plainBytes: number): number {
  return Math.max(1, Math.ceil(plainBytes / CHUNK));
}

/** The size of the sealed file for `plainBytes` of plaintext. */
export function sealedSize(plainBytes: number, headerBytes: number): number {
  const chunks = chunkCount(plainBytes);
  return headerBytes + (chunks - 1) * SEALED_CHUNK + LEN + (plainBytes - (chunks - 1) * CHUNK) + TAG;
}

/** The plaintext size a sealed file of `sealedBytes` holds, or a SealError when no such file exists. */
export function plainSizeOf(sealedBytes: number, headerBytes: number): { chunks: number; plainBytes: number } {
  const body = sealedBytes - headerBytes;
  if (body < LEN + TAG) throw new SealError("truncated: the last chunk is missing");
  const chunks = Math.ceil(body / SEALED_CHUNK);
  const lastLen = body - (chunks - 1) * SEALED_CHUNK - LEN - TAG;
  if (lastLen < 0) throw new SealError("truncated chunk");
  return { chunks, plainBytes: (chunks - 1) * CHUNK + lastLen };
}

function chunkAad(fileAad: Uint8Array, index: number, last: boolean): Buffer {
  const b = Buffer.alloc(fileAad.length + 5);
  b.set(fileAad);
  b.writeUInt32BE(index, fileAad.length);
  b[fileAad.length + 4] = last ? 1 : 0;
  return b;
}

function chunkNonce(prefix: Uint8Array, index: number): Buffer {
  const n = Buffer.alloc(12);
  n.set(prefix.subarray(0, 8));
  n.writeUInt32BE(index, 8);
  return n;
}

function pieces(cipher: { update(data: Buffer): Buffer }, data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let p = 0; p < data.length; p += PIECE) out.push(cipher.update(data.subarray(p, p + PIECE)));
  return out;
}

/**
 * An overlapped read or write can fail (ENOSPC) while the loop awaits something else: it is
 * awaited later, where its error is thrown, but it must have a handler from the start, or Node
 * kills the process for an unhandled rejection (a full disk crashed the runtime this way).
 */
function observed<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

async function readFull(fh: FileHandle, buf: Buffer, length: number, position: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

const plainLength = (job: RangeJob, i: number) => (i < job.chunks - 1 ? CHUNK : job.plainBytes - (job.chunks - 1) * CHUNK);

/** Seals chunks [from, to) of the plaintext `src` into their places in `dst` (created, header written). */
export async function sealRange(job: RangeJob): Promise<void> {
  const { fh: input } = await openRegular(job.src);
  const output = await open(job.dst, "r+");
  try {
    const bufs = [Buffer.allocUnsafeSlow(CHUNK), Buffer.allocUnsafeSlow(CHUNK)] as const;
    const read = (i: number) => observed(readFull(input, bufs[i % 2]!, plainLength(job, i), i * CHUNK));
    // Three things overlap: the next chunk's read, this chunk's encryption, the previous write.
    let next = read(job.from);
    let writing: Promise<unknown> = Promise.resolve();
    for (let i = job.from; i < job.to; i++) {
      const want = plainLength(job, i);
      // The staged plaintext changed size under us: nothing we could seal would be the state.
      if (await next !== want) throw new Error(`staged state file is shorter than ${job.plainBytes} bytes`);
      const cipher = createCipheriv("aes-256-gcm", job.key, chunkNonce(job.prefix, i));
      cipher.setAAD(chunkAad(job.fileAad, i, i === job.chunks - 1));
      const len = Buffer.alloc(LEN);
      len.writeUInt32BE(want);
      const body = [len, ...pieces(cipher, bufs[i % 2]!.subarray(0, want)), cipher.final(), cipher.getAuthTag()];
      await writing; // the buffer read next is the one the previous write no longer needs
      if (i + 1 < job.to) next = read(i + 1);
      writing = observed(output.writev(body, job.headerBytes + i * SEALED_CHUNK));
    }
    await writing;
  } finally {
    await input.close();
    await output.close();
  }
}

/** Opens chunks [from, to) of the sealed `src` into their places in the plaintext `dst`; SealError on any mismatch. */
export async function openRange(job: RangeJob): Promise<void> {
  const { fh: input } = await openRegular(job.src);
  const output = await open(job.dst, "r+");
  try {
    const bufs = [Buffer.allocUnsafeSlow(SEALED_CHUNK), Buffer.allocUnsafeSlow(SEALED_CHUNK)] as const;
    const read = (i: number) => observed(readFull(input, bufs[i % 2]!, LEN + plainLength(job, i) + TAG, job.headerBytes + i * SEALED_CHUNK));
    // The next chunk's read overlaps this one's decryption and the previous plaintext write.
    let next = read(job.from);
    let writing: Promise<unknown> = Promise.resolve();
    for (let i = job.from; i < job.to; i++) {
      const want = plainLength(job, i);
      const body = bufs[i % 2]!;
      if (await next !== LEN + want + TAG) throw new SealError("truncated chunk");
      if (i + 1 < job.to) next = read(i + 1);
      if (body.readUInt32BE(0) !== want) throw new SealError("corrupt chunk length");
      const decipher = createDecipheriv("aes-256-gcm", job.key, chunkNonce(job.prefix, i));
      decipher.setAAD(chunkAad(job.fileAad, i, i === job.chunks - 1));
      decipher.setAuthTag(body.subarray(LEN + want, LEN + want + TAG));
      let plain: Buffer[];
      try { plain = [...pieces(decipher, body.subarray(LEN, LEN + want)), decipher.final()]; } catch {
        throw new SealError(`chunk ${i} does not authenticate (tampered, truncated, or sealed for another session, namespace or model)`);
      }
      // `plain` owns its bytes, so its write may outlive this chunk's buffer.
      await writing;
      writing = observed(output.writev(plain, i * CHUNK));
    }
    await Promise.all([writing, next]);
  } finally {
    await input.close();
    await output.close();
  }
}

export const runRange = (job: RangeJob): Promise<void> => (job.op === "seal" ? sealRange(job) : openRange(job));
