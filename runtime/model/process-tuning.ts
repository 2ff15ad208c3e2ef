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
// node-llama-cpp runs every decode (and every sampling) on libuv's thread pool. With Node's
// default 4 pool threads a generation's decodes rotate over them, and a context without the runtime
// addon's persistent threadpool (context-threadpool.ts) starts its CPU threads on whichever pool
// thread calls it: 14-21 ms a token on 2 cores against 8-9 ms with a pool of 1 or 2 (SmolLM2, 2
// threads; llama-server 7.6 ms). A pool of 2 still lets two contexts decode, or a state save run
// beside a decode; a pool of 1 serialised 4 contexts (64 tok/s against 113 with 2). perf on the
// 4-thread pool: 37% of the CPU time in ggml's barrier spin and 881 thread migrations in 4 s,
// against 37 with one pool thread.
// libuv reads it when the pool first starts, which an ES module entry point does before any of
// the runtime's code runs, so it cannot be set from inside.
//
// A context's KV cache and compute buffers are first touched when it is allocated (llama.cpp
// clears the cache), one page fault per 4 KiB: in a VM, allocating a context for a 541 MiB state
// took 820-1,400 ms (medians of three processes). glibc's hugetlb tunable asks for transparent
// huge pages (madvise) on its large mappings: 410-768 ms, and a 128 MiB context 26-30 ms against
// 100-109 (docs/benchmarks.md). Where the node's THP setting is "never" it changes nothing; freed
// contexts are still unmapped, so hibernation gives their memory back as before.
export const PROCESS_TUNING_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: "2",
  MALLOC_MMAP_THRESHOLD_: "131072",
  UV_THREADPOOL_SIZE: "2",
  GLIBC_TUNABLES: "glibc.malloc.hugetlb=1",
};

/** What each setting prevents, for the start-up warning. */
export const PROCESS_TUNING_REASONS: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: "hibernated sessions may not return all their memory to the OS",
  MALLOC_MMAP_THRESHOLD_: "hibernated sessions may not return all their memory to the OS",
  UV_THREADPOOL_SIZE: "CPU decoding may run up to 2x slower (Node's 4 pool threads rotate each decode over their threads)",
  GLIBC_TUNABLES: "allocating a context (a cold rehydrate) may run 2-4x slower (4 KiB page faults instead of transparent huge pages)",
};

/** Names of the settings the process was started without (empty when tuned). */
export function missingProcessTuning(env: NodeJS.ProcessEnv): string[] {
  return Object.keys(PROCESS_TUNING_ENV).filter((k) => env[k] === undefined);
}
