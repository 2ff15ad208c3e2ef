// TEST FIXTURE. Generates small llama-architecture GGUF models with deterministic random
// weights, so tests, benchmarks and the demo run real llama.cpp inference without downloading
// anything. The text they produce is gibberish by design; users point the runtime at a real model.
import { mkdir, rename, stat } from "node:fs/promises";
import path from "node:path";
import { GgmlType, GgufType, type GgufTensor, type GgufValue, writeGguf } from "./gguf-writer.js";

export interface TestModelParams {
  layers: number;
  embedding: number;
  feedForward: number;
  heads: number;
  /** Defaults to `heads` (no grouped-query attention). */
  kvHeads?: number;
  contextLength: number;
  seed: number;
  /** Per-head width; defaults to embedding / heads. Wider heads make a big KV cache on a cheap model. */
  headDim?: number;
}

export const DEFAULT_TEST_MODEL: TestModelParams = {
  layers: 4, embedding: 256, feedForward: 512, heads: 4, contextLength: 8192, seed: 42,
};

/** ChatML, which node-llama-cpp recognises and maps to its ChatMLChatWrapper. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// llama.cpp token types.
const NORMAL = 1, UNKNOWN = 2, CONTROL = 3, BYTE = 6;

/** A SentencePiece-style vocabulary: specials, all 256 byte-fallback tokens, then printable ASCII. */
export function buildVocabulary(): { tokens: string[]; scores: number[]; types: number[]; bos: number; eos: number; unk: number } {
  const tokens: string[] = ["<unk>", "<s>", "</s>"];
  const types = [UNKNOWN, CONTROL, CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(BYTE);
  }
  tokens.push("<|im_start|>", "<|im_end|>");
  types.push(CONTROL, CONTROL);
  tokens.push("\u2581"); // SentencePiece's space marker
  types.push(NORMAL);
  for (let c = 0x21; c <= 0x7e; c++) {
    tokens.push(String.fromCharCode(c));
    types.push(NORMAL);
  }
  const scores = tokens.map((_, i) => -i);
  return { tokens, scores, types, bos: 1, eos: tokens.indexOf("<|im_end|>"), unk: 0 };
}

/** mulberry32: tiny, fast and fully deterministic across platforms. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomFill(seed: number, scale: number): (out: Float32Array) => void {
  return (out) => {
    const rnd = prng(seed);
    for (let i = 0; i < out.length; i++) out[i] = (rnd() * 2 - 1) * scale;
  };
}

const ones = (out: Float32Array): void => { out.fill(1); };

export async function writeTestModel(filePath: string, params: TestModelParams): Promise<number> {
  const { layers, embedding: nEmbd, feedForward: nFf, heads, contextLength, seed } = params;
  const kvHeads = params.kvHeads ?? heads;
  if (params.headDim === undefined && nEmbd % heads !== 0) throw new Error(`embedding (${nEmbd}) must be divisible by heads (${heads})`);
  if (heads % kvHeads !== 0) throw new Error(`heads (${heads}) must be divisible by kvHeads (${kvHeads})`);
  const headDim = params.headDim ?? nEmbd / heads;
  const nEmbdKv = headDim * kvHeads;
  const nEmbdQ = headDim * heads;
  const vocab = buildVocabulary();
  const nVocab = vocab.tokens.length;

  const u32 = (value: number): GgufValue => ({ type: GgufType.UINT32, value });
  const f32 = (value: number): GgufValue => ({ type: GgufType.FLOAT32, value });
  const metadata: Record<string, GgufValue> = {
    "general.architecture": { type: GgufType.STRING, value: "llama" },
    "general.name": { type: GgufType.STRING, value: `torpor-test-l${layers}-e${nEmbd}-s${seed}` },
    "general.description": { type: GgufType.STRING, value: "torpor test fixture: random weights, not a language model" },
    "general.file_type": u32(1),
    "llama.context_length": u32(contextLength),
    "llama.embedding_length": u32(nEmbd),
    "llama.block_count": u32(layers),
    "llama.feed_forward_length": u32(nFf),
    "llama.attention.head_count": u32(heads),
    "llama.attention.head_count_kv": u32(kvHeads),
    "llama.rope.dimension_count": u32(headDim),
    ...(params.headDim !== undefined ? { "llama.attention.key_length": u32(headDim), "llama.attention.value_length": u32(headDim) } : {}),
    "llama.rope.freq_base": f32(10000),
    "llama.attention.layer_norm_rms_epsilon": f32(1e-5),
    "llama.vocab_size": u32(nVocab),
    "tokenizer.ggml.model": { type: GgufType.STRING, value: "llama" },
    "tokenizer.ggml.tokens": { type: GgufType.ARRAY, itemType: GgufType.STRING, value: vocab.tokens },
    "tokenizer.ggml.scores": { type: GgufType.ARRAY, itemType: GgufType.FLOAT32, value: vocab.scores },
    "tokenizer.ggml.token_type": { type: GgufType.ARRAY, itemType: GgufType.INT32, value: vocab.types },
    "tokenizer.ggml.bos_token_id": u32(vocab.bos),
    "tokenizer.ggml.eos_token_id": u32(vocab.eos),
    "tokenizer.ggml.unknown_token_id": u32(vocab.unk),
    "tokenizer.ggml.add_bos_token": { type: GgufType.BOOL, value: true },
    "tokenizer.ggml.add_eos_token": { type: GgufType.BOOL, value: false },
    "tokenizer.chat_template": { type: GgufType.STRING, value: CHATML_TEMPLATE },
  };

  let tensorSeed = seed * 1000;
  const matrix = (name: string, cols: number, rows: number): GgufTensor =>
    ({ name, dims: [cols, rows], type: GgmlType.F16, fill: randomFill(tensorSeed++, 1 / Math.sqrt(cols)) });
  const norm = (name: string): GgufTensor => ({ name, dims: [nEmbd], type: GgmlType.F32, fill: ones });

  const tensors: GgufTensor[] = [
    { name: "token_embd.weight", dims: [nEmbd, nVocab], type: GgmlType.F32, fill: randomFill(tensorSeed++, 1) },
  ];
  for (let i = 0; i < layers; i++) {
    tensors.push(
      norm(`blk.${i}.attn_norm.weight`),
      matrix(`blk.${i}.attn_q.weight`, nEmbd, nEmbdQ),
      matrix(`blk.${i}.attn_k.weight`, nEmbd, nEmbdKv),
      matrix(`blk.${i}.attn_v.weight`, nEmbd, nEmbdKv),
      matrix(`blk.${i}.attn_output.weight`, nEmbdQ, nEmbd),
      norm(`blk.${i}.ffn_norm.weight`),
      matrix(`blk.${i}.ffn_gate.weight`, nEmbd, nFf),
      matrix(`blk.${i}.ffn_up.weight`, nEmbd, nFf),
      matrix(`blk.${i}.ffn_down.weight`, nFf, nEmbd),
    );
  }
  tensors.push(norm("output_norm.weight"));
  // Peaked logits make greedy decoding decisive; damping the rows of byte and control tokens keeps
  // the gibberish printable ASCII (valid UTF-8 that round-trips through the tokenizer).
  const firstPrintable = vocab.tokens.indexOf("\u2581");
  const outputFill = randomFill(tensorSeed++, 4 / Math.sqrt(nEmbd));
  tensors.push({
    name: "output.weight", dims: [nEmbd, nVocab], type: GgmlType.F16,
    fill: (out) => {
      outputFill(out);
      out.fill(-0.05, 0, firstPrintable * nEmbd);
    },
  });

  return writeGguf(filePath, metadata, tensors);
}

export function testModelFileName(p: TestModelParams): string {
  return `torpor-test-l${p.layers}-e${p.embedding}-f${p.feedForward}-h${p.heads}-kv${p.kvHeads ?? p.heads}${p.headDim ? `-d${p.headDim}` : ""}-c${p.contextLength}-s${p.seed}.gguf`;
}

/** Writes the model into `dir` once (atomically) and returns its path; later calls reuse it. */
export async function ensureTestModel(dir: string, params: TestModelParams = DEFAULT_TEST_MODEL): Promise<string> {
  const file = path.join(dir, testModelFileName(params));
  try {
    await stat(file);
    return file;
  } catch { /* not there yet */ }
  await mkdir(dir, { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  await writeTestModel(tmp, params);
  await rename(tmp, file);
  return file;
}

/** Named fixtures, so a cluster can run torpor end to end with no model to download (`torpor-test:<name>`). */
export const TEST_MODEL_PRESETS: Record<string, TestModelParams> = {
  small: DEFAULT_TEST_MODEL,
  "wide-kv": { layers: 8, embedding: 512, feedForward: 512, heads: 8, contextLength: 16384, seed: 3 },
};
