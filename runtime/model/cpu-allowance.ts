// How many CPUs this container may keep busy: its cgroup CPU quota (what `resources.limits.cpu`
// becomes) and its affinity mask, whichever is fewer. Neither node-llama-cpp nor llama.cpp reads
// the quota: left to choose, node-llama-cpp ran 4 threads on this 2-core machine (its CPU minimum)
// and llama.cpp counts the node's physical cores. Its threads meet at spin barriers after every
// operation, so one thread more than there are CPUs stalls them all: 16 tokens took 3.5 s with 4
// threads on 2 cores and 28 ms with 2. In a pod limited to 2 CPUs on a 64-core node, a thread per
// core would spend the quota spinning and be throttled for the rest of each period.
import { readFile } from "node:fs/promises";
import os from "node:os";

type Read = (file: string) => Promise<string>;
const readText: Read = (f) => readFile(f, "utf8");

/** The cgroup v2 (cpu.max) or v1 (cfs quota / period) CPU limit, in CPUs; undefined without one. */
export async function cgroupCpuLimit(read: Read = readText): Promise<number | undefined> {
  const v2 = (await read("/sys/fs/cgroup/cpu.max").catch(() => "")).trim().split(/\s+/);
  if (v2.length === 2 && v2[0] !== "max") {
    const [quota, period] = v2.map(Number);
    if (quota! > 0 && period! > 0) return quota! / period!;
  }
  const quota = Number((await read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").catch(() => "")).trim());
  const period = Number((await read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").catch(() => "")).trim());
  return quota > 0 && period > 0 ? quota / period : undefined;
}

/** Threads a context should use when nobody said: the whole CPUs the container may use, at least 1. */
export async function cpuAllowance(read: Read = readText, parallelism = os.availableParallelism()): Promise<number> {
  const limit = await cgroupCpuLimit(read);
  return Math.max(1, Math.min(parallelism, limit === undefined ? parallelism : Math.floor(limit)));
}
