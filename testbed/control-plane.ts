// A real control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
// Each component logs to its own file, shown when a start fails; stop() leaves no process behind.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import path from "node:path";
import { freePort } from "./local-runtime.js";
import { ensureKubeBinaries } from "./kube-binaries.js";
import { createPki, type Pki } from "./pki.js";

export interface ControlPlane {
  dir: string;
  pki: Pki;
  apiserverUrl: string;
  apiserverPort: number;
  kubeconfig: string;
  /** Restarts the API server on the same port and etcd data (for watch-recovery tests). */
  restartApiserver(): Promise<void>;
  stop(): Promise<void>;
}

interface Component { name: string; proc: ChildProcess; log: string }

async function tail(file: string, lines = 40): Promise<string> {
  const text = await readFile(file, "utf8").catch(() => "");
  return text.split("\n").slice(-lines).join("\n");
}

function start(dir: string, name: string, bin: string, args: string[]): Component {
  const log = path.join(dir, `${name}.log`);
  const out = createWriteStream(log, { flags: "a" });
  // Own process group, so stop() can take down anything the component spawned.
  const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
  // A failed spawn (ENOMEM, EAGAIN) must surface as this component's failure, not crash the suite.
  proc.on("error", (err) => out.write(`spawn failed: ${err.message}\n`));
  out.on("error", () => undefined);
  proc.stdout!.pipe(out);
  proc.stderr!.pipe(out);
  return { name, proc, log };
}

async function stopComponent(c: Component, graceMs = 5000): Promise<void> {
  if (c.proc.pid === undefined || c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.proc.once("exit", () => r()));
  try { process.kill(-c.proc.pid!, "SIGTERM"); } catch { /* gone */ }
  const timer = setTimeout(() => { try { process.kill(-c.proc.pid!, "SIGKILL"); } catch { /* gone */ } }, graceMs);
  await exited;
  clearTimeout(timer);
}

function httpsGet(url: string, pki: Pki): Promise<{ status: number; body: string }> {
  return Promise.all([readFile(pki.caCert), readFile(pki.adminCert), readFile(pki.adminKey)]).then(([ca, cert, key]) =>
    new Promise((resolve, reject) => {
      const req = https.get(url, { ca, cert, key, timeout: 2000 }, (res) => {
        let body = "";
        res.on("data", (d) => { body += d; });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on("error", reject);
      req.on("timeout", () => req.destroy(new Error("timeout")));
    }));
}

async function waitFor(what: Component, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (what.proc.exitCode !== null) throw new Error(`${what.name} exited with ${what.proc.exitCode}; last log lines:\n${await tail(what.log)}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what.name} not healthy after ${timeoutMs} ms; last log lines:\n${await tail(what.log)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export function kubeconfigYaml(server: string, pki: { caData: string; certData: string; keyData: string }, user = "testbed-admin"): string {
  return `apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: ${server}
    certificate-authority-data: ${pki.caData}
users:
- name: ${user}
  user:
    client-certificate-data: ${pki.certData}
    client-key-data: ${pki.keyData}
contexts:
- name: testbed
  context: {cluster: testbed, user: ${user}, namespace: default}
current-context: testbed
`;
}

/**
 * Ports come from the kernel and are released before the components bind them, so another
 * process can take one in between (an outbound connection's ephemeral port, say): a start whose
 * component exits is retried on fresh ports and a fresh etcd.
 */
export async function startControlPlane(dir: string, attempts = 3): Promise<ControlPlane> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startControlPlaneOnce(dir, attempt);
    } catch (err) {
      if (attempt >= attempts) throw err;
      process.stderr.write(`testbed: control plane start ${attempt} of ${attempts} failed, retrying: ${(err as Error).message}\n`);
    }
  }
}

async function startControlPlaneOnce(dir: string, attempt: number): Promise<ControlPlane> {
  const bins = await ensureKubeBinaries();
  const pki = await createPki(dir);
  const [etcdPort, peerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
  const b64 = async (f: string) => (await readFile(f)).toString("base64");
  const kubeconfig = path.join(dir, "admin.kubeconfig");
  const apiserverUrl = `https://127.0.0.1:${apiPort}`;
  await writeFile(kubeconfig, kubeconfigYaml(apiserverUrl, { caData: await b64(pki.caCert), certData: await b64(pki.adminCert), keyData: await b64(pki.adminKey) }));
  const components: Component[] = [];
  const stopAll = async () => { for (const c of components.reverse()) await stopComponent(c); components.length = 0; };

  try {
    const etcd = start(dir, "etcd", bins.etcd, [
      "--name=testbed", `--data-dir=${path.join(dir, `etcd-data-${attempt}`)}`,
      `--listen-client-urls=http://127.0.0.1:${etcdPort}`, `--advertise-client-urls=http://127.0.0.1:${etcdPort}`,
      `--listen-peer-urls=http://127.0.0.1:${peerPort}`, `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
      `--initial-cluster=testbed=http://127.0.0.1:${peerPort}`,
      // Speed over durability: the testbed's etcd is thrown away.
      "--unsafe-no-fsync", "--log-level=warn",
    ]);
    components.push(etcd);
    await waitFor(etcd, async () => (await fetch(`http://127.0.0.1:${etcdPort}/health`)).ok, 30_000);

    const apiserverArgs = [
      `--etcd-servers=http://127.0.0.1:${etcdPort}`,
      "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", `--secure-port=${apiPort}`,
      `--tls-cert-file=${pki.serverCert}`, `--tls-private-key-file=${pki.serverKey}`, `--client-ca-file=${pki.caCert}`,
      `--service-account-key-file=${pki.saPub}`, `--service-account-signing-key-file=${pki.saKey}`,
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC", "--allow-privileged=true",
      // Pods of a failed node are evicted after seconds, not the default five minutes.
      "--default-not-ready-toleration-seconds=5", "--default-unreachable-toleration-seconds=5",
      "--enable-priority-and-fairness=false", "--profiling=false", "--v=1",
    ];
    let apiserver = start(dir, "kube-apiserver", bins.apiserver, apiserverArgs);
    components.push(apiserver);
    const apiReady = async () => (await httpsGet(`${apiserverUrl}/readyz`, pki)).status === 200;
    await waitFor(apiserver, apiReady, 90_000);

    const common = [`--kubeconfig=${kubeconfig}`, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=1"];
    const cm = start(dir, "kube-controller-manager", bins.controllerManager, [
      ...common, `--authentication-kubeconfig=${kubeconfig}`, `--authorization-kubeconfig=${kubeconfig}`,
      `--service-account-private-key-file=${pki.saKey}`, `--root-ca-file=${pki.caCert}`,
      "--use-service-account-credentials=false",
      "--node-monitor-period=2s", "--node-monitor-grace-period=12s",
      "--controllers=*,-bootstrapsigner,-tokencleaner,-cloud-node-lifecycle,-route,-service,-nodeipam",
    ]);
    components.push(cm);
    const sched = start(dir, "kube-scheduler", bins.scheduler, [...common]);
    components.push(sched);
    // Both have their serving ports off; give them a moment and make sure they did not exit.
    await new Promise((r) => setTimeout(r, 500));
    for (const c of [cm, sched]) if (c.proc.exitCode !== null) throw new Error(`${c.name} exited: ${await tail(c.log)}`);

    return {
      dir, pki, apiserverUrl, apiserverPort: apiPort, kubeconfig,
      async restartApiserver() {
        await stopComponent(apiserver);
        apiserver = start(dir, "kube-apiserver", bins.apiserver, apiserverArgs);
        components.splice(1, 1, apiserver);
        await waitFor(apiserver, apiReady, 90_000);
      },
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
