// Starts the real runtime (dist/runtime/main.js) as a child process on a loopback port:
// used by the local demo, the tests and the benchmarks.
import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { RuntimeClient } from "../contract/runtime-client.js";
import { PROCESS_TUNING_ENV } from "../runtime/model/process-tuning.js";
const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export const TEST_TOKEN = "test-runtime-token-0123456789";

export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface RuntimeProcess {
  proc: ChildProcess;
  client: RuntimeClient;
  url: string;
  output: () => string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
  rssBytes: () => Promise<number>;
}

/** `wrap` prefixes the command (e.g. unshare + a mount for fault tests); it must exec the runtime. */
export async function startRuntime(env: Record<string, string>, opts: { wrap?: string[] } = {}): Promise<RuntimeProcess> {
  const port = await freePort();
  let out = "";
  const argv = [...(opts.wrap ?? []), process.execPath, path.join(DIST, "runtime", "main.js")];
  const proc = spawn(argv[0]!, argv.slice(1), {
    env: {
      ...process.env, ...PROCESS_TUNING_ENV, TORPOR_HOST: "127.0.0.1", TORPOR_PORT: String(port), TORPOR_RUNTIME_TOKEN: TEST_TOKEN,
      TORPOR_THREADS: "1", TORPOR_GPU: "false", TORPOR_LOG_LEVEL: "info", ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  proc.stdout!.on("data", (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on("data", (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`runtime exited with ${proc.exitCode}:\n${out}`);
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { proc.kill("SIGKILL"); throw new Error(`runtime did not become ready:\n${out}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    proc, url, client: new RuntimeClient(url, TEST_TOKEN), output: () => out,
    stop: async (signal = "SIGTERM") => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
    rssBytes: async () => {
      const status = await readFile(`/proc/${proc.pid}/status`, "utf8");
      const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]);
      return kb * 1024;
    },
  };
}
