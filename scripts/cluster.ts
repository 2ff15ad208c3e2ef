// `make cluster-up` / `make cluster-down`: the local testbed with torpor installed by its Helm
// chart (generated test model), for the demo and for trying kubectl by hand.
//   node dist/scripts/cluster.js up     starts it in the background, prints KUBECONFIG=... and TORPOR_GATEWAY=...
//   node dist/scripts/cluster.js down   stops it
import { spawn } from "node:child_process";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { installChart, RELEASE_NAMESPACE } from "../testbed/chart-install.js";
import { forwardService, type ServiceForward } from "../testbed/service-forward.js";
import { startTestbed } from "../testbed/testbed.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
// TORPOR_CLUSTER_STATE: for the tests of this script, which must not touch a cluster the checkout runs.
const STATE = process.env.TORPOR_CLUSTER_STATE ?? path.join(ROOT, ".torpor", "cluster");
async function serve(): Promise<void> {
  const tb = await startTestbed();
  let forward: ServiceForward | undefined;
  const stop = async () => { await forward?.close(); await tb.stop(); await rm(STATE, { recursive: true, force: true }); process.exit(0); };
  process.on("SIGTERM", () => void stop());
  process.on("SIGINT", () => void stop());
  try {
    await installChart(tb);
    // What `kubectl port-forward svc/torpor-gateway` is on kind: an address that outlives the pod.
    forward = await forwardService(tb.kc, RELEASE_NAMESPACE, "app.kubernetes.io/component=gateway", 8000);
    await writeFile(path.join(STATE, "env"), `KUBECONFIG=${tb.kubeconfig}\nTORPOR_GATEWAY=${forward.url}\nPATH=${path.dirname(tb.tools.kubectl)}:$PATH\n`);
  } catch (err) {
    await writeFile(path.join(STATE, "error"), String((err as Error).stack ?? err));
    await stop();
  }
}

/** The pid of the cluster this checkout started, if it still runs. */
async function runningPid(): Promise<number | undefined> {
  const pid = Number(await readFile(path.join(STATE, "pid"), "utf8").catch(() => "0"));
  if (!pid) return undefined;
  try { process.kill(pid, 0); return pid; } catch { return undefined; }
}

async function up(): Promise<void> {
  // A second `make cluster-up` started a second cluster over the first one's files: the first
  // kept running (API server, etcd, pods) with nothing left to stop it.
  const running = await runningPid();
  if (running) {
    console.error(`a local cluster is already running (pid ${running}); \`make cluster-down\` stops it`);
  } else {
    await mkdir(STATE, { recursive: true });
    await rm(path.join(STATE, "env"), { force: true });
    await rm(path.join(STATE, "error"), { force: true });
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), "serve"], { detached: true, stdio: ["ignore", "ignore", "ignore"] });
    child.unref();
    await writeFile(path.join(STATE, "pid"), String(child.pid));
  }
  const deadline = Date.now() + 600_000;
  for (;;) {
    const env = await readFile(path.join(STATE, "env"), "utf8").catch(() => "");
    if (env) { process.stdout.write(env.split("\n").filter((l) => !l.startsWith("PATH=")).join("\n")); return; }
    const error = await readFile(path.join(STATE, "error"), "utf8").catch(() => "");
    if (error || Date.now() > deadline) { console.error(`cluster-up failed:\n${error || "timed out"}`); process.exit(1); }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function down(): Promise<void> {
  const pid = await runningPid();
  if (!pid) { await rm(STATE, { recursive: true, force: true }); console.log("no local cluster is running"); return; }
  try { process.kill(pid, "SIGTERM"); } catch { /* already gone */ }
  for (let i = 0; i < 100; i++) {
    try { process.kill(pid, 0); } catch { break; }
    await new Promise((r) => setTimeout(r, 200));
  }
  await rm(STATE, { recursive: true, force: true });
  console.log("local cluster stopped");
}

const cmd = process.argv[2];
if (cmd === "serve") await serve();
else if (cmd === "up") await up();
else if (cmd === "down") await down();
else if (cmd !== undefined) { console.error("usage: cluster.js up|down"); process.exit(2); }
