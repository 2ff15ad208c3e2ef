// The whole testbed: real control plane + test kubelet, driven with real kubectl and helm.
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { CACHE_DIR, REPO_ROOT } from "./paths.js";
import { startControlPlane, type ControlPlane } from "./control-plane.js";
import { ensureKubeTools, type KubeTools } from "./kube-tools.js";
import { TestKubelet, type TestNodeSpec } from "./test-kubelet.js";

const run = promisify(execFile);

/** Host path every node shares, like the extraMount in kind-config.yaml. */
export const SHARED_HOST_PATH = "/var/lib/torpor-shared";

/** Where a shared host path lives on this machine (what kind's extraMounts map it to). */
export const sharedFolder = (tb: Pick<Testbed, "dir">, hostPath: string): string => path.join(tb.dir, "shared", hostPath);

/**
 * What `make kind-up` does on the host before the chart goes in: the shared folder behind a
 * hostPath volume, writable by the runtime's non-root user (fsGroup does not apply to hostPath).
 */
export async function prepareSharedFolder(tb: Pick<Testbed, "dir">, hostPath: string): Promise<string> {
  const dir = sharedFolder(tb, hostPath);
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o1777);
  return dir;
}

export const DEFAULT_NODES: TestNodeSpec[] = [
  { name: "node-a", labels: { "topology.kubernetes.io/zone": "zone-a" } },
  { name: "node-b", labels: { "topology.kubernetes.io/zone": "zone-b" } },
  { name: "node-gpu", gpus: 1, labels: { "nvidia.com/gpu.present": "true", "topology.kubernetes.io/zone": "zone-a" } },
];

export interface Testbed {
  dir: string;
  controlPlane: ControlPlane;
  kubelet: TestKubelet;
  kubeconfig: string;
  kc: KubeConfig;
  tools: KubeTools;
  kubectl(args: string[], input?: string): Promise<string>;
  helm(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

export async function startTestbed(opts: { nodes?: TestNodeSpec[]; keepDir?: boolean } = {}): Promise<Testbed> {
  if (process.platform !== "linux") throw new Error("the testbed runs pods in Linux mount namespaces; it needs Linux");
  const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-testbed-"));
  const tools = await ensureKubeTools();
  const controlPlane = await startControlPlane(dir);
  const kubelet = new TestKubelet({
    kubeconfig: controlPlane.kubeconfig, root: dir, nodes: opts.nodes ?? DEFAULT_NODES, sharedHostPaths: [SHARED_HOST_PATH], imagePaths: [CACHE_DIR],
    apiserverPort: controlPlane.apiserverPort, caCertPem: await readFile(controlPlane.pki.caCert, "utf8"), cwd: REPO_ROOT,
  });
  try {
    await kubelet.start();
  } catch (err) {
    await controlPlane.stop();
    throw err;
  }
  const kc = new KubeConfig();
  kc.loadFromFile(controlPlane.kubeconfig);
  const env = { ...process.env, KUBECONFIG: controlPlane.kubeconfig, HELM_CACHE_HOME: path.join(dir, "helm-cache"), HELM_CONFIG_HOME: path.join(dir, "helm-config"), HELM_DATA_HOME: path.join(dir, "helm-data") };
  const exec = async (bin: string, args: string[], input?: string): Promise<string> => {
    try {
      const child = run(bin, args, { env, maxBuffer: 64 << 20 });
      if (input !== undefined) { child.child.stdin!.write(input); child.child.stdin!.end(); }
      return (await child).stdout;
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      throw Object.assign(new Error(`${path.basename(bin)} ${args.join(" ")} failed: ${e.stderr || e.message}`), { stderr: e.stderr ?? "", stdout: e.stdout ?? "" });
    }
  };
  return {
    dir, controlPlane, kubelet, kubeconfig: controlPlane.kubeconfig, kc, tools,
    kubectl: (args, input) => exec(tools.kubectl, args, input),
    helm: (args) => exec(tools.helm, args),
    async stop() {
      await kubelet.stop();
      await controlPlane.stop();
      // TORPOR_TESTBED_KEEP=1 keeps every pod's log (under pods/) and the component logs for a post-mortem.
      if (!opts.keepDir && !process.env.TORPOR_TESTBED_KEEP) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}
