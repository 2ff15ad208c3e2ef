// Settings read once, when the process starts, so whatever launches the runtime (the chart, the
// image, testbed/local-runtime.ts) sets them in its environment; the runtime only warns when one
// is missing. A user's own value is kept.
//
// glibc keeps memory that llama.cpp's worker threads free in per-thread arenas, and its dynamic
// mmap threshold moves large buffers from mmap into those arenas after the first big free. Both
// mean a disposed context's scratch buffers stay in RSS and the heap creeps with every
// hibernate/rehydrate cycle (measured: +4 MiB per cycle of a 66 MiB state, unbounded). Two arenas
// and a fixed threshold return them to the OS on dispose.
//
// node-llama-cpp runs every decode (and every sampling) on libuv's thread pool, and its llama.cpp
// parallelises each decode with OpenMP, whose worker team belongs to the thread that calls it. With
// Node's default 4 pool threads, a generation's decodes and samplings rotate over them, so
// successive tokens run on different teams: 14-21 ms a token on 2 cores against 8-9 ms with a
// pool of 1 or 2 (SmolLM2, 2 threads; llama-server 7.6 ms). A pool of 2 keeps one stream's decodes
// on one thread (each decode and sampling alternate) and still lets two contexts decode, or a state
// save run beside a decode; a pool of 1 serialised 4 contexts (64 tok/s against 113 with 2). perf
// on the 4-thread pool: 37% of the CPU time in ggml's barrier spin (a team thread waiting for its
// partner) and 881 thread migrations in 4 s, against 37 with one pool thread; OpenMP's wait
// policy, spin count and binding did not change it, only the pool size did.
// Where sessions share contexts on the CPU, one batched decode and a sampling per sequence
// alternate, and only a pool of 1 keeps the decodes on one thread (4 streams on a 4-sequence
// context: 110-117 tok/s against 88), but then a state's save or load holds every decode: not
// the default, set it in the pool's env where that suits.
// libuv reads it when the pool first starts, which an ES module entry point does before any of
// the runtime's code runs, so it cannot be set from inside.
export const PROCESS_TUNING_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: "2",
  MALLOC_MMAP_THRESHOLD_: "131072",
  UV_THREADPOOL_SIZE: "2",
};

/** What each setting prevents, for the start-up warning. */
export const PROCESS_TUNING_REASONS: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: "hibernated sessions may not return all their memory to the OS",
  MALLOC_MMAP_THRESHOLD_: "hibernated sessions may not return all their memory to the OS",
  UV_THREADPOOL_SIZE: "CPU decoding may run up to 2x slower (Node's 4 pool threads rotate each decode over OpenMP teams)",
};

/** Names of the settings the process was started without (empty when tuned). */
export function missingProcessTuning(env: NodeJS.ProcessEnv): string[] {
  return Object.keys(PROCESS_TUNING_ENV).filter((k) => env[k] === undefined);
}
