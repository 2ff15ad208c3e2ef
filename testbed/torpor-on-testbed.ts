// Torpor's pieces installed on a testbed the way the tests need them: the CRD, a runtime pool
// (Deployment "runtime-tiny" with an RWX hibernation claim), the runtime token and sealing keys.
import { randomBytes } from "node:crypto";
import path from "node:path";
import { smallModel } from "./models.js";
export { eventually } from "./eventually.js";
import { REPO_ROOT } from "./paths.js";
import { prepareSharedFolder, SHARED_HOST_PATH, type Testbed } from "./testbed.js";
import { PROCESS_TUNING_ENV } from "../runtime/model/process-tuning.js";

export const TOKEN = "operator-test-runtime-token-0123";
export const HIB_HOST_PATH = `${SHARED_HOST_PATH}/hibernation`;

export const runtimeManifest = (model: string, extraEnv: Record<string, string> = {}) => `
apiVersion: v1
kind: Secret
metadata: {name: torpor-sealing-keys, namespace: default}
stringData: {keys: "k1:${randomBytes(32).toString("base64")}"}
---
apiVersion: v1
kind: Secret
metadata: {name: torpor-runtime-token, namespace: default}
stringData: {token: ${TOKEN}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: torpor-hibernation}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteMany]
  storageClassName: manual
  hostPath: {path: ${HIB_HOST_PATH}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: torpor-hibernation, namespace: default}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: manual
  resources: {requests: {storage: 10Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: runtime-tiny
  namespace: default
  labels: {app.kubernetes.io/component: runtime, app.kubernetes.io/part-of: torpor, torpor.dev/model: tiny}
  annotations: {torpor.dev/awake-replicas: "2"}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/component: runtime, torpor.dev/model: tiny}}
  template:
    metadata:
      labels: {app.kubernetes.io/component: runtime, app.kubernetes.io/part-of: torpor, torpor.dev/model: tiny}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {torpor.dev/model: tiny}}
            topologyKey: kubernetes.io/hostname
      terminationGracePeriodSeconds: 20
      # The chart's user: files on the volume belong to it, and the operator's cleanup pod runs as it.
      securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001}
      containers:
      - name: runtime
        image: torpor:dev
        command: [node, dist/runtime/main.js]
        ports: [{name: http, containerPort: 8080}]
        env:
        - {name: TORPOR_MODEL, value: ${JSON.stringify(`/models/${path.basename(model)}`)}}
        - {name: TORPOR_HIBERNATION_DIR, value: /var/lib/torpor/hibernation}
        - {name: TORPOR_HOST, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: TORPOR_POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: TORPOR_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: TORPOR_RUNTIME_TOKEN, valueFrom: {secretKeyRef: {name: torpor-runtime-token, key: token}}}
        - {name: TORPOR_SEALING_KEYS, valueFrom: {secretKeyRef: {name: torpor-sealing-keys, key: keys}}}
        - {name: TORPOR_STAGING_DIR, value: /var/lib/torpor/staging}
        - {name: TORPOR_THREADS, value: "1"}
        - {name: TORPOR_GPU, value: "false"}
${Object.entries({ ...PROCESS_TUNING_ENV, ...extraEnv }).map(([k, v]) => `        - {name: ${k}, value: ${JSON.stringify(v)}}`).join("\n")}
        readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
        volumeMounts: [{name: hibernation, mountPath: /var/lib/torpor/hibernation}, {name: staging, mountPath: /var/lib/torpor/staging}, {name: models, mountPath: /models, readOnly: true}]
      volumes: [{name: hibernation, persistentVolumeClaim: {claimName: torpor-hibernation}}, {name: staging, emptyDir: {}}, {name: models, hostPath: {path: ${JSON.stringify(path.dirname(model))}, type: Directory}}]
`;

export const session = (name: string, extra = "") => `
apiVersion: torpor.dev/v1alpha1
kind: InferenceSession
metadata: {name: ${name}, namespace: default}
spec:
  model: tiny
  contextSize: 1024
  systemPrompt: You are a test.${extra}
`;



export async function installTorpor(tb: Testbed, replicas = 2, extraEnv: Record<string, string> = {}, model?: string): Promise<void> {
  await prepareSharedFolder(tb, HIB_HOST_PATH);
  await tb.kubectl(["apply", "-f", path.join(REPO_ROOT, "crds", "inferencesessions.torpor.dev.yaml")]);
  await tb.kubectl(["wait", "--for=condition=Established", "crd/inferencesessions.torpor.dev", "--timeout=30s"]);
  await tb.kubectl(["apply", "-f", "-"], runtimeManifest(model ?? await smallModel(), extraEnv).replace("replicas: 2", `replicas: ${replicas}`).replace('awake-replicas: "2"', `awake-replicas: "${replicas}"`));
  await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
}

export interface NodeProcess { proc: import("node:child_process").ChildProcess; output: () => string; stop: (signal?: NodeJS.Signals) => Promise<void> }

/** Runs one of our entry points (operator, gateway) as a local process against the testbed. */
export async function startEntryPoint(script: string, tb: Testbed, env: Record<string, string>): Promise<NodeProcess> {
  const { spawn } = await import("node:child_process");
  let out = "";
  const proc = spawn(process.execPath, [path.join(REPO_ROOT, "dist", script)], {
    cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, KUBECONFIG: tb.kubeconfig, TORPOR_RUNTIME_TOKEN: TOKEN, TORPOR_HOST: "127.0.0.1", POD_NAMESPACE: "default", ...env },
  });
  proc.stdout!.on("data", (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on("data", (d: Buffer) => { out += d.toString(); });
  return {
    proc, output: () => out,
    stop: async (signal = "SIGTERM") => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill(signal);
      await exited;
    },
  };
}
