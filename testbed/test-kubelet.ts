// A small kubelet for the testbed. It registers Nodes (labels, allocatable resources, GPUs) and
// keeps their leases fresh, then runs every pod the real scheduler binds to them: the image is
// ignored and the container's command/args run as local processes from this checkout, each pod on
// its own loopback IP, in its own mount namespace where its volumes appear at their mountPaths.
// Status is reported as a kubelet would (phase, podIP, container states, Ready from the readiness
// probe); startup and liveness probes kill and restart; deletion gets SIGTERM, the grace period,
// then SIGKILL; restartPolicy is honoured.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import {
  CoordinationV1Api, CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions,
  type V1Container, type V1Pod,
} from "@kubernetes/client-node";
import { expand, resolveEnv, type PodRuntimeInfo } from "./pod-environment.js";
import { runProbe } from "./pod-probe.js";
import { resolveVolume, type VolumeLayout } from "./pod-volumes.js";

export interface TestNodeSpec {
  name: string;
  labels?: Record<string, string>;
  gpus?: number;
  cpu?: string;
  memory?: string;
}

export interface TestKubeletOptions {
  kubeconfig: string;
  root: string;
  nodes: TestNodeSpec[];
  sharedHostPaths: string[];
  /** Host folders pods may mount as they are (see VolumeLayout.imagePaths). */
  imagePaths?: string[];
  apiserverPort: number;
  caCertPem: string;
  /** Where relative commands run: the checkout. */
  cwd: string;
  syncMs?: number;
}

const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

/** Kubernetes quantities as bytes: 1Mi, 512Ki, 2G, 1000. */
export function quantityBytes(q: string | number): number {
  const m = /^([0-9.]+)([KMGT]i?|[kmgt])?$/.exec(String(q).trim());
  if (!m) throw new Error(`unsupported quantity ${q}`);
  const unit = m[2] ?? "";
  const pow = { "": 0, k: 1, K: 1, M: 2, m: 2, G: 3, g: 3, T: 4, t: 4 }[unit.replace("i", "") as "K"] ?? 0;
  return Math.round(Number(m[1]) * (unit.endsWith("i") ? 1024 : 1000) ** pow);
}
const microTime = (d = new Date()) => d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

interface ContainerRun {
  spec: V1Container;
  proc?: ChildProcess;
  restartCount: number;
  startedAt?: string;
  finishedAt?: string;
  exitCode?: number;
  reason?: string;
  ready: boolean;
  probeFailures: number;
  nextProbeAt: number;
  nextStartAt: number;
  starting: boolean;
  /** The startup probe has passed (or there is none): liveness and readiness probes run from then. */
  started: boolean;
  livenessFailures: number;
  nextLivenessAt: number;
  /** Set when a failed liveness or startup probe had the container killed: SIGKILL after the grace period. */
  killAt?: number;
  /** The previous run's end, reported as lastState like the kubelet does. */
  lastTerminated?: { exitCode: number; reason: string; startedAt?: string; finishedAt?: string };
}

interface PodRun {
  uid: string;
  namespace: string;
  name: string;
  node: string;
  ip: string;
  startTime: string;
  containers: ContainerRun[];
  mounts?: Map<string, string>;
  env?: Map<string, Record<string, string>>;
  terminatingSince?: number;
  graceMs: number;
  lastStatus?: string;
  failed?: string;
}

export class TestKubelet {
  private readonly kc = new KubeConfig();
  private readonly core: CoreV1Api;
  private readonly coord: CoordinationV1Api;
  private readonly pods = new Map<string, PodRun>();
  private readonly deadNodes = new Set<string>();
  private nextIp = 1;
  /**
   * Each testbed takes its pod IPs from its own 127.x/16, so processes a killed run left behind
   * (or a second testbed on the machine) never answer on this one's pod addresses.
   */
  private readonly ipBlock = 2 + Math.floor(Math.random() * 250);
  private timers: NodeJS.Timeout[] = [];
  private syncing = false;
  private stopped = false;
  private readonly layout: VolumeLayout;
  private readonly unready = new Set<string>();
  private readonly images = new Set<string>();

  constructor(private readonly opts: TestKubeletOptions) {
    this.kc.loadFromFile(opts.kubeconfig);
    this.core = this.kc.makeApiClient(CoreV1Api);
    this.coord = this.kc.makeApiClient(CoordinationV1Api);
    this.layout = { root: opts.root, sharedHostPaths: opts.sharedHostPaths, ...(opts.imagePaths ? { imagePaths: opts.imagePaths } : {}), caCertPem: opts.caCertPem };
  }

  get nodeNames(): string[] { return this.opts.nodes.map((n) => n.name); }

  async start(): Promise<void> {
    for (const n of this.opts.nodes) await this.withRetry(`register node ${n.name}`, () => this.registerNode(n));
    await this.heartbeat();
    this.timers.push(setInterval(() => void this.heartbeat(), 2000));
    this.timers.push(setInterval(() => void this.sync(), this.opts.syncMs ?? 250));
  }

  /**
   * Images "on the nodes", as `kind load docker-image` puts them there. A container whose
   * imagePullPolicy is Never must name one of them (ErrImageNeverPull otherwise): that is how a
   * chart that renders another image than the one the user built and loaded fails on kind. The
   * test kubelet runs every container from this checkout, so other policies are not checked.
   */
  loadImages(...refs: string[]): void {
    for (const r of refs) this.images.add(r);
  }

  private checkImage(c: V1Container): void {
    if (c.imagePullPolicy !== "Never" || this.images.size === 0) return;
    const image = c.image ?? "";
    if (!this.images.has(image)) {
      throw new Error(`ErrImageNeverPull: container ${c.name} wants image "${image}" with imagePullPolicy Never, but the nodes have only ${[...this.images].join(", ")} (what kind load docker-image put there)`);
    }
  }

  /** Simulates a node failure: heartbeats stop and every process on the node dies at once. */
  failNode(name: string): void {
    this.deadNodes.add(name);
    for (const [uid, p] of this.pods) {
      if (p.node !== name) continue;
      for (const c of p.containers) this.signal(c, "SIGKILL");
      this.pods.delete(uid);
    }
  }

  /**
   * Fault injection: the pod's readiness probes fail (as under a probe timeout or a partition
   * between kubelet and pod) while its processes keep running and serving; `false` heals it.
   */
  failReadiness(namespace: string, name: string, failing = true): void {
    const key = `${namespace}/${name}`;
    if (failing) this.unready.add(key); else this.unready.delete(key);
  }

  /** Processes of a pod (for fault-injection tests). */
  processes(namespace: string, name: string): ChildProcess[] {
    return [...this.pods.values()].filter((p) => p.namespace === namespace && p.name === name)
      .flatMap((p) => p.containers.map((c) => c.proc).filter((x): x is ChildProcess => !!x));
  }

  podIP(namespace: string, name: string): string | undefined {
    return [...this.pods.values()].find((p) => p.namespace === namespace && p.name === name)?.ip;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    const exits: Promise<void>[] = [];
    for (const p of this.pods.values()) {
      for (const c of p.containers) {
        if (!c.proc || c.proc.exitCode !== null || c.proc.signalCode !== null) continue;
        const proc = c.proc;
        exits.push(new Promise((r) => proc.once("exit", () => r())));
        this.signal(c, "SIGTERM");
        setTimeout(() => this.signal(c, "SIGKILL"), 5000).unref();
      }
    }
    await Promise.all(exits);
    this.pods.clear();
  }

  /** A fresh API server can still answer 5xx/429 for a moment after /readyz; a 4xx is final. */
  private async withRetry(what: string, fn: () => Promise<void>, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try { return await fn(); } catch (err) {
        const code = (err as { code?: number }).code ?? 0;
        const transient = code === 0 || code === 429 || code >= 500;
        if (!transient || Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private async registerNode(n: TestNodeSpec): Promise<void> {
    const capacity: Record<string, string> = { cpu: n.cpu ?? "8", memory: n.memory ?? "32Gi", pods: "110", "ephemeral-storage": "100Gi" };
    if (n.gpus) capacity["nvidia.com/gpu"] = String(n.gpus);
    await this.core.createNode({ body: {
      metadata: { name: n.name, labels: { "kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", ...n.labels } },
    } }).catch((err: { code?: number }) => { if (err.code !== 409) throw err; }); // a retry after a lost reply
    await this.writeNodeStatus(n.name, capacity);
  }

  private async writeNodeStatus(name: string, capacity?: Record<string, string>): Promise<void> {
    const now = new Date().toISOString();
    const cond = (type: string, status: string, reason: string) => ({ type, status, reason, message: reason, lastHeartbeatTime: now, lastTransitionTime: now });
    await this.core.patchNodeStatus({ name, body: { status: {
      ...(capacity ? { capacity, allocatable: capacity } : {}),
      conditions: [
        cond("Ready", "True", "KubeletReady"), cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure"), cond("PIDPressure", "False", "KubeletHasSufficientPID"),
      ],
      addresses: [{ type: "InternalIP", address: "127.0.0.1" }, { type: "Hostname", address: name }],
      nodeInfo: {
        machineID: name, systemUUID: name, bootID: name, kernelVersion: "testbed", osImage: "torpor testbed",
        containerRuntimeVersion: "testbed://processes", kubeletVersion: "v1.35.4", kubeProxyVersion: "", operatingSystem: "linux", architecture: "amd64",
      },
    } } }, merge);
  }

  private heartbeats = 0;
  private async heartbeat(): Promise<void> {
    this.heartbeats++;
    await Promise.all(this.opts.nodes.filter((n) => !this.deadNodes.has(n.name)).map(async (n) => {
      try {
        try {
          await this.coord.patchNamespacedLease({ name: n.name, namespace: "kube-node-lease", body: { spec: { holderIdentity: n.name, renewTime: microTime() } } }, merge);
        } catch (err) {
          if ((err as { code?: number }).code !== 404) throw err;
          await this.coord.createNamespacedLease({ namespace: "kube-node-lease", body: {
            metadata: { name: n.name, namespace: "kube-node-lease" }, spec: { holderIdentity: n.name, leaseDurationSeconds: 40 },
          } });
        }
        if (this.heartbeats % 5 === 0) await this.writeNodeStatus(n.name);
      } catch { /* the API server may be restarting; the next beat retries */ }
    }));
  }

  private async sync(): Promise<void> {
    if (this.syncing || this.stopped) return;
    this.syncing = true;
    try {
      const list = await this.core.listPodForAllNamespaces({});
      const live = new Set(this.opts.nodes.map((n) => n.name).filter((n) => !this.deadNodes.has(n)));
      const seen = new Set<string>();
      for (const pod of list.items) {
        const node = pod.spec?.nodeName;
        if (!node || !live.has(node)) continue;
        const uid = pod.metadata!.uid!;
        seen.add(uid);
        let run = this.pods.get(uid);
        if (!run) {
          if (pod.metadata?.deletionTimestamp) { await this.finalizeDeletion(pod); continue; }
          if (pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed") continue;
          run = this.admit(pod, node);
        }
        await this.syncPod(pod, run);
      }
      for (const [uid, run] of this.pods) {
        if (!seen.has(uid)) {
          for (const c of run.containers) this.signal(c, "SIGKILL");
          this.pods.delete(uid);
        }
      }
    } catch { /* API server unavailable: level-triggered, the next round catches up */ } finally {
      this.syncing = false;
    }
  }

  private admit(pod: V1Pod, node: string): PodRun {
    const n = this.nextIp++;
    const run: PodRun = {
      uid: pod.metadata!.uid!, namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, node,
      ip: `127.${this.ipBlock}.${(n >> 8) & 255}.${n & 255}`, startTime: new Date().toISOString(), graceMs: 30_000,
      containers: (pod.spec?.containers ?? []).map((spec) => ({
        spec, restartCount: 0, ready: false, probeFailures: 0, nextProbeAt: 0, nextStartAt: 0, starting: false, started: false, livenessFailures: 0, nextLivenessAt: 0,
      })),
    };
    this.pods.set(run.uid, run);
    return run;
  }

  private async syncPod(pod: V1Pod, run: PodRun): Promise<void> {
    if (pod.metadata?.deletionTimestamp) {
      if (run.terminatingSince === undefined) {
        run.terminatingSince = Date.now();
        run.graceMs = (pod.metadata.deletionGracePeriodSeconds ?? 30) * 1000;
        for (const c of run.containers) this.signal(c, "SIGTERM");
      } else if (Date.now() - run.terminatingSince > run.graceMs) {
        for (const c of run.containers) this.signal(c, "SIGKILL");
      }
      if (run.containers.every((c) => !this.running(c))) {
        this.pods.delete(run.uid);
        await this.finalizeDeletion(pod);
      }
      return;
    }
    const policy = pod.spec?.restartPolicy ?? "Always";
    for (const c of run.containers) {
      if (c.killAt !== undefined && Date.now() > c.killAt) this.signal(c, "SIGKILL");
      if (this.running(c) || c.starting) continue;
      const exited = c.exitCode !== undefined;
      const restart = !exited || policy === "Always" || (policy === "OnFailure" && c.exitCode !== 0);
      if (restart && Date.now() >= c.nextStartAt) await this.startContainer(pod, run, c);
    }
    await this.probe(pod, run);
    await this.reportStatus(pod, run, policy);
  }

  private running(c: ContainerRun): boolean {
    return !!c.proc && c.proc.exitCode === null && c.proc.signalCode === null;
  }

  private signal(c: ContainerRun, sig: NodeJS.Signals): void {
    if (!c.proc?.pid || !this.running(c)) return;
    try { process.kill(-c.proc.pid, sig); } catch { /* already gone */ }
  }

  private async finalizeDeletion(pod: V1Pod): Promise<void> {
    try {
      await this.core.deleteNamespacedPod({
        name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, gracePeriodSeconds: 0,
        body: { gracePeriodSeconds: 0, preconditions: { uid: pod.metadata!.uid! } },
      });
    } catch { /* already gone, or retried next round */ }
  }

  private async startContainer(pod: V1Pod, run: PodRun, c: ContainerRun): Promise<void> {
    c.starting = true;
    try {
      const info: PodRuntimeInfo = { podIP: run.ip, hostIP: "127.0.0.1", nodeName: run.node, apiserverHost: "127.0.0.1", apiserverPort: this.opts.apiserverPort };
      const env = await resolveEnv(this.core, pod, c.spec, info);
      // What a container runtime sets for a user the image's /etc/passwd does not name.
      env.HOME ??= "/";
      this.checkImage(c.spec);
      const argv = [...(c.spec.command ?? []), ...(c.spec.args ?? [])].map((a) => expand(a, env));
      if (argv.length === 0) throw new Error(`container ${c.spec.name} has no command: the test kubelet ignores images, so it needs command/args`);
      if (argv[0] === "node") argv[0] = process.execPath;
      run.mounts ??= new Map();
      const binds: Array<[string, string, boolean]> = [];
      const tmpfs: Array<[string, number]> = [];
      for (const m of c.spec.volumeMounts ?? []) {
        const vol = pod.spec?.volumes?.find((v) => v.name === m.name);
        if (!vol) throw new Error(`volumeMount ${m.name} names no volume`);
        if (vol.emptyDir?.medium === "Memory") {
          // Memory-backed emptyDir is a tmpfs sized by sizeLimit, as on a real node (per container here).
          tmpfs.push([m.mountPath, quantityBytes(vol.emptyDir.sizeLimit ?? "64Mi")]);
          continue;
        }
        let dir = run.mounts.get(vol.name);
        if (!dir) { dir = await resolveVolume(this.core, this.layout, pod, vol, run.node); run.mounts.set(vol.name, dir); }
        const src = m.subPath ? path.join(dir, m.subPath) : dir;
        if (m.subPath) await mkdir(src, { recursive: true });
        binds.push([src, m.mountPath, m.readOnly ?? false]);
      }
      orderBinds(binds);
      const user = containerUser(pod, c.spec);
      // The image's working directory is this checkout; part of the image, so read-only with the root filesystem.
      const cwd = c.spec.workingDir ? c.spec.workingDir : this.opts.cwd;
      if (c.spec.workingDir) binds.unshift([this.opts.cwd, c.spec.workingDir, user.readOnlyRoot]);
      const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
      const script = [
        ...binds.map(([src, dst, ro]) => `mkdir -p ${q(dst)} && mount --bind ${q(src)} ${q(dst)}${ro ? ` && mount -o remount,bind,ro ${q(dst)}` : ""}`),
        ...tmpfs.map(([dst, bytes]) => `mkdir -p ${q(dst)} && mount -t tmpfs -o size=${bytes},mode=0777 tmpfs ${q(dst)}`),
        // After the volumes: they keep their own flags, everything else of the "image" is read-only.
        ...(user.readOnlyRoot ? ["mount -o remount,bind,ro /"] : []),
        `cd ${q(cwd)}`,
        user.setpriv ? `exec setpriv ${user.setpriv} -- "$@"` : 'exec "$@"',
      ].join(" && ");
      const logDir = path.join(this.opts.root, "pods", `${run.namespace}_${run.name}_${run.uid}`);
      await mkdir(logDir, { recursive: true });
      const log = createWriteStream(path.join(logDir, `${c.spec.name}.log`), { flags: "a" });
      const proc = spawn("unshare", ["-m", "--propagation", "private", "sh", "-c", script, c.spec.name, ...argv], {
        env, detached: true, stdio: ["ignore", "pipe", "pipe"],
      });
      proc.stdout!.pipe(log);
      proc.stderr!.pipe(log);
      c.proc = proc;
      c.startedAt = new Date().toISOString();
      c.exitCode = undefined;
      c.reason = undefined;
      c.ready = false;
      c.probeFailures = 0;
      c.nextProbeAt = Date.now() + (c.spec.readinessProbe?.initialDelaySeconds ?? 0) * 1000;
      c.started = !c.spec.startupProbe;
      c.livenessFailures = 0;
      c.nextLivenessAt = Date.now() + ((c.spec.startupProbe ?? c.spec.livenessProbe)?.initialDelaySeconds ?? 0) * 1000;
      c.killAt = undefined;
      proc.once("exit", (code, signal) => {
        c.exitCode = code ?? (signal ? 128 + (signal === "SIGKILL" ? 9 : 15) : 1);
        c.reason = code === 0 ? "Completed" : "Error";
        c.finishedAt = new Date().toISOString();
        c.lastTerminated = { exitCode: c.exitCode, reason: c.reason, ...(c.startedAt ? { startedAt: c.startedAt } : {}), finishedAt: c.finishedAt };
        c.ready = false;
        c.restartCount++;
        // CrashLoopBackOff, compressed: 1 s doubling up to 10 s.
        c.nextStartAt = Date.now() + Math.min(10_000, 1000 * 2 ** Math.min(c.restartCount - 1, 4));
      });
    } catch (err) {
      run.failed = (err as Error).message;
      c.nextStartAt = Date.now() + 2000;
    } finally {
      c.starting = false;
    }
  }

  private async probe(pod: V1Pod, run: PodRun): Promise<void> {
    await Promise.all(run.containers.map(async (c) => {
      if (!this.running(c) || c.killAt !== undefined) return;
      await this.checkAlive(pod, run, c);
      if (!c.started || c.killAt !== undefined) { c.ready = false; return; }
      const p = c.spec.readinessProbe;
      if (!p) { c.ready = true; return; }
      if (Date.now() < c.nextProbeAt) return;
      c.nextProbeAt = Date.now() + (p.periodSeconds ?? 10) * 1000;
      const ok = !this.unready.has(`${pod.metadata?.namespace}/${pod.metadata?.name}`) && await runProbe(p, c.spec, run.ip, this.opts.cwd).catch(() => false);
      if (ok) { c.probeFailures = 0; c.ready = true; } else if (++c.probeFailures >= (p.failureThreshold ?? 3) || !c.ready) c.ready = false;
    }));
  }

  /**
   * Startup, then liveness probes, as the kubelet runs them: failureThreshold failures in a row
   * kill the container (SIGTERM, SIGKILL after the pod's grace period) and restartPolicy decides.
   */
  private async checkAlive(pod: V1Pod, run: PodRun, c: ContainerRun): Promise<void> {
    const p = c.started ? c.spec.livenessProbe : c.spec.startupProbe;
    if (!p || Date.now() < c.nextLivenessAt) return;
    c.nextLivenessAt = Date.now() + (p.periodSeconds ?? 10) * 1000;
    if (await runProbe(p, c.spec, run.ip, this.opts.cwd).catch(() => false)) {
      c.livenessFailures = 0;
      if (!c.started) { c.started = true; c.nextLivenessAt = Date.now() + (c.spec.livenessProbe?.initialDelaySeconds ?? 0) * 1000; }
      return;
    }
    if (++c.livenessFailures < (p.failureThreshold ?? 3)) return;
    c.ready = false;
    c.killAt = Date.now() + (pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
    this.signal(c, "SIGTERM");
  }

  private async reportStatus(pod: V1Pod, run: PodRun, policy: string): Promise<void> {
    const anyRunning = run.containers.some((c) => this.running(c));
    const allDone = run.containers.every((c) => c.exitCode !== undefined && !this.running(c) && !c.starting);
    let phase = anyRunning ? "Running" : "Pending";
    if (allDone && (policy === "Never" || (policy === "OnFailure" && run.containers.every((c) => c.exitCode === 0)))) {
      phase = run.containers.every((c) => c.exitCode === 0) ? "Succeeded" : "Failed";
    }
    const ready = anyRunning && run.containers.every((c) => c.ready && this.running(c));
    const now = new Date().toISOString();
    const prev = new Map((pod.status?.conditions ?? []).map((c) => [c.type, c]));
    const cond = (type: string, ok: boolean) => {
      const status = ok ? "True" : "False";
      const before = prev.get(type);
      return { type, status, lastProbeTime: null, lastTransitionTime: before?.status === status ? before.lastTransitionTime : now };
    };
    const containerStatuses = run.containers.map((c) => ({
      name: c.spec.name, image: c.spec.image ?? "", imageID: "", containerID: c.proc?.pid ? `testbed://${c.proc.pid}` : undefined,
      ready: c.ready && this.running(c), started: this.running(c) && c.started, restartCount: c.restartCount,
      state: this.running(c)
        ? { running: { startedAt: c.startedAt } }
        : c.exitCode !== undefined
          ? { terminated: { exitCode: c.exitCode, reason: c.reason, startedAt: c.startedAt, finishedAt: c.finishedAt } }
          : { waiting: { reason: run.failed ? (/^ErrImageNeverPull\b/.test(run.failed) ? "ErrImageNeverPull" : "CreateContainerConfigError") : "ContainerCreating", ...(run.failed ? { message: run.failed } : {}) } },
      ...(this.running(c) && c.lastTerminated ? { lastState: { terminated: c.lastTerminated } } : {}),
    }));
    const status = {
      phase, hostIP: "127.0.0.1", hostIPs: [{ ip: "127.0.0.1" }], podIP: run.ip, podIPs: [{ ip: run.ip }], startTime: run.startTime,
      conditions: [cond("PodReadyToStartContainers", true), cond("Initialized", true), cond("ContainersReady", ready), cond("Ready", ready), cond("PodScheduled", true)],
      containerStatuses,
    };
    const key = JSON.stringify({ ...status, conditions: status.conditions.map((c) => [c.type, c.status]) });
    if (key === run.lastStatus) return;
    try {
      await this.core.patchNamespacedPodStatus({ name: run.name, namespace: run.namespace, body: { status } }, merge);
      run.lastStatus = key;
    } catch { /* retried next round */ }
  }
}

/**
 * Bind mounts happen in order inside the pod's mount namespace, so a mount over a folder that holds
 * another volume's source (an emptyDir at /tmp over the testbed's pod folders under /tmp) must come
 * after it, or that source vanishes. Mounts nested in another's target keep their order after it.
 */
export function orderBinds(binds: Array<[string, string, boolean]>): void {
  const under = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith("/") ? dir : `${dir}/`);
  for (let changed = true, rounds = 0; changed && rounds < binds.length * binds.length; rounds++) {
    changed = false;
    for (let i = 0; i < binds.length; i++) {
      for (let j = i + 1; j < binds.length; j++) {
        const [, dstI] = binds[i]!, [srcJ, dstJ] = binds[j]!;
        if (under(srcJ, dstI) && !under(dstJ, dstI)) {
          binds.splice(j + 1, 0, binds[i]!);
          binds.splice(i, 1);
          changed = true;
        }
      }
    }
  }
}

/**
 * The user a container runs as, from its and its pod's securityContext, as a container runtime
 * applies it: runAsUser/runAsGroup, fsGroup and supplementalGroups as groups, no new privileges,
 * no capabilities for a non-root user, a read-only root filesystem. The test kubelet has no
 * images, so it has no image USER to fall back on: runAsNonRoot needs an explicit runAsUser.
 */
export function containerUser(pod: V1Pod, c: V1Container): { setpriv?: string; readOnlyRoot: boolean } {
  const psc = pod.spec?.securityContext ?? {}, csc = c.securityContext ?? {};
  const uid = csc.runAsUser ?? psc.runAsUser;
  const nonRoot = csc.runAsNonRoot ?? psc.runAsNonRoot;
  if (nonRoot && !uid) {
    throw new Error(`container ${c.name} has runAsNonRoot but ${uid === 0 ? "runAsUser 0" : "no runAsUser"}: it would run as root (the test kubelet has no image USER to check)`);
  }
  const readOnlyRoot = csc.readOnlyRootFilesystem === true;
  if (uid === undefined || uid === 0) return { readOnlyRoot };
  const gid = csc.runAsGroup ?? psc.runAsGroup ?? 0;
  const groups = [...new Set([gid, ...(psc.fsGroup !== undefined ? [psc.fsGroup] : []), ...(psc.supplementalGroups ?? [])])];
  const noNewPrivs = csc.allowPrivilegeEscalation === false ? " --no-new-privs" : "";
  return { setpriv: `--reuid ${uid} --regid ${gid} --groups ${groups.join(",")}${noNewPrivs} --inh-caps=-all --bounding-set=-all`, readOnlyRoot };
}
