// `make cluster-up` / `make cluster-down` (scripts/cluster.ts), on a stand-in for a running cluster.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { REPO_ROOT } from "../../testbed/paths.js";
import { tempDir } from "../../testbed/temp-dir.js";

const run = promisify(execFile);
const script = path.join(REPO_ROOT, "dist", "scripts", "cluster.js");

describe("the local cluster script", () => {
  it("does not start a second cluster over a running one (it was left running with nothing to stop it), and stops the one there is", async () => {
    const state = await tempDir("torpor-cluster-state-");
    const running = spawn("sleep", ["60"], { stdio: "ignore" });
    const exited = new Promise((r) => running.once("exit", r));
    try {
      await writeFile(path.join(state, "pid"), String(running.pid));
      await writeFile(path.join(state, "env"), "KUBECONFIG=/tmp/first/admin.kubeconfig\nTORPOR_GATEWAY=http://127.0.0.1:1\n");
      const env = { ...process.env, TORPOR_CLUSTER_STATE: state };
      const up = await run(process.execPath, [script, "up"], { env, timeout: 20_000 });
      assert.match(up.stdout, /KUBECONFIG=\/tmp\/first\/admin\.kubeconfig/, "the running cluster's address");
      assert.match(up.stderr, /already running/);
      assert.equal(await readFile(path.join(state, "pid"), "utf8"), String(running.pid), "no second cluster took its place");
      const down = await run(process.execPath, [script, "down"], { env, timeout: 30_000 });
      assert.match(down.stdout, /stopped/);
      await exited;
      assert.equal(running.exitCode ?? running.signalCode, "SIGTERM");
    } finally {
      running.kill("SIGKILL");
    }
  });
});
