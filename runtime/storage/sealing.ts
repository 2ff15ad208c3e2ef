// Sealed hibernation files: whoever can read or write the shared volume can neither read a
// conversation nor make a runtime load an altered, transplanted or foreign one.
//
// Keys: a master key per key id from the operator's Secret (TORPOR_SEALING_KEYS="id:base64,...",
// the first seals new files, every listed one opens old ones: rotation without re-encryption);
// each namespace gets its own key, HKDF-SHA256(master, "torpor.dev/sealing", "namespace:<ns>").
// State files: AES-256-GCM in 1 MiB chunks, so it streams at disk speed; each chunk's nonce is a
// random per-file prefix and the chunk index, its associated data binds the file's identity
// (namespace, name, path, model fingerprint, state file name), the index and a last-chunk flag, so
// chunks cannot be reordered, dropped, truncated or moved to another file. Manifests (they hold
// the chat history) are one AEAD message bound to the same identity.
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { open } from "node:fs/promises";
import { TorporError } from "../../contract/errors.js";

export const CHUNK = 1 << 20;
const MAGIC = Buffer.from("TORPORS1");
const TAG = 16;

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

/** A sealed file that does not open: tampered, truncated, transplanted, or sealed with an unknown key. */
export class SealError extends Error {}

const identityAad = (id: SealIdentity, what: string) =>
  Buffer.from(JSON.stringify([what, id.namespace, id.name, id.path, id.modelFingerprint]));

function chunkAad(fileAad: Buffer, index: number, last: boolean): Buffer {
  const b = Buffer.alloc(fileAad.length + 5);
  fileAad.copy(b);
  b.writeUInt32BE(index, fileAad.length);
  b[fileAad.length + 4] = last ? 1 : 0;
  return b;
}

function chunkNonce(prefix: Buffer, index: number): Buffer {
  const n = Buffer.alloc(12);
  prefix.copy(n, 0, 0, 8);
  n.writeUInt32BE(index, 8);
  return n;
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

/**
 * Encrypts `src` (plaintext, node-local) into `dst` (on the volume), chunk by chunk, reading the
 * next chunk while the current one is sealed and written. Returns the sealed size.
 */
export async function sealFile(keys: SealingKeys, identity: SealIdentity, stateName: string, src: string, dst: string): Promise<number> {
  const key = keys.namespaceKey(keys.currentId, identity.namespace);
  const idBuf = Buffer.from(keys.currentId);
  const prefix = randomBytes(8);
  const fileAad = Buffer.concat([identityAad(identity, `state:${stateName}`), idBuf]);
  const header = Buffer.concat([MAGIC, Buffer.from([idBuf.length]), idBuf, prefix]);
  const input = await open(src, "r");
  const output = await open(dst, "wx", 0o600);
  let written = 0;
  try {
    const size = (await input.stat()).size;
    await output.write(header);
    written += header.length;
    const chunks = Math.max(1, Math.ceil(size / CHUNK));
    const bufs = [Buffer.allocUnsafeSlow(CHUNK), Buffer.allocUnsafeSlow(CHUNK)] as const;
    // Three things overlap: the next chunk's read, this chunk's encryption, the previous write.
    let next = observed(input.read(bufs[0], 0, CHUNK, 0));
    let writing: Promise<unknown> = Promise.resolve();
    for (let i = 0; i < chunks; i++) {
      const { bytesRead } = await next;
      const plain = bufs[i % 2]!.subarray(0, bytesRead);
      const cipher = createCipheriv("aes-256-gcm", key, chunkNonce(prefix, i));
      cipher.setAAD(chunkAad(fileAad, i, i === chunks - 1));
      const len = Buffer.alloc(4);
      len.writeUInt32BE(bytesRead);
      const body = Buffer.concat([len, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
      await writing; // the buffer read next is the one the previous write no longer needs
      if (i + 1 < chunks) next = observed(input.read(bufs[(i + 1) % 2]!, 0, CHUNK, (i + 1) * CHUNK));
      writing = observed(output.write(body));
      written += body.length;
    }
    await writing;
    await output.sync();
  } finally {
    await input.close();
    await output.close();
  }
  return written;
}

/** Decrypts a sealed state file from the volume into `dst` (node-local); throws SealError on any mismatch. */
export async function openSealedFile(keys: SealingKeys, identity: SealIdentity, stateName: string, src: string, dst: string): Promise<void> {
  const input = await open(src, "r");
  const output = await open(dst, "w", 0o600);
  try {
    const head = Buffer.alloc(MAGIC.length + 1);
    await input.read(head, 0, head.length, 0);
    if (!head.subarray(0, MAGIC.length).equals(MAGIC)) throw new SealError("not a sealed torpor state file");
    const idLen = head[MAGIC.length]!;
    const rest = Buffer.alloc(idLen + 8);
    if ((await input.read(rest, 0, rest.length, head.length)).bytesRead !== rest.length) throw new SealError("truncated header");
    const id = rest.subarray(0, idLen).toString();
    const prefix = rest.subarray(idLen);
    const key = keys.namespaceKey(id, identity.namespace);
    const fileAad = Buffer.concat([identityAad(identity, `state:${stateName}`), Buffer.from(id)]);
    let pos = head.length + rest.length;
    const size = (await input.stat()).size;
    const lenBuf = Buffer.alloc(4);
    const body = Buffer.allocUnsafeSlow(CHUNK + TAG);
    let writing: Promise<unknown> = Promise.resolve();
    for (let i = 0; ; i++) {
      if ((await input.read(lenBuf, 0, 4, pos)).bytesRead !== 4) throw new SealError("truncated: the last chunk is missing");
      const len = lenBuf.readUInt32BE();
      if (len > CHUNK) throw new SealError("corrupt chunk length");
      if ((await input.read(body, 0, len + TAG, pos + 4)).bytesRead !== len + TAG) throw new SealError("truncated chunk");
      pos += 4 + len + TAG;
      const last = pos === size;
      const decipher = createDecipheriv("aes-256-gcm", key, chunkNonce(prefix, i));
      decipher.setAAD(chunkAad(fileAad, i, last));
      decipher.setAuthTag(body.subarray(len, len + TAG));
      let plain: Buffer;
      try { plain = Buffer.concat([decipher.update(body.subarray(0, len)), decipher.final()]); } catch {
        throw new SealError(`chunk ${i} does not authenticate (tampered, truncated, or sealed for another session, namespace or model)`);
      }
      // The plaintext write overlaps the next chunk's read and decryption.
      await writing;
      writing = observed(output.write(plain));
      if (last) break;
    }
    await writing;
  } finally {
    await input.close();
    await output.close();
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
