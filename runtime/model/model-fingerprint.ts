// Identifies a model file cheaply and robustly: the whole GGUF header (architecture, shapes,
// vocabulary) plus 64 evenly spaced 64 KiB samples of the weights and the file size. Hashing a
// multi-GB file whole would add seconds to every start; a fine-tune changes every sampled block.
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";

const HEAD_BYTES = 8 << 20;
const SAMPLES = 64;
const SAMPLE_BYTES = 64 << 10;

export async function modelFingerprint(file: string): Promise<string> {
  const fh = await open(file, "r");
  try {
    const { size } = await fh.stat();
    const hash = createHash("sha256");
    hash.update(`torpor-model-fingerprint/v1 size=${size}\n`);
    const head = Buffer.alloc(Math.min(HEAD_BYTES, size));
    await fh.read(head, 0, head.length, 0);
    hash.update(head);
    const buf = Buffer.alloc(SAMPLE_BYTES);
    for (let i = 0; i < SAMPLES && size > HEAD_BYTES; i++) {
      const pos = Math.floor(((size - SAMPLE_BYTES) * i) / (SAMPLES - 1));
      const { bytesRead } = await fh.read(buf, 0, SAMPLE_BYTES, pos);
      hash.update(buf.subarray(0, bytesRead));
    }
    return hash.digest("hex");
  } finally {
    await fh.close();
  }
}
