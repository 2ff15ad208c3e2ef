// `npm run demo`: torpor end to end on this machine with the embedded defaults. Starts the local
// testbed (a real control plane and test kubelet), installs the Helm chart with the generated
// test model, runs the README quickstart step by step, prints the session's hibernation figures,
// and tears everything down. `npm run demo:runtime` shows the runtime alone.
import path from "node:path";
import { startTestbed } from "../testbed/testbed.js";
import { installChart } from "../testbed/chart-install.js";
import { runQuickstart } from "../testbed/quickstart.js";

console.log("torpor demo: starting the local testbed (first run builds Kubernetes from the Go module proxy: minutes)");
let t = performance.now();
const tb = await startTestbed();
try {
  console.log(`testbed up in ${((performance.now() - t) / 1000).toFixed(1)} s; installing charts/torpor (values-kind.yaml, model torpor-test:small)`);
  t = performance.now();
  const gateway = await installChart(tb);
  console.log(`helm install done in ${((performance.now() - t) / 1000).toFixed(1)} s; gateway at ${gateway}`);
  console.log(`KUBECONFIG=${tb.kubeconfig}`);
  runQuickstart({ ...process.env, KUBECONFIG: tb.kubeconfig, TORPOR_GATEWAY: gateway, PATH: `${path.dirname(tb.tools.kubectl)}:${process.env.PATH}` });
  const s = JSON.parse(await tb.kubectl(["get", "isess", "quickstart", "-o", "json"])) as { status: { lastHibernation?: { bytes: number; durationMs: number; tokenCount: number }; lastRehydrate?: { durationMs: number }; node: string } };
  const h = s.status.lastHibernation;
  console.log(`\nsession default/quickstart on node ${s.status.node}: hibernated ${h?.tokenCount} tokens (${h?.bytes} bytes) in ${h?.durationMs} ms; the next request rehydrated it in ${s.status.lastRehydrate?.durationMs} ms`);
  console.log("demo: every step succeeded");
} finally {
  await tb.stop();
}
