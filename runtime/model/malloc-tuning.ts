// glibc keeps memory that llama.cpp's worker threads free in per-thread arenas, and its dynamic
// mmap threshold moves large buffers from mmap into those arenas after the first big free. Both
// mean a disposed context's scratch buffers stay in RSS and the heap creeps with every
// hibernate/rehydrate cycle (measured: +4 MiB per cycle of a 66 MiB state, unbounded). Two arenas
// and a fixed threshold return them to the OS on dispose. glibc reads these only at process start,
// so whatever launches the runtime (the chart, the image, testbed/local-runtime.ts) sets them.
export const MALLOC_TUNING_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: "2",
  MALLOC_MMAP_THRESHOLD_: "131072",
};

/** Names of the tuning variables the process was started without (empty when tuned). */
export function missingMallocTuning(env: NodeJS.ProcessEnv): string[] {
  return Object.keys(MALLOC_TUNING_ENV).filter((k) => env[k] === undefined);
}
