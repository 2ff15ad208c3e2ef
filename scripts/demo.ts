// `npm run demo`: torpor end to end on this machine with the embedded defaults. Starts the local
// testbed (a real control plane and test kubelet), installs the Helm chart with a real model
// (SmolLM2-135M-Instruct), runs the README quickstart step by step, then tells the story a user
// cares about in real text: a conversation, a hibernate and the memory it gave back, the session
// moved to the other runtime pod on another node, the next answer continuing the conversation.
import path from "node:path";
import { formatBytes, type InferenceSession } from "../contract/inference-session.js";
import { RuntimeClient } from "../contract/runtime-client.js";
import { eventually } from "../testbed/eventually.js";
import { installChart, RELEASE_NAMESPACE } from "../testbed/chart-install.js";
import { runQuickstart } from "../testbed/quickstart.js";
import { startTestbed } from "../testbed/testbed.js";

const secs = (t: number) => `${((performance.now() - t) / 1000).toFixed(1)} s`;
const say = (who: string, text: string) => console.log(`   ${who.padEnd(9)} ${text.trim().replace(/\s+/g, " ")}`);

console.log("torpor demo: starting the local testbed (first run builds Kubernetes from the Go module proxy: minutes)");
let t = performance.now();
const tb = await startTestbed();
try {
  console.log(`testbed up in ${secs(t)}; installing charts/torpor (values-kind.yaml, model SmolLM2-135M-Instruct, 2 runtime pods)`);
  t = performance.now();
  const gateway = await installChart(tb);
  console.log(`helm install done in ${secs(t)}; gateway at ${gateway}`);
  console.log(`KUBECONFIG=${tb.kubeconfig}`);
  console.log("\n== the README quickstart, verbatim ==");
  runQuickstart({ ...process.env, KUBECONFIG: tb.kubeconfig, TORPOR_GATEWAY: gateway, PATH: `${path.dirname(tb.tools.kubectl)}:${process.env.PATH}` });

  console.log("\n== a conversation that survives a hibernate and a move ==");
  const get = async (name: string) => JSON.parse(await tb.kubectl(["get", "isess", name, "-o", "json"])) as InferenceSession;
  await tb.kubectl(["apply", "-f", "-"], "apiVersion: torpor.dev/v1alpha1\nkind: InferenceSession\nmetadata: {name: trip, namespace: default}\nspec: {model: smollm2, contextSize: 4096, systemPrompt: 'You are a helpful travel assistant. Answer in one or two sentences.'}\n");
  await tb.kubectl(["wait", "--for=condition=Ready", "isess/trip", "--timeout=120s"]);
  const token = (await tb.kubectl(["create", "token", "default", "--audience", "torpor"])).trim(); // granted by the quickstart's rolebinding
  const messages: Array<{ role: string; content: string }> = [];
  const ask = async (q: string) => {
    messages.push({ role: "user", content: q });
    say("user:", q);
    const t0 = performance.now();
    const res = await fetch(`${gateway}/v1/sessions/default/trip/chat/completions`, {
      method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ messages, max_tokens: 60, temperature: 0 }),
    });
    const body = await res.json() as { choices: Array<{ message: { content: string } }>; usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } };
    if (!res.ok) throw new Error(`chat failed: ${res.status} ${JSON.stringify(body)}`);
    const answer = body.choices[0]!.message.content;
    messages.push({ role: "assistant", content: answer });
    say("assistant:", answer);
    return { usage: body.usage, ms: performance.now() - t0, rehydrated: res.headers.get("x-torpor-rehydrated") === "true" };
  };
  await ask("I'm Ada, flying to Lisbon next week.");
  await ask("What should I eat there?");
  const before = await eventually("the session InMemory", async () => { const s = await get("trip"); return s.status?.residency === "InMemory" ? s : undefined; }, 30_000);
  const runtimeToken = Buffer.from((await tb.kubectl(["get", "secret", "-n", RELEASE_NAMESPACE, "torpor-runtime-token", "-o", "jsonpath={.data.token}"])).trim(), "base64").toString();
  const rt = new RuntimeClient(`http://${before.status!.podIP}:8080`, runtimeToken);
  const rssBefore = (await rt.info()).memory.rssBytes;
  t = performance.now();
  await tb.kubectl(["patch", "isess", "trip", "--type=merge", "-p", '{"spec":{"residency":"Hibernated"}}']);
  await tb.kubectl(["wait", "--for=condition=Hibernated", "isess/trip", "--timeout=60s"]);
  const hib = (await get("trip")).status!.lastHibernation!;
  console.log(`1. kubectl patch -> Hibernated in ${secs(t)}: ${hib.size ?? formatBytes(hib.bytes)} (${hib.tokenCount} tokens) written in ${hib.durationMs} ms;`);
  // The emptied context stays allocated for the pool's grace (contextGraceSeconds, 5 s), so a
  // quick return skips the allocation; then its memory goes back to the OS.
  const hibernatedAt = performance.now();
  let rssAfter = (await rt.info()).memory.rssBytes;
  while (rssBefore - rssAfter < hib.bytes && performance.now() - hibernatedAt < 10_000) {
    await new Promise((r) => setTimeout(r, 250));
    rssAfter = (await rt.info()).memory.rssBytes;
  }
  console.log(`   runtime pod ${before.status!.pod} memory ${formatBytes(rssBefore)} -> ${formatBytes(rssAfter)} (${formatBytes(Math.max(0, rssBefore - rssAfter))} given back, ${secs(hibernatedAt)} after the hibernate: the context is kept for a 5 s grace first)`);
  console.log(`2. kubectl delete pod ${before.status!.pod} (node ${before.status!.node}), as a rolling update or a drain would`);
  await tb.kubectl(["delete", "pod", "-n", RELEASE_NAMESPACE, before.status!.pod!, "--wait=false"]);
  console.log("3. the next message goes through the gateway as usual:");
  const next = await ask("Remind me: who am I and where am I going?");
  // restoreVerified comes with the first evaluation after the rehydrate, a status update later.
  const after = await eventually("the rehydrate in status", async () => { const s = await get("trip"); return s.status?.lastRehydrate?.restoreVerified !== undefined && s.status.pod !== before.status!.pod ? s : undefined; }, 30_000);
  console.log(`   answered in ${next.ms.toFixed(0)} ms by pod ${after.status!.pod} on node ${after.status!.node} (was ${before.status!.node}); rehydrated=${next.rehydrated} in ${after.status!.lastRehydrate!.durationMs} ms;`);
  console.log(`   ${next.usage.prompt_tokens_details.cached_tokens} of ${next.usage.prompt_tokens} prompt tokens reused from the restored state (restore verified: ${after.status!.lastRehydrate!.restoreVerified})`);
  console.log("\ndemo: every step succeeded");
} finally {
  await tb.stop();
}
