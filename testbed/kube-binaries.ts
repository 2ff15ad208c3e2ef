// The control plane binaries, built from the Go module proxy by scripts/build-kube-binaries.sh
// into a versioned cache (first build: minutes; afterwards instant).
import { spawn } from "node:child_process";
import path from "node:path";
import { REPO_ROOT } from "./paths.js";

export interface KubeBinaries { dir: string; etcd: string; apiserver: string; controllerManager: string; scheduler: string }

export async function ensureKubeBinaries(): Promise<KubeBinaries> {
  const script = path.join(REPO_ROOT, "scripts", "build-kube-binaries.sh");
  const dir = await new Promise<string>((resolve, reject) => {
    let out = "";
    const p = spawn(script, { stdio: ["ignore", "pipe", "inherit"] });
    p.stdout.on("data", (d: Buffer) => { out += d.toString(); });
    p.on("error", reject);
    p.on("exit", (code) => code === 0 ? resolve(out.trim().split("\n").at(-1)!) : reject(new Error(`${script} failed with exit code ${code}`)));
  });
  return {
    dir, etcd: path.join(dir, "etcd"), apiserver: path.join(dir, "kube-apiserver"),
    controllerManager: path.join(dir, "kube-controller-manager"), scheduler: path.join(dir, "kube-scheduler"),
  };
}
