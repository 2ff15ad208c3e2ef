// Acceptance of the testbed itself: real scheduler, controllers and API server; pods as processes.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CoreV1Api } from "@kubernetes/client-node";
import { eventually } from "../../testbed/eventually.js";
import { startTestbed, SHARED_HOST_PATH, type Testbed } from "../../testbed/testbed.js";

// A tiny HTTP server as the "container": readiness on /ready, file I/O on the mounted volume,
// and its environment on /env. It binds to its own pod IP, like a pod on a real network.
const SERVER = `
const http = require("http"), fs = require("fs");
http.createServer((req, res) => {
  const u = new URL(req.url, "http://x");
  if (u.pathname === "/ready") return res.end("ok");
  if (u.pathname === "/write") { fs.writeFileSync("/data/" + u.searchParams.get("f"), process.env.POD_NAME); return res.end("written"); }
  if (u.pathname === "/read") { try { return res.end(fs.readFileSync("/data/" + u.searchParams.get("f"))); } catch { res.statusCode = 404; return res.end(); } }
  if (u.pathname === "/env") return res.end(JSON.stringify({ env: process.env, secretFile: fs.readFileSync("/etc/demo/password", "utf8") }));
  res.statusCode = 404; res.end();
}).listen(8080, process.env.POD_IP);
`;

const manifest = (replicas: number) => `
apiVersion: v1
kind: PersistentVolume
metadata: {name: shared-rwx}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: manual
  hostPath: {path: ${SHARED_HOST_PATH}/rwx}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared, namespace: default}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: manual
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Secret
metadata: {name: demo, namespace: default}
stringData: {password: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: demo, namespace: default}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: files, namespace: default}
spec:
  replicas: ${replicas}
  selector: {matchLabels: {app: files}}
  template:
    metadata: {labels: {app: files}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: files}}
            topologyKey: kubernetes.io/hostname
      terminationGracePeriodSeconds: 2
      containers:
      - name: server
        image: example.invalid/ignored:latest
        command: [node, -e, ${JSON.stringify(SERVER)}]
        ports: [{name: http, containerPort: 8080}]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: PASSWORD, valueFrom: {secretKeyRef: {name: demo, key: password}}}
        - {name: GREETING, valueFrom: {configMapKeyRef: {name: demo, key: greeting}}}
        - {name: MESSAGE, value: "$(GREETING) from $(POD_NAME)"}
        readinessProbe: {httpGet: {path: /ready, port: http}, periodSeconds: 1}
        volumeMounts:
        - {name: data, mountPath: /data}
        - {name: secret, mountPath: /etc/demo, readOnly: true}
      volumes:
      - {name: data, persistentVolumeClaim: {claimName: shared}}
      - {name: secret, secret: {secretName: demo}}
`;

interface PodView { name: string; node: string; ip: string }

async function pods(tb: Testbed, selector: string): Promise<PodView[]> {
  const out = JSON.parse(await tb.kubectl(["get", "pods", "-l", selector, "-o", "json"])) as { items: Array<{ metadata: { name: string; deletionTimestamp?: string }; spec: { nodeName: string }; status: { podIP?: string; phase?: string } }> };
  return out.items.filter((p) => !p.metadata.deletionTimestamp && p.status.phase === "Running")
    .map((p) => ({ name: p.metadata.name, node: p.spec.nodeName, ip: p.status.podIP ?? "" }));
}


describe("testbed", () => {
  let tb: Testbed;
  before(async () => { tb = await startTestbed(); });
  after(async () => { await tb?.stop(); });

  it("reports the pinned release and registers nodes with GPUs as allocatable", async () => {
    const version = JSON.parse(await tb.kubectl(["version", "-o", "json"])) as { serverVersion: { gitVersion: string } };
    assert.equal(version.serverVersion.gitVersion, "v1.35.4");
    const gpu = JSON.parse(await tb.kubectl(["get", "node", "node-gpu", "-o", "json"])) as { status: { allocatable: Record<string, string> } };
    assert.equal(gpu.status.allocatable["nvidia.com/gpu"], "1");
    await tb.kubectl(["wait", "--for=condition=Ready", "node", "--all", "--timeout=30s"]);
  });

  it("runs a Deployment with an RWX claim: scheduled, Ready, and a file crosses nodes", async () => {
    await tb.kubectl(["apply", "-f", "-"], manifest(2));
    await tb.kubectl(["rollout", "status", "deployment/files", "--timeout=90s"]);
    await tb.kubectl(["wait", "--for=condition=Ready", "pod", "-l", "app=files", "--timeout=60s"]);
    const running = await pods(tb, "app=files");
    assert.equal(running.length, 2);
    assert.notEqual(running[0]!.node, running[1]!.node, "anti-affinity should spread the pods over nodes");
    assert.notEqual(running[0]!.ip, running[1]!.ip);
    const [a, b] = running as [PodView, PodView];
    assert.equal(await (await fetch(`http://${a.ip}:8080/write?f=hello`)).text(), "written");
    assert.equal(await (await fetch(`http://${b.ip}:8080/read?f=hello`)).text(), a.name);

    const env = (await (await fetch(`http://${a.ip}:8080/env`)).json()) as { env: Record<string, string>; secretFile: string };
    assert.equal(env.env.POD_NAME, a.name);
    assert.equal(env.env.NODE_NAME, a.node);
    assert.equal(env.env.PASSWORD, "hunter2");
    assert.equal(env.env.MESSAGE, `hello from ${a.name}`);
    assert.equal(env.secretFile, "hunter2");
  });

  it("deletes pods gracefully and the ReplicaSet replaces them", async () => {
    const [victim] = await pods(tb, "app=files");
    await tb.kubectl(["delete", "pod", victim!.name, "--wait=true", "--timeout=30s"]);
    const replaced = await eventually("a replacement pod", async () => {
      const now = await pods(tb, "app=files");
      return now.length === 2 && !now.some((p) => p.name === victim!.name) ? now : undefined;
    });
    assert.equal(replaced.length, 2);
  });

  it("replaces the pods of a failed node on a healthy node", async () => {
    await tb.kubectl(["scale", "deployment/files", "--replicas=1"]);
    const [before] = await eventually("one pod", async () => { const p = await pods(tb, "app=files"); return p.length === 1 ? p : undefined; });
    tb.kubelet.failNode(before!.node);
    await eventually("the node to go NotReady", async () => {
      const n = JSON.parse(await tb.kubectl(["get", "node", before!.node, "-o", "json"])) as { status: { conditions: Array<{ type: string; status: string }> } };
      return n.status.conditions.find((c) => c.type === "Ready")?.status !== "True" ? true : undefined;
    }, 60_000);
    const after = await eventually("a pod on another node", async () => {
      const p = await pods(tb, "app=files");
      return p.find((x) => x.node !== before!.node);
    }, 90_000);
    assert.notEqual(after.node, before!.node);
  });

  it("garbage-collects dependents through ownerReferences", async () => {
    const core = tb.kc.makeApiClient(CoreV1Api);
    const owner = await core.createNamespacedConfigMap({ namespace: "default", body: { metadata: { name: "owner" }, data: {} } });
    await core.createNamespacedConfigMap({ namespace: "default", body: { metadata: {
      name: "dependent", ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: owner.metadata!.uid! }],
    }, data: {} } });
    await core.deleteNamespacedConfigMap({ name: "owner", namespace: "default" });
    await eventually("the dependent to be collected", async () => {
      try { await core.readNamespacedConfigMap({ name: "dependent", namespace: "default" }); return undefined; } catch (e) {
        return (e as { code?: number }).code === 404 ? true : undefined;
      }
    });
  });

  it("applies the security context like a container runtime: the user, a read-only root, hostPath left root-owned, runAsNonRoot refused", async () => {
    // Exits 0 only if every expectation holds inside the container; the pod's phase says which.
    const probe = `
const fs = require("fs");
const tryWrite = (f) => { try { fs.writeFileSync(f, "x"); return "ok"; } catch (e) { return e.code; } };
const got = { uid: process.getuid(), groups: process.getgroups().sort(), root: tryWrite("/probe-root"), host: tryWrite("/host/f"), scratch: tryWrite("/scratch/f"), home: require("os").homedir() };
const want = { uid: 10001, groups: [10001, 20002], root: "EROFS", host: "EACCES", scratch: "ok", home: "/" };
console.log(JSON.stringify(got));
process.exit(JSON.stringify(got) === JSON.stringify(want) ? 0 : 1);
`;
    const pod = (name: string, sc: string) => `apiVersion: v1
kind: Pod
metadata: {name: ${name}, namespace: default}
spec:
  restartPolicy: Never
  securityContext: ${sc}
  containers:
  - name: probe
    image: example.invalid/ignored:latest
    command: [node, -e, ${JSON.stringify(probe)}]
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: host, mountPath: /host}, {name: scratch, mountPath: /scratch}]
  volumes:
  - {name: host, hostPath: {path: /var/lib/torpor-probe, type: DirectoryOrCreate}}
  - {name: scratch, emptyDir: {}}
`;
    await tb.kubectl(["apply", "-f", "-"], pod("as-user", "{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 20002}"));
    await tb.kubectl(["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/as-user", "--timeout=60s"]);
    // runAsNonRoot with no user to run as: a real kubelet checks the image's USER; this one has no images, so it refuses.
    await tb.kubectl(["apply", "-f", "-"], pod("no-user", "{runAsNonRoot: true}"));
    await new Promise((r) => setTimeout(r, 3000));
    const phase = (await tb.kubectl(["get", "pod", "no-user", "-o", "jsonpath={.status.phase}"])).trim();
    assert.notEqual(phase, "Succeeded");
    assert.notEqual(phase, "Running");
    await tb.kubectl(["delete", "pod", "as-user", "no-user", "--wait=false"]);
  });

  it("runs a container with imagePullPolicy Never only from an image loaded on the nodes (ErrImageNeverPull otherwise)", async () => {
    const pod = (name: string, image: string) => `apiVersion: v1
kind: Pod
metadata: {name: ${name}, namespace: default}
spec:
  restartPolicy: Never
  containers:
  - {name: c, image: "${image}", imagePullPolicy: Never, command: [node, -e, "process.exit(0)"]}
`;
    tb.kubelet.loadImages("torpor:dev");
    await tb.kubectl(["apply", "-f", "-"], pod("loaded", "torpor:dev"));
    await tb.kubectl(["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/loaded", "--timeout=60s"]);
    await tb.kubectl(["apply", "-f", "-"], pod("not-loaded", "ghcr.io/torpor-dev/torpor:0.1.0"));
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal((await tb.kubectl(["get", "pod", "not-loaded", "-o", "jsonpath={.status.phase}"])).trim(), "Pending");
    assert.equal((await tb.kubectl(["get", "pod", "not-loaded", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}"])).trim(), "ErrImageNeverPull");
    await tb.kubectl(["delete", "pod", "loaded", "not-loaded", "--wait=false"]);
  });

  it("kills and restarts a container whose liveness probe fails; a passing startup probe gates readiness", async () => {
    // /healthz fails once /sicken was called; a restarted process is healthy again.
    const server = `
let sick = false;
require("http").createServer((req, res) => {
  if (req.url === "/sicken") sick = true;
  if (req.url === "/healthz" && sick) res.statusCode = 500;
  res.end();
}).listen(8080, process.env.POD_IP);
`;
    await tb.kubectl(["apply", "-f", "-"], `
apiVersion: v1
kind: Pod
metadata: {name: probed, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: example.invalid/ignored:latest
    command: [node, -e, ${JSON.stringify(server)}]
    ports: [{name: http, containerPort: 8080}]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    startupProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 30}
    livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 2}
    readinessProbe: {httpGet: {path: /ready, port: http}, periodSeconds: 1}
`);
    type Status = { podIP?: string; containerStatuses?: Array<{ ready: boolean; started?: boolean; restartCount: number; state?: { running?: unknown }; lastState?: { terminated?: { exitCode: number } } }> };
    const podStatus = async () => (JSON.parse(await tb.kubectl(["get", "pod", "probed", "-o", "json"])) as { status: Status }).status;
    const status = async () => (await podStatus()).containerStatuses?.[0];
    const ready = await eventually("the probed pod to start and be Ready", async () => { const c = await status(); return c?.ready && c.started ? c : undefined; });
    assert.equal(ready.restartCount, 0);
    assert.equal((await fetch(`http://${(await podStatus()).podIP}:8080/sicken`)).status, 200);
    const restarted = await eventually("a liveness restart", async () => { const c = await status(); return c && c.restartCount >= 1 && c.state?.running ? c : undefined; }, 30_000);
    assert.ok(restarted.lastState?.terminated, "the killed container is reported in lastState");
    await eventually("Ready again after the restart", async () => ((await status())?.ready ? true : undefined), 30_000);
    await tb.kubectl(["delete", "pod", "probed", "--wait=true", "--timeout=30s"]);
  });
});
