// Owns the llama.cpp backend and the one loaded model; creates the contexts the context pool owns,
// so disposing one really returns its KV cache to the OS (or the GPU).
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { getLlama, resolveChatWrapper, type ChatWrapper, type Llama, type LlamaContext, type LlamaModel } from "node-llama-cpp";
import type { RuntimeConfig } from "../config.js";
import { TorporError } from "../../contract/errors.js";
import { modelFingerprint } from "./model-fingerprint.js";
import { resolveModelSource } from "./model-source.js";

// The package does not export its package.json; its entry point sits in dist/.
export const NODE_LLAMA_CPP_VERSION: string = (JSON.parse(readFileSync(
  path.join(path.dirname(fileURLToPath(import.meta.resolve("node-llama-cpp"))), "..", "package.json"), "utf8")) as { version: string }).version;

export class ModelHost {
  private constructor(
    readonly llama: Llama,
    readonly model: LlamaModel,
    readonly modelPath: string,
    readonly fingerprint: string,
    readonly chatWrapper: ChatWrapper,
    private readonly threads: number,
  ) {}

  static async load(cfg: Pick<RuntimeConfig, "model" | "modelCacheDir" | "gpu" | "gpuLayers" | "threads">): Promise<ModelHost> {
    const modelPath = await resolveModelSource(cfg.model, cfg.modelCacheDir);
    const llama = await getLlama({ gpu: cfg.gpu, logLevel: "error" as never, build: "never" });
    const model = await llama.loadModel({ modelPath, gpuLayers: cfg.gpuLayers });
    const chatWrapper = resolveChatWrapper(model);
    return new ModelHost(llama, model, modelPath, await modelFingerprint(modelPath), chatWrapper, cfg.threads);
  }

  get name(): string {
    return String(this.model.fileInfo.metadata.general?.name ?? this.modelPath);
  }

  get trainContextSize(): number {
    return this.model.trainContextSize;
  }

  /** A context of `sequences` sequences of `contextSize` tokens each. */
  async createContext(contextSize: number, sequences = 1): Promise<LlamaContext> {
    try {
      return await this.model.createContext({
        contextSize,
        sequences,
        ...(this.threads > 0 ? { threads: this.threads } : {}),
      });
    } catch (err) {
      throw new TorporError("capacity_exhausted", `cannot allocate a context of ${contextSize} tokens: ${(err as Error).message}`);
    }
  }

  private readonly estimates = new Map<string, number>();

  /** node-llama-cpp's estimate of what one context of this shape costs (RAM + VRAM), for the memory budget. */
  async estimateContextBytes(contextSize: number, sequences = 1): Promise<number> {
    const key = `${contextSize}x${sequences}`;
    let bytes = this.estimates.get(key);
    if (bytes === undefined) {
      const r = await this.model.fileInsights.estimateContextResourceRequirementsV2({ contextSize, modelGpuLayers: this.model.gpuLayers, sequences });
      bytes = r.cpuRam + r.gpuVram;
      this.estimates.set(key, bytes);
    }
    return bytes;
  }

  /** VRAM in use on the backend, for the memory-freed figures on GPU builds. */
  async vramUsed(): Promise<number> {
    return (await this.llama.getVramState()).used;
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
    await this.llama.dispose();
  }
}
