// A context's CPU threads kept alive between its decodes, through the method
// scripts/build-runtime-addon.sh adds to node-llama-cpp's addon (runtime/native/AddonContextThreadpool.cpp).
//
// node-llama-cpp never attaches a ggml threadpool, so each CPU decode starts its worker threads and
// joins them again; llama-server keeps one pool per context. Attached, SmolLM2 decoded one stream
// at 7.7 ms a token in process against 10.4 without (llama-server: 7.4-7.9), and four sessions
// sharing a context 115-150 tok/s against 70-101 (docs/benchmarks.md).
import type { Llama, LlamaContext } from "node-llama-cpp";

/**
 * How long a pool's idle workers spin for the next decode before they sleep (ggml's 0-100). 0: at
 * once. Four sessions with a context each, 2 cores: 158 tok/s with 0, 78 with 10 (the spinning
 * workers of idle contexts took the cores from the decoding ones); one stream the same either way.
 */
const POLL = 0;

interface AddonContext {
  attachThreadpool(threads: number, poll: number): boolean;
}

/** Whether this process's contexts get persistent threads, or why not (said once, at start-up). */
export function threadpoolSupport(llama: Llama): { ok: true } | { ok: false; reason: string } {
  const proto = (llama as unknown as { _bindings?: { AddonContext?: { prototype: Partial<AddonContext> } } })._bindings?.AddonContext?.prototype;
  if (typeof proto?.attachThreadpool !== "function") {
    return { ok: false, reason: "node-llama-cpp's addon has no torpor threadpool method (scripts/build-runtime-addon.sh did not build it here)" };
  }
  return { ok: true };
}

/**
 * Gives a new context a pool of `threads` CPU threads that live as long as it does (the addon frees
 * them with the context). Call before its first decode. False where the addon could not (no CPU
 * backend): the context then decodes as node-llama-cpp's own do.
 */
export function attachThreadpool(context: LlamaContext, threads: number): boolean {
  const ctx = (context as unknown as { _ctx?: Partial<AddonContext> })._ctx;
  if (typeof ctx?.attachThreadpool !== "function") return false;
  return ctx.attachThreadpool(threads, POLL);
}
