// The README's quickstart block, run verbatim (bash) step by step, printing each step's result.
// Needs KUBECONFIG and TORPOR_GATEWAY (from `make cluster-up`), kubectl and curl on PATH.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT as ROOT } from "./paths.js";

/** The commands between the quickstart markers, with heredocs and continuations kept whole. */
export function quickstartSteps(readme = readFileSync(path.join(ROOT, "README.md"), "utf8")): string[] {
  const block = /<!-- quickstart:begin -->\s*```sh\n([\s\S]*?)```\s*<!-- quickstart:end -->/.exec(readme)?.[1];
  if (!block) throw new Error("README.md has no quickstart block");
  const steps: string[] = [];
  let current = "";
  let heredoc: string | undefined;
  for (const line of block.split("\n")) {
    current += (current ? "\n" : "") + line;
    if (heredoc) { if (line.trim() === heredoc) heredoc = undefined; else continue; }
    const start = /<<'?(\w+)'?/.exec(line);
    if (start && !current.endsWith(start[1]!)) { heredoc = start[1]; continue; }
    if (line.endsWith("\\")) continue;
    if (current.trim()) steps.push(current);
    current = "";
  }
  return steps;
}

export function runQuickstart(env: NodeJS.ProcessEnv = process.env, print = true): void {
  const steps = quickstartSteps();
  // Steps share shell variables (TOKEN), so each runs with everything before it replayed quietly.
  let prefix = "set -euo pipefail\n";
  steps.forEach((step, i) => {
    if (print) console.log(`\n[${i + 1}/${steps.length}] $ ${step.split("\n")[0]}${step.includes("\n") ? " ..." : ""}`);
    const isAssignment = /^[A-Z_]+=\$\(/.test(step);
    const r = spawnSync("bash", ["-c", prefix + step], { env, encoding: "utf8" });
    if (print && r.stdout.trim()) console.log(r.stdout.trim().split("\n").map((l) => `    ${l}`).join("\n"));
    if (r.status !== 0) throw new Error(`quickstart step ${i + 1} failed (exit ${r.status}):\n${step}\n${r.stderr}`);
    if (isAssignment) prefix += step + "\n";
  });
}
