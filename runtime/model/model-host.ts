// Owns the llama.cpp backend and the one loaded model; creates the contexts the context pool owns,
// so disposing one really returns its KV cache to the OS (or the GPU).
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { getLlama, resolveChatWrapper, type ChatWrapper, type Llama, type LlamaContext, type LlamaModel } from "node-llama-cpp";
import type { RuntimeConfig } from "../config.js";
import { TorporError } from "../../contract/errors.js";
import type { MemoryCost } from "./memory-cost.js";
import { cpuAllowance } from "./cpu-allowance.js";
import { modelFingerprint } from "./model-fingerprint.js";
import { resolveModelSource } from "./model-source.js";
import { attachThreadpool, threadpoolSupport } from "./context-threadpool.js";
import { decodeLoopSupport } from "./decode-loop.js";
import { stateFilePrefetcher, stateFileSupport } from "./sequence-state-files.js";

/** A context's flash attention: "auto" lets llama.cpp choose (on where the backend supports it). */
export type FlashAttention = "auto" | boolean;

// The package does not export its package.json; its entry point sits in dist/.
export const NODE_LLAMA_CPP_VERSION: string = (JSON.parse(readFileSync(
  path.join(path.dirname(fileURLToPath(import.meta.resolve("node-llama-cpp"))), "..", "package.json"), "utf8")) as { version: string }).version;

export class ModelHost {
  /** Whether state files are written (and sealed ones opened) in the addon as llama.cpp streams them (sequence-state-files.ts), or why not. */
  readonly stateFiles: { ok: true } | { ok: false; reason: string };
  /** Whether each context keeps its CPU threads between decodes (context-threadpool.ts), or why not. */
  readonly cpuThreadpool: { ok: true } | { ok: false; reason: string };
  /** Whether greedy turns generate in the addon's decode loop (decode-loop.ts), or why not. */
  readonly decodeLoop: { ok: true } | { ok: false; reason: string };
  /** Starts reading an open state file ahead (the addon's, with its state files); undefined without. */
  readonly prefetchStateFile: ((fd: number, bytes: number) => void) | undefined;

  private constructor(
    readonly llama: Llama,
    readonly model: LlamaModel,
    readonly modelPath: string,
    readonly fingerprint: string,
    readonly chatWrapper: ChatWrapper,
    /** CPU threads per context: TORPOR_THREADS, else the CPUs the container may use. */
    readonly threads: number,
    /**
     * What new contexts use ("auto": llama.cpp decides per context, as node-llama-cpp's own
     * default); a rehydrate uses what its state was saved with.
     */
    readonly flashAttention: FlashAttention,
    nativeStateIo: boolean,
    cpuThreadpool: boolean,
    decodeLoop: boolean,
  ) {
    this.stateFiles = nativeStateIo ? stateFileSupport(llama) : { ok: false, reason: "TORPOR_NATIVE_STATE_IO=false" };
    this.cpuThreadpool = cpuThreadpool ? threadpoolSupport(llama) : { ok: false, reason: "TORPOR_CPU_THREADPOOL=false" };
    this.decodeLoop = decodeLoop ? decodeLoopSupport(llama) : { ok: false, reason: "TORPOR_DECODE_LOOP=false" };
    this.prefetchStateFile = this.stateFiles.ok ? stateFilePrefetcher(llama) : undefined;
  }

  static async load(cfg: Pick<RuntimeConfig, "model" | "modelCacheDir" | "gpu" | "gpuLayers" | "threads"> & Partial<Pick<RuntimeConfig, "flashAttention" | "nativeStateIo" | "cpuThreadpool" | "decodeLoop">>): Promise<ModelHost> {
    const modelPath = await resolveModelSource(cfg.model, cfg.modelCacheDir);
    // Threads: what was asked, else the CPUs the container may use (cpu-allowance.ts). All
    // contexts together stay within that too (node-llama-cpp splits maxThreads among contexts
    // decoding at once), so sessions with contexts of their own never oversubscribe the CPUs.
    const allowance = await cpuAllowance();
    const threads = cfg.threads > 0 ? cfg.threads : allowance;
    const llama = await getLlama({ gpu: cfg.gpu, logLevel: "error" as never, build: "never", maxThreads: Math.max(threads, allowance) });
    const model = await llama.loadModel({ modelPath, gpuLayers: cfg.gpuLayers });
    const chatWrapper = resolveChatWrapper(model);
    const asked = cfg.flashAttention ?? "auto";
    if (asked === true && !model.flashAttentionSupported) {
      await model.dispose();
      await llama.dispose();
      throw new Error("TORPOR_FLASH_ATTENTION=on, but this model does not support flash attention in llama.cpp; set it to auto or off");
    }
    return new ModelHost(llama, model, modelPath, await modelFingerprint(modelPath), chatWrapper, threads, asked, cfg.nativeStateIo ?? true, cfg.cpuThreadpool ?? true, cfg.decodeLoop ?? true);
  }

  get name(): string {
    return String(this.model.fileInfo.metadata.general?.name ?? this.modelPath);
  }

  /**
   * Tokens in the model's vocabulary, from its GGUF metadata (node-llama-cpp has no call for it):
   * a `logit_bias` naming a token past it is refused, not handed to llama.cpp.
   */
  get vocabularySize(): number | undefined {
    const tokens = this.model.fileInfo.metadata.tokenizer?.ggml?.tokens;
    return Array.isArray(tokens) ? tokens.length : undefined;
  }

  get trainContextSize(): number {
    return this.model.trainContextSize;
  }

  /** A context of `sequences` sequences of `contextSize` tokens each. */
  async createContext(contextSize: number, sequences = 1, flashAttention: FlashAttention = this.flashAttention): Promise<LlamaContext> {
    let context: LlamaContext;
    try {
      context = await this.model.createContext({
        contextSize,
        sequences,
        flashAttention,
        threads: this.threads,
      });
    } catch (err) {
      throw new TorporError("capacity_exhausted", `cannot allocate a context of ${contextSize} tokens: ${(err as Error).message}`);
    }
    if (this.cpuThreadpool.ok) attachThreadpool(context, this.threads);
    return context;
  }

  private readonly estimates = new Map<string, MemoryCost>();

  /** node-llama-cpp's estimate of what one context of this shape costs, RAM and VRAM apart, for the memory budget. */
  async estimateContextCost(contextSize: number, sequences = 1): Promise<MemoryCost> {
    const key = `${contextSize}x${sequences}`;
    let cost = this.estimates.get(key);
    if (cost === undefined) {
      const r = await this.model.fileInsights.estimateContextResourceRequirementsV2({ contextSize, modelGpuLayers: this.model.gpuLayers, sequences, flashAttention: this.flashAttention });
      cost = { ram: r.cpuRam, vram: this.onGpu ? r.gpuVram : 0 };
      this.estimates.set(key, cost);
    }
    return cost;
  }

  /** Whether the model runs (at least in part) on a GPU, so contexts cost VRAM. */
  get onGpu(): boolean {
    return this.llama.gpu !== false && this.model.gpuLayers > 0;
  }

  /** VRAM in use and free on the backend: the memory-freed figures, and the VRAM budget at start. */
  async vramState(): Promise<{ used: number; free: number; total: number }> {
    const s = await this.llama.getVramState();
    return { used: s.used, free: s.free, total: s.total };
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
    await this.llama.dispose();
  }
}
