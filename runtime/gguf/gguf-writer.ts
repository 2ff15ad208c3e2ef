// A minimal GGUF v3 writer: enough to emit metadata and F32/F16 tensors that llama.cpp loads.
// Format reference: ggml's docs/gguf.md (little-endian, 32-byte aligned tensor data).
import { open } from "node:fs/promises";

export enum GgufType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}

export enum GgmlType { F32 = 0, F16 = 1 }

export type GgufValue =
  | { type: GgufType.UINT32 | GgufType.INT32 | GgufType.FLOAT32; value: number }
  | { type: GgufType.BOOL; value: boolean }
  | { type: GgufType.STRING; value: string }
  | { type: GgufType.ARRAY; itemType: GgufType.STRING; value: string[] }
  | { type: GgufType.ARRAY; itemType: GgufType.FLOAT32 | GgufType.INT32; value: number[] };

export interface GgufTensor {
  name: string;
  /** ggml order: dims[0] is the innermost (contiguous) dimension. */
  dims: number[];
  type: GgmlType;
  /** Called once, when the tensor's bytes are written, so huge models never sit in memory whole. */
  fill: (out: Float32Array) => void;
}

const ALIGNMENT = 32;

class ByteSink {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void { this.chunks.push(b); this.length += b.length; }
  u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  i32(v: number): void { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
  u64(v: number): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  f32(v: number): void { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
  str(s: string): void { const b = Buffer.from(s, "utf8"); this.u64(b.length); this.push(b); }
  concat(): Buffer { return Buffer.concat(this.chunks); }
}

function writeValue(sink: ByteSink, v: GgufValue): void {
  sink.u32(v.type);
  switch (v.type) {
    case GgufType.UINT32: sink.u32(v.value); break;
    case GgufType.INT32: sink.i32(v.value); break;
    case GgufType.FLOAT32: sink.f32(v.value); break;
    case GgufType.BOOL: sink.push(Buffer.from([v.value ? 1 : 0])); break;
    case GgufType.STRING: sink.str(v.value); break;
    case GgufType.ARRAY:
      sink.u32(v.itemType);
      sink.u64(v.value.length);
      for (const item of v.value) {
        if (v.itemType === GgufType.STRING) sink.str(item as string);
        else if (v.itemType === GgufType.FLOAT32) sink.f32(item as number);
        else sink.i32(item as number);
      }
      break;
  }
}

function bytesPerElement(t: GgmlType): number { return t === GgmlType.F32 ? 4 : 2; }
function elementCount(dims: number[]): number { return dims.reduce((a, b) => a * b, 1); }
function align(n: number): number { return Math.ceil(n / ALIGNMENT) * ALIGNMENT; }

/** IEEE 754 half precision, round-to-nearest-even; the weights are small so subnormals are rare. */
export function toHalf(value: number): number {
  const f32 = new Float32Array([value]);
  const x = new Uint32Array(f32.buffer)[0]!;
  const sign = (x >>> 16) & 0x8000;
  let exp = ((x >>> 23) & 0xff) - 127 + 15;
  let mant = x & 0x7fffff;
  if (exp >= 0x1f) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant = (mant | 0x800000) >> (1 - exp);
    return sign | ((mant + 0x1000) >> 13);
  }
  const half = sign | (exp << 10) | (mant >> 13);
  const rest = mant & 0x1fff;
  return rest > 0x1000 || (rest === 0x1000 && (half & 1)) ? half + 1 : half;
}

export async function writeGguf(filePath: string, metadata: Record<string, GgufValue>, tensors: GgufTensor[]): Promise<number> {
  const head = new ByteSink();
  head.push(Buffer.from("GGUF", "ascii"));
  head.u32(3);
  head.u64(tensors.length);
  head.u64(Object.keys(metadata).length);
  for (const [key, value] of Object.entries(metadata)) {
    head.str(key);
    writeValue(head, value);
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.dims.length);
    for (const d of t.dims) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offsets.push(offset);
    offset = align(offset + elementCount(t.dims) * bytesPerElement(t.type));
  }
  const header = head.concat();
  const dataStart = align(header.length);

  const fh = await open(filePath, "w");
  try {
    await fh.write(header, 0, header.length, 0);
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      const n = elementCount(t.dims);
      const values = new Float32Array(n);
      t.fill(values);
      let bytes: Buffer;
      if (t.type === GgmlType.F32) {
        bytes = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
      } else {
        const half = new Uint16Array(n);
        for (let j = 0; j < n; j++) half[j] = toHalf(values[j]!);
        bytes = Buffer.from(half.buffer);
      }
      await fh.write(bytes, 0, bytes.length, dataStart + offsets[i]!);
    }
    // Pad the file so the last tensor's aligned end exists on disk.
    const end = dataStart + offset;
    await fh.truncate(end);
    return end;
  } finally {
    await fh.close();
  }
}
