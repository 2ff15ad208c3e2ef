import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { PROCESS_TUNING_ENV, PROCESS_TUNING_REASONS, missingProcessTuning } from "../../runtime/model/process-tuning.js";

test("the runtime names each process setting it was started without, and keeps a user's own value", () => {
  assert.deepEqual(missingProcessTuning({}), Object.keys(PROCESS_TUNING_ENV));
  assert.deepEqual(missingProcessTuning({ ...PROCESS_TUNING_ENV, UV_THREADPOOL_SIZE: "8" }), []);
  assert.deepEqual(missingProcessTuning({ MALLOC_ARENA_MAX: "2", MALLOC_MMAP_THRESHOLD_: "131072" }), ["UV_THREADPOOL_SIZE", "GLIBC_TUNABLES"]);
  for (const name of Object.keys(PROCESS_TUNING_ENV)) assert.ok(PROCESS_TUNING_REASONS[name], `${name} has no reason for the warning`);
});

test("the image sets every process setting (no Docker here to run it)", async () => {
  const dockerfile = await readFile(new URL("../../../Dockerfile", import.meta.url), "utf8");
  const env = new Map([...dockerfile.matchAll(/^ENV (.+)$/gm)].flatMap((m) => [...m[1]!.matchAll(/(\w+)=(\S+)/g)].map((kv) => [kv[1]!, kv[2]!] as const)));
  for (const [name, value] of Object.entries(PROCESS_TUNING_ENV)) assert.equal(env.get(name), value, `Dockerfile lacks ENV ${name}=${value}`);
});
