// Figure 5: the operator at scale on the testbed. N sessions with small real contexts; a bulk
// patch to Hibernated and back; time until every session reports the new residency, reconcile
// latency, API writes per transition (from the API server's own metrics), operator CPU and RSS.
import { readFile } from "node:fs/promises";
import { CustomObjectsApi, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { GROUP, PLURAL, VERSION, type InferenceSession } from "../contract/inference-session.js";
import { RuntimeClient } from "../contract/runtime-client.js";
import { freePort } from "../testbed/local-runtime.js";
import { eventually, installTorpor, startEntryPoint, TOKEN } from "../testbed/torpor-on-testbed.js";
import { startTestbed, type Testbed } from "../testbed/testbed.js";

const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

async function pool<T>(items: T[], limit: number, fn: (t: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => { while (next < items.length) await fn(items[next++]!); }));
}

/** Sum of apiserver_request_total for write verbs on a resource, from the API server's /metrics. */
async function apiWrites(tb: Testbed, resource: string): Promise<number> {
  const text = await tb.kubectl(["get", "--raw", "/metrics"]);
  let n = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith("apiserver_request_total{") || !line.includes(`resource="${resource}"`)) continue;
    if (!/verb="(POST|PUT|PATCH|DELETE|APPLY)"/.test(line)) continue;
    n += Number(line.split(" ").at(-1));
  }
  return n;
}

function histogram(text: string, name: string): Array<[number, number]> {
  return text.split("\n").filter((l) => l.startsWith(`${name}_bucket{`)).map((l) => {
    const le = /le="([^"]+)"/.exec(l)![1]!;
    return [le === "+Inf" ? Infinity : Number(le), Number(l.split(" ").at(-1))] as [number, number];
  });
}

function quantile(before: Array<[number, number]>, after: Array<[number, number]>, q: number): number {
  const counts = after.map(([le, c], i) => [le, c - (before[i]?.[1] ?? 0)] as [number, number]);
  const total = counts.at(-1)?.[1] ?? 0;
  return counts.find(([, c]) => c >= total * q)?.[0] ?? NaN;
}

async function cpuSeconds(pid: number): Promise<number> {
  const f = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function rssMiB(pid: number): Promise<number> {
  return Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}

export interface ScaleResult {
  sessions: number;
  placeSeconds: number;
  toHibernatedSeconds: number;
  toInMemorySeconds: number;
  reconcileP50Ms: number;
  reconcileP99Ms: number;
  writesPerTransition: number;
  /** Reconciles run per session transition: the echo of the operator's own status writes queues none. */
  reconcilesPerTransition: number;
  operatorCpuSeconds: number;
  operatorRssMiB: number;
}

export async function operatorScale(sessions: number): Promise<ScaleResult> {
  const tb = await startTestbed();
  const procs: Array<{ stop: () => Promise<void> }> = [];
  try {
    await installTorpor(tb, 2, { TORPOR_MAX_RESIDENT: String(sessions), TORPOR_DEFAULT_CONTEXT_SIZE: "256" });
    const opPort = await freePort();
    const op = await startEntryPoint("operator/main.js", tb, { TORPOR_OPERATOR_PORT: String(opPort), POD_NAME: "operator-0" });
    procs.push(op);
    const api = tb.kc.makeApiClient(CustomObjectsApi);
    const names = Array.from({ length: sessions }, (_, i) => `s-${i}`);
    const list = async () => ((await api.listNamespacedCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, namespace: "default" })) as { items: InferenceSession[] }).items;
    const all = async (pred: (s: InferenceSession) => boolean) => { const items = await list(); return items.length === sessions && items.every(pred) ? true : undefined; };

    let t = performance.now();
    await pool(names, 16, (name) => api.createNamespacedCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, namespace: "default",
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: "InferenceSession", metadata: { name }, spec: { model: "tiny", contextSize: 256 } } }));
    await eventually("placement", () => all((s) => !!s.status?.podIP), 600_000);
    const placeSeconds = (performance.now() - t) / 1000;
    // A small real context per session: one short request each, straight to its runtime pod.
    const placed = await list();
    await pool(placed, 8, (s) => new RuntimeClient(`http://${s.status!.podIP}:8080`, TOKEN).submit("default", s.metadata.name, "hi", { max_tokens: 1 }));
    await eventually("InMemory", () => all((s) => s.status?.residency === "InMemory"), 600_000);

    const patchAll = (residency: string) => pool(names, 16, (name) => api.patchNamespacedCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, namespace: "default", name, body: { spec: { residency } } }, merge));
    const metricsBefore = await (await fetch(`http://127.0.0.1:${opPort}/metrics`)).text();
    const writesBefore = (await apiWrites(tb, PLURAL));
    const cpuBefore = await cpuSeconds(op.proc.pid!);
    t = performance.now();
    await patchAll("Hibernated");
    await eventually("Hibernated", () => all((s) => s.status?.residency === "Hibernated"), 600_000);
    const toHibernatedSeconds = (performance.now() - t) / 1000;
    t = performance.now();
    await patchAll("InMemory");
    await eventually("InMemory again", () => all((s) => s.status?.residency === "InMemory"), 600_000);
    const toInMemorySeconds = (performance.now() - t) / 1000;
    // Let trailing status writes land before counting.
    await new Promise((r) => setTimeout(r, 3000));
    const writes = (await apiWrites(tb, PLURAL)) - writesBefore - 2 * sessions; // minus our own patches
    const metricsAfter = await (await fetch(`http://127.0.0.1:${opPort}/metrics`)).text();
    const name = "torpor_operator_reconcile_duration_seconds";
    return {
      sessions, placeSeconds, toHibernatedSeconds, toInMemorySeconds,
      reconcileP50Ms: quantile(histogram(metricsBefore, name), histogram(metricsAfter, name), 0.5) * 1000,
      reconcileP99Ms: quantile(histogram(metricsBefore, name), histogram(metricsAfter, name), 0.99) * 1000,
      writesPerTransition: writes / (2 * sessions),
      reconcilesPerTransition: (count(metricsAfter, `${name}_count`) - count(metricsBefore, `${name}_count`)) / (2 * sessions),
      operatorCpuSeconds: (await cpuSeconds(op.proc.pid!)) - cpuBefore,
      operatorRssMiB: await rssMiB(op.proc.pid!),
    };
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await tb.stop();
  }
}

function count(metrics: string, series: string): number {
  return metrics.split("\n").filter((l) => l.startsWith(`${series} `) || l.startsWith(`${series}{`))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}
