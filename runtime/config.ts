// Runtime configuration, read once from the environment (the chart and the test kubelet set it).
import os from "node:os";
import { MAX_CONTEXT_SEQUENCES } from "./storage/hibernation-manifest.js";
import { TorporError } from "../contract/errors.js";
import { DEFAULT_CONTEXT_SIZE } from "../contract/inference-session.js";

export interface RuntimeConfig {
  /** A GGUF file path, or an `hf:` URI resolved by node-llama-cpp into modelCacheDir. */
  model: string;
  modelCacheDir: string;
  hibernationDir: string;
  token: string;
  /** "id:base64,..." master keys; the first seals. Absent: files are not sealed (local use only; logged). */
  sealingKeys?: string;
  /** Node-local folder for the plaintext llama.cpp writes and reads when sealing (never the shared volume). */
  stagingDir: string;
  /** Threads that seal and open state files side by side (0: the event loop's own); -1: the cores, at most 4. */
  sealingThreads: number;
  /** Per-namespace caps, JSON (sessions/namespace-limits.ts). */
  namespaceLimits?: string;
  /** A second listener with /metrics only, so a NetworkPolicy can open it to scrapers and keep the API closed (0: none). */
  metricsPort: number;
  host: string;
  port: number;
  maxResident: number;
  /** Host RAM for resident contexts; 0: no RAM budget, only the resident-session cap; -1: derived. */
  memoryBudgetBytes: number;
  /** GPU memory for resident contexts; 0: none; -1: derived from the VRAM free once the model is loaded. */
  vramBudgetBytes: number;
  /** 0 disables the idle policy. */
  idleAfterMs: number;
  defaultContextSize: number;
  maxContextSize: number;
  defaultMaxTokens: number;
  /** "auto" offloads what fits on a GPU; 0 keeps everything on the CPU. */
  gpuLayers: number | "auto" | "max";
  /**
   * "auto" (node-llama-cpp's default): llama.cpp turns it on where the backend supports it. On a
   * GPU it makes state save/load 3.5-8x faster (V is then kept untransposed) and decode faster.
   */
  flashAttention: "auto" | boolean;
  /** Run on the CPU when GPU layers were asked for ("max" or a count) but no GPU backend loaded; otherwise refuse to start. */
  allowCpuFallback: boolean;
  gpu: "auto" | false;
  /** 0 lets llama.cpp choose. */
  threads: number;
  maxBodyBytes: number;
  /**
   * The `model` OpenAI responses name: the pool's name (the chart sets it), which is what the
   * gateway's model list and the session's spec.model say; unset, the GGUF's own general.name.
   */
  modelName?: string;
  /** Reuse an evicted session's context for the session that needed the room. */
  contextHandover: boolean;
  /**
   * Write and read state files in node-llama-cpp's addon as llama.cpp streams the state, where it
   * was built with torpor's methods (sequence-state-files.ts): no staged plaintext, no second pass
   * over a file for its checksum. false uses node-llama-cpp's file calls, as before.
   */
  nativeStateIo: boolean;
  /**
   * Keep each context's CPU threads alive between its decodes, as llama-server does, where the
   * addon was built with torpor's method (context-threadpool.ts). false: ggml starts and joins
   * them on every decode, as node-llama-cpp's own contexts do.
   */
  cpuThreadpool: boolean;
  /**
   * Generate greedy turns (temperature 0, no penalties or bias) in the addon's decode loop, where it
   * was built (decode-loop.ts): every generating sequence of a context decodes, samples and goes on
   * to its next batch without a return to JavaScript between tokens. false: node-llama-cpp's LlamaChat,
   * as every other turn.
   */
  decodeLoop: boolean;
  /** Sequences per llama context: resident sessions sharing a context decode in one batch. */
  sequencesPerContext: number;
  /** How long a context no session uses stays allocated, so the next rehydrate skips the allocation. */
  contextGraceMs: number;
  /**
   * After SIGTERM, how long generations under way may go on before they are stopped so that their
   * sessions are saved within the pod's grace (the chart passes its shutdown.extraSeconds).
   */
  shutdownGenerationMs: number;
  /** After the SIGTERM save, how long the runtime waits for the operator to ask for each saved session. */
  shutdownHandOffWaitMs: number;
  /** Unused contexts of the default size kept allocated ahead of need, so a cold rehydrate skips the allocation too. */
  spareContexts: number;
  /** Checkpoints for sessions whose spec sets none: after this many turns, or this long after an unsaved turn (0: not). */
  checkpointAfterTurns: number;
  checkpointIntervalMs: number;
  /**
   * Wait one event-loop turn after each decode so that every session of a shared context joins the
   * next batch (sessions/batch-composition.ts). "auto": on where a decode's threads are kept (a GPU,
   * or the addon's CPU threadpool); off on a CPU without the threadpool, where it measured slower.
   */
  batchGathering: "auto" | boolean;
  /** Wait for an idle resident session this long before taking a busy one's slot between its turns. */
  preemptAfterMs: number;
  podName: string;
  nodeName: string;
}

function int(env: NodeJS.ProcessEnv, key: string, fallback: number, min = 0): number {
  const raw = env[key];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new TorporError("bad_request", `${key}=${raw} must be an integer >= ${min}`);
  return n;
}

function intAtMost(env: NodeJS.ProcessEnv, key: string, fallback: number, min: number, max: number): number {
  const n = int(env, key, fallback, min);
  if (n > max) throw new TorporError("bad_request", `${key}=${n} must be at most ${max}`);
  return n;
}

function autoOnOff(env: NodeJS.ProcessEnv, key: string): "auto" | boolean {
  const raw = env[key];
  if (raw === undefined || raw === "auto") return "auto";
  if (raw === "on" || raw === "true") return true;
  if (raw === "off" || raw === "false") return false;
  throw new Error(`${key} must be auto, on or off, got "${raw}"`);
}

function bool(env: NodeJS.ProcessEnv, key: string, fallback: boolean): boolean {
  const raw = env[key];
  if (raw === undefined || raw === "") return fallback;
  if (raw === "true" || raw === "false") return raw === "true";
  throw new TorporError("bad_request", `${key}=${raw} must be true or false`);
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): RuntimeConfig {
  const model = env.TORPOR_MODEL;
  if (!model) throw new TorporError("bad_request", "TORPOR_MODEL is required: a GGUF file path or an hf: URI");
  const hibernationDir = env.TORPOR_HIBERNATION_DIR;
  if (!hibernationDir) throw new TorporError("bad_request", "TORPOR_HIBERNATION_DIR is required: the folder (volume) where hibernated sessions are written");
  const token = env.TORPOR_RUNTIME_TOKEN ?? "";
  if (token.length < 16) throw new TorporError("bad_request", "TORPOR_RUNTIME_TOKEN is required and must be at least 16 characters: every session endpoint checks it");
  const gpuLayersRaw = env.TORPOR_GPU_LAYERS ?? "auto";
  const gpuLayers = gpuLayersRaw === "auto" || gpuLayersRaw === "max" ? gpuLayersRaw : int(env, "TORPOR_GPU_LAYERS", 0);
  const maxContextSize = int(env, "TORPOR_MAX_CONTEXT_SIZE", 32768, 256);
  return {
    model,
    modelCacheDir: env.TORPOR_MODEL_CACHE_DIR ?? "/tmp/torpor-models",
    hibernationDir,
    token,
    ...(env.TORPOR_SEALING_KEYS ? { sealingKeys: env.TORPOR_SEALING_KEYS } : {}),
    stagingDir: env.TORPOR_STAGING_DIR ?? os.tmpdir(),
    sealingThreads: env.TORPOR_SEALING_THREADS === undefined ? -1 : intAtMost(env, "TORPOR_SEALING_THREADS", 0, 0, 64),
    metricsPort: int(env, "TORPOR_METRICS_PORT", 0),
    ...(env.TORPOR_NAMESPACE_LIMITS ? { namespaceLimits: env.TORPOR_NAMESPACE_LIMITS } : {}),
    host: env.TORPOR_HOST ?? "0.0.0.0",
    port: int(env, "TORPOR_PORT", 8080),
    maxResident: int(env, "TORPOR_MAX_RESIDENT", 8, 1),
    // -1 (unset): derived from the container's memory limit at start-up (model/memory-budget.ts); 0: off.
    memoryBudgetBytes: env.TORPOR_MEMORY_BUDGET_MIB === undefined ? -1 : int(env, "TORPOR_MEMORY_BUDGET_MIB", 0) * 2 ** 20,
    vramBudgetBytes: env.TORPOR_VRAM_BUDGET_MIB === undefined ? -1 : int(env, "TORPOR_VRAM_BUDGET_MIB", 0) * 2 ** 20,
    idleAfterMs: int(env, "TORPOR_IDLE_AFTER_SECONDS", 0) * 1000,
    defaultContextSize: Math.min(int(env, "TORPOR_DEFAULT_CONTEXT_SIZE", DEFAULT_CONTEXT_SIZE, 256), maxContextSize),
    maxContextSize,
    defaultMaxTokens: int(env, "TORPOR_DEFAULT_MAX_TOKENS", 256, 1),
    gpuLayers,
    flashAttention: autoOnOff(env, "TORPOR_FLASH_ATTENTION"),
    allowCpuFallback: bool(env, "TORPOR_ALLOW_CPU_FALLBACK", false),
    gpu: gpuLayers === 0 || env.TORPOR_GPU === "false" ? false : "auto",
    threads: int(env, "TORPOR_THREADS", 0),
    maxBodyBytes: int(env, "TORPOR_MAX_BODY_BYTES", 1 << 20, 1024),
    ...(env.TORPOR_MODEL_NAME ? { modelName: env.TORPOR_MODEL_NAME } : {}),
    contextHandover: bool(env, "TORPOR_CONTEXT_HANDOVER", true),
    nativeStateIo: bool(env, "TORPOR_NATIVE_STATE_IO", true),
    cpuThreadpool: bool(env, "TORPOR_CPU_THREADPOOL", true),
    decodeLoop: bool(env, "TORPOR_DECODE_LOOP", true),
    preemptAfterMs: int(env, "TORPOR_PREEMPT_AFTER_MS", 2000),
    sequencesPerContext: intAtMost(env, "TORPOR_SEQUENCES_PER_CONTEXT", 1, 1, MAX_CONTEXT_SEQUENCES),
    contextGraceMs: int(env, "TORPOR_CONTEXT_GRACE_MS", 5000),
    shutdownGenerationMs: int(env, "TORPOR_SHUTDOWN_GENERATION_SECONDS", 30) * 1000,
    shutdownHandOffWaitMs: int(env, "TORPOR_SHUTDOWN_HANDOFF_WAIT_SECONDS", 5) * 1000,
    spareContexts: intAtMost(env, "TORPOR_SPARE_CONTEXTS", 0, 0, 64),
    checkpointAfterTurns: intAtMost(env, "TORPOR_CHECKPOINT_AFTER_TURNS", 0, 0, 10_000),
    checkpointIntervalMs: intAtMost(env, "TORPOR_CHECKPOINT_INTERVAL_SECONDS", 0, 0, 365 * 86400) * 1000,
    batchGathering: autoOnOff(env, "TORPOR_BATCH_GATHERING"),
    podName: env.TORPOR_POD_NAME ?? env.HOSTNAME ?? "local",
    nodeName: env.TORPOR_NODE_NAME ?? "local",
  };
}
