// The default memory budgets of resident contexts. RAM: what the container may use (its cgroup
// memory limit) minus what the process needs anyway (the model, the runtime, headroom). VRAM: what
// the card has free once the model is loaded, less headroom. Without them a few tenants choosing
// large contextSize values OOM-kill a shared runtime (or fail every allocation on a full card).
import { readFile, stat } from "node:fs/promises";

/** The cgroup v2 (or v1) memory limit of this container, or undefined when there is none. */
export async function cgroupMemoryLimit(read = (f: string) => readFile(f, "utf8")): Promise<number | undefined> {
  for (const file of ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]) {
    const raw = (await read(file).catch(() => "")).trim();
    if (!raw || raw === "max") continue;
    const n = Number(raw);
    // cgroup v1 reports "no limit" as a huge number near 2^63.
    if (Number.isFinite(n) && n > 0 && n < 2 ** 60) return n;
  }
  return undefined;
}

/**
 * Budget = limit - model file - a fixed allowance for the runtime itself - 10% headroom for
 * allocator slack. 0 (off) when there is no limit; never below one small context's worth.
 */
export async function defaultMemoryBudget(modelPath: string, limit?: number): Promise<number> {
  if (!limit) return 0;
  const model = await stat(modelPath).then((s) => s.size, () => 0);
  const runtimeAllowance = 256 * 2 ** 20;
  return Math.max(64 * 2 ** 20, Math.floor(limit * 0.9) - model - runtimeAllowance);
}

/**
 * VRAM budget = 90% of the VRAM free after the model loaded: the rest is left for llama.cpp's
 * compute buffers growing with batch shape and for fragmentation. 0 (off) without a GPU.
 */
export function defaultVramBudget(freeAfterModel: number, onGpu: boolean): number {
  return onGpu && freeAfterModel > 0 ? Math.floor(freeAfterModel * 0.9) : 0;
}
