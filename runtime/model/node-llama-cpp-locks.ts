// node-llama-cpp serialises work on a context and on a sequence with lifecycle-utils locks keyed
// by its own objects. The runtime takes the same locks around what it does natively (state files,
// the decode loop), which excludes anything only if both import the same lifecycle-utils module.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** Whether node-llama-cpp's locks are the ones the runtime imports, or why not (the locks taken here would exclude nothing). */
export function sharedLocks(): { ok: true } | { ok: false; reason: string } {
  const ours = fileURLToPath(import.meta.resolve("lifecycle-utils"));
  const theirs = createRequire(fileURLToPath(import.meta.resolve("node-llama-cpp"))).resolve("lifecycle-utils");
  if (ours !== theirs) return { ok: false, reason: `node-llama-cpp uses another lifecycle-utils (${theirs}) than the runtime (${ours})` };
  return { ok: true };
}
