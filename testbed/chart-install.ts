// Installs the Helm chart on the testbed the way a kind user would (values-kind.yaml, the steps
// of `make kind-up` and `make helm-install`), with the chart's own security context enforced by
// the test kubelet (UID 10001, read-only root filesystem).
import { chmod, copyFile, link, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import YAML from "yaml";
import { realModel } from "./models.js";
import { REPO_ROOT as ROOT } from "./paths.js";
import { prepareSharedFolder, sharedFolder, SHARED_HOST_PATH, type Testbed } from "./testbed.js";

export const RELEASE_NAMESPACE = "torpor";
const MODELS_CLAIM = "torpor-models";

const CHART = path.join(ROOT, "charts", "torpor");

interface KindValues { image: { repository: string; tag: string }; models: Array<Record<string, unknown>> }
const kindValues = async (): Promise<KindValues> => YAML.parse(await readFile(path.join(CHART, "values-kind.yaml"), "utf8")) as KindValues;

/**
 * The testbed's runtime pods cannot reach the hub kind pods download from: the model, taken from
 * its registry package, sits on a models volume (modelsVolume.existingClaim, as a cluster with a
 * claim of GGUF files uses it), readable by the runtime's non-root user.
 */
async function modelsVolume(tb: Testbed): Promise<string> {
  const source = await realModel();
  const dir = sharedFolder(tb, `${SHARED_HOST_PATH}/models`);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const file = path.join(dir, path.basename(source));
  if (!await stat(file).catch(() => undefined)) await link(source, file).catch(() => copyFile(source, file));
  await chmod(file, 0o644);
  await tb.kubectl(["apply", "-f", "-"], `apiVersion: v1
kind: PersistentVolume
metadata: {name: ${MODELS_CLAIM}}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {path: ${SHARED_HOST_PATH}/models, type: Directory}
  claimRef: {namespace: ${RELEASE_NAMESPACE}, name: ${MODELS_CLAIM}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: ${MODELS_CLAIM}, namespace: ${RELEASE_NAMESPACE}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: ${MODELS_CLAIM}
  resources: {requests: {storage: 1Gi}}
`);
  return `/models/${path.basename(source)}`;
}

/** The values files of an install: values-kind.yaml, with the model on the testbed's models volume. */
export async function testbedValues(tb: Testbed, kind?: KindValues): Promise<string[]> {
  const { models } = kind ?? await kindValues();
  const source = await modelsVolume(tb);
  const override = path.join(tb.dir, "values-testbed.yaml");
  await writeFile(override, YAML.stringify({ models: models.map((m) => ({ ...m, source })), modelsVolume: { existingClaim: MODELS_CLAIM } }));
  return ["-f", path.join(CHART, "values-kind.yaml"), "-f", override];
}

/** Installs the chart the way a kind user would (values-kind.yaml) and returns the gateway's URL. */
export async function installChart(tb: Testbed): Promise<string> {
  await prepareSharedFolder(tb, `${SHARED_HOST_PATH}/hibernation`);
  // make kind-load: the image built here is on the nodes; the chart must use exactly it.
  const kind = await kindValues();
  tb.kubelet.loadImages(`${kind.image.repository}:${kind.image.tag}`);
  await tb.kubectl(["create", "namespace", RELEASE_NAMESPACE]);
  await tb.kubectl(["apply", "-f", path.join(CHART, "hibernation-pv-kind.yaml")]);
  await tb.helm(["install", "torpor", CHART, "-n", RELEASE_NAMESPACE, ...await testbedValues(tb, kind), "--wait", "--timeout", "180s"]);
  const ip = (await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "-o", "jsonpath={.items[0].status.podIP}"])).trim();
  return `http://${ip}:8000`;
}
