// Installs the Helm chart on the testbed the way a kind user would (values-kind.yaml).
import path from "node:path";
import { REPO_ROOT as ROOT } from "./paths.js";
import type { Testbed } from "./testbed.js";

export const RELEASE_NAMESPACE = "torpor";

/** Installs the chart the way a kind user would (values-kind.yaml) and returns the gateway's URL. */
export async function installChart(tb: Testbed): Promise<string> {
  const chart = path.join(ROOT, "charts", "torpor");
  await tb.kubectl(["create", "namespace", RELEASE_NAMESPACE]);
  await tb.kubectl(["apply", "-f", path.join(chart, "hibernation-pv-kind.yaml")]);
  await tb.helm(["install", "torpor", chart, "-n", RELEASE_NAMESPACE, "-f", path.join(chart, "values-kind.yaml"), "--wait", "--timeout", "180s"]);
  const ip = (await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "-o", "jsonpath={.items[0].status.podIP}"])).trim();
  return `http://${ip}:8000`;
}
