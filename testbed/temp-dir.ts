// Temporary folders for tests, removed when the test process exits (hibernation files must not
// pile up in /tmp across runs).
import { rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) {
    try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort: a mount may still be busy */ }
  }
});

export async function tempDir(prefix: string): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), prefix));
  dirs.push(d);
  return d;
}
