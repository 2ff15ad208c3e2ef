// Sealed hibernation files: whoever can read or write the shared volume can neither read a
// conversation nor make a runtime load an altered, transplanted or foreign one.
//
// Keys: a master key per key id from the operator's Secret (TORPOR_SEALING_KEYS="id:base64,...",
// the first seals new files, every listed one opens old ones: rotation without re-encryption);
// each namespace gets its own key, HKDF-SHA256(master, "torpor.dev/sealing", "namespace:<ns>").
// State files: a header (magic, key id, random nonce prefix), then AES-256-GCM in 1 MiB chunks
// (sealed-chunks.ts) bound to the file's identity (namespace, name, path, model fingerprint, state
// file name), sealed and opened in ranges on several threads (sealing-threads.ts). Manifests (they
// hold the chat history) are one AEAD message bound to the same identity.
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { open, stat } from "node:fs/promises";
import { TorporError } from "../../contract/errors.js";
import { chunkCount, plainSizeOf, SealError, sealedSize, type RangeJob } from "./sealed-chunks.js";
import type { SealingThreads } from "./sealing-threads.js";
import { openRegular } from "./volume-file.js";

export { SealError };
const MAGIC = Buffer.from("TORPORS1");

export interface SealIdentity { namespace: string; name: string; path: string; modelFingerprint: string }

export class SealingKeys {
  private readonly masters: Map<string, Buffer>;
  private readonly derived = new Map<string, Buffer>();
  readonly currentId: string;

  constructor(keys: Array<{ id: string; key: Buffer }>) {
    if (keys.length === 0) throw new TorporError("bad_request", "sealing needs at least one key");
    for (const k of keys) {
      if (k.key.length < 32) throw new TorporError("bad_request", `sealing key "${k.id}" is ${k.key.length} bytes; at least 32 are needed`);
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(k.id)) throw new TorporError("bad_request", `sealing key id "${k.id}" must be 1-64 of [A-Za-z0-9._-]`);
    }
    this.masters = new Map(keys.map((k) => [k.id, k.key]));
    this.currentId = keys[0]!.id;
  }

  /** "id:base64key,id2:base64key2" (the first seals, all open). */
  static parse(spec: string): SealingKeys {
    return new SealingKeys(spec.split(",").map((s) => s.trim()).filter(Boolean).map((entry) => {
      const i = entry.indexOf(":");
      if (i <= 0) throw new TorporError("bad_request", "TORPOR_SEALING_KEYS entries are id:base64key");
      return { id: entry.slice(0, i), key: Buffer.from(entry.slice(i + 1), "base64") };
    }));
  }

  has(id: string): boolean { return this.masters.has(id); }

  namespaceKey(id: string, namespace: string): Buffer {
    const cacheKey = `${id}\0${namespace}`;
    let k = this.derived.get(cacheKey);
    if (!k) {
      const master = this.masters.get(id);
      if (!master) throw new SealError(`sealed with key "${id}", which this runtime does not have (keys: ${[...this.masters.keys()].join(", ")})`);
      k = Buffer.from(hkdfSync("sha256", master, "torpor.dev/sealing", `namespace:${namespace}`, 32));
      this.derived.set(cacheKey, k);
    }
    return k;
  }
}

const identityAad = (id: SealIdentity, what: string) =>
  Buffer.from(JSON.stringify([what, id.namespace, id.name, id.path, id.modelFingerprint]));

/** Splits a file's chunks into `threads.ranges()` contiguous ranges of nearly equal size. */
function splitJobs(threads: SealingThreads, base: Omit<RangeJob, "from" | "to">): RangeJob[] {
  const n = threads.ranges(base.chunks);
  return Array.from({ length: n }, (_, k) => ({ ...base, from: Math.floor((k * base.chunks) / n), to: Math.floor(((k + 1) * base.chunks) / n) }));
}

/** What seals or opens a file's chunks in place of the threads: an open file and its keys. */
export interface SealedChunks {
  /** The sealed file, open; its header is written (or read) by the caller. */
  fd: number;
  key: Buffer;
  prefix: Buffer;
  fileAad: Buffer;
  headerBytes: number;
}

/**
 * Seals the plaintext itself, straight into the file's chunks, and returns how many plaintext
 * bytes it sealed: the runtime addon, as llama.cpp writes the state (sequence-state-files.ts).
 */
export type ChunkSealer = (target: SealedChunks) => Promise<number>;
/** Opens the file's chunks itself (the addon, as llama.cpp reads the state); rejects with code TORPOR_SEAL_INVALID on any mismatch. */
export type ChunkOpener = (source: SealedChunks & { chunks: number; plainBytes: number }) => Promise<void>;

/**
 * Encrypts `src` (a node-local plaintext file, its ranges on `threads`, or a ChunkSealer that
 * produces and seals the plaintext itself) into `dst` (on the volume), and syncs it. Returns the
 * sealed size.
 */
export async function sealFile(keys: SealingKeys, identity: SealIdentity, stateName: string, src: string | ChunkSealer, dst: string, threads: SealingThreads): Promise<number> {
  const key = keys.namespaceKey(keys.currentId, identity.namespace);
  const idBuf = Buffer.from(keys.currentId);
  const prefix = randomBytes(8);
  const fileAad = Buffer.concat([identityAad(identity, `state:${stateName}`), idBuf]);
  const header = Buffer.concat([MAGIC, Buffer.from([idBuf.length]), idBuf, prefix]);
  let plainBytes = typeof src === "string" ? (await stat(src)).size : 0;
  const output = await open(dst, "wx", 0o600);
  try {
    await output.write(header);
    if (typeof src === "string") {
      await threads.run(splitJobs(threads, { op: "seal", key, prefix, fileAad, src, dst, chunks: chunkCount(plainBytes), headerBytes: header.length, plainBytes }));
    } else {
      plainBytes = await src({ fd: output.fd, key, prefix, fileAad, headerBytes: header.length });
    }
    await output.sync();
  } finally {
    await output.close();
  }
  return sealedSize(plainBytes, header.length);
}

/**
 * Decrypts a sealed state file from the volume into `dst` (a node-local file, its ranges on
 * `threads`), or has a ChunkOpener open it; SealError on any mismatch.
 */
export async function openSealedFile(keys: SealingKeys, identity: SealIdentity, stateName: string, src: string, dst: string | ChunkOpener, threads: SealingThreads): Promise<void> {
  const { fh: input, size } = await openRegular(src);
  try {
    const head = Buffer.alloc(MAGIC.length + 1);
    await input.read(head, 0, head.length, 0);
    if (!head.subarray(0, MAGIC.length).equals(MAGIC)) throw new SealError("not a sealed torpor state file");
    const idLen = head[MAGIC.length]!;
    const rest = Buffer.alloc(idLen + 8);
    if ((await input.read(rest, 0, rest.length, head.length)).bytesRead !== rest.length) throw new SealError("truncated header");
    const id = rest.subarray(0, idLen).toString(), prefix = rest.subarray(idLen), headerBytes = head.length + rest.length;
    const key = keys.namespaceKey(id, identity.namespace);
    const fileAad = Buffer.concat([identityAad(identity, `state:${stateName}`), Buffer.from(id)]);
    const { chunks, plainBytes } = plainSizeOf(size, headerBytes);
    if (typeof dst !== "string") {
      // The opener reads the file this handle has open: the one checked above, whatever the path names now.
      await dst({ fd: input.fd, key, prefix, fileAad, headerBytes, chunks, plainBytes }).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException)?.code === "TORPOR_SEAL_INVALID") throw new SealError((err as Error).message);
        throw err;
      });
      return;
    }
    const output = await open(dst, "w", 0o600);
    try { await output.truncate(plainBytes); } finally { await output.close(); }
    await threads.run(splitJobs(threads, { op: "open", key, prefix, fileAad, src, dst, chunks, headerBytes, plainBytes }));
  } finally {
    await input.close();
  }
}

export interface SealedEnvelope { format: string; version: 2; sealed: { keyId: string; iv: string; tag: string; data: string }; modelFingerprint: string }

/** Seals a manifest (JSON with the chat history) for this identity. */
export function sealJson(keys: SealingKeys, identity: SealIdentity, format: string, value: unknown): SealedEnvelope {
  const key = keys.namespaceKey(keys.currentId, identity.namespace);
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  cipher.setAAD(Buffer.concat([identityAad(identity, "manifest"), Buffer.from(keys.currentId)]));
  const data = Buffer.concat([cipher.update(JSON.stringify(value)), cipher.final()]);
  return { format, version: 2, modelFingerprint: identity.modelFingerprint, sealed: { keyId: keys.currentId, iv: iv.toString("base64"), tag: cipher.getAuthTag().toString("base64"), data: data.toString("base64") } };
}

export function openJson<T>(keys: SealingKeys, identity: SealIdentity, env: SealedEnvelope): T {
  const { keyId, iv, tag, data } = env.sealed ?? ({} as SealedEnvelope["sealed"]);
  if (typeof keyId !== "string" || typeof iv !== "string" || typeof tag !== "string" || typeof data !== "string") throw new SealError("sealed manifest is missing fields");
  const decipher = createDecipheriv("aes-256-gcm", keys.namespaceKey(keyId, identity.namespace), Buffer.from(iv, "base64"));
  decipher.setAAD(Buffer.concat([identityAad(identity, "manifest"), Buffer.from(keyId)]));
  decipher.setAuthTag(Buffer.from(tag, "base64"));
  try {
    return JSON.parse(Buffer.concat([decipher.update(Buffer.from(data, "base64")), decipher.final()]).toString("utf8")) as T;
  } catch {
    throw new SealError("manifest does not authenticate (edited, or sealed for another session, namespace or model)");
  }
}
