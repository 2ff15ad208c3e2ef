// `npm run demo`: the runtime on this machine with the generated test model. Creates a session,
// chats, hibernates it (bytes written, memory freed), chats again (rehydrated, how long it took).
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ensureTestModel } from "../fixtures/gguf/test-model.js";
import { startRuntime } from "../testbed/local-runtime.js";

const MiB = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
const cache = process.env.TORPOR_CACHE_DIR ?? path.join(os.homedir(), ".cache", "torpor");

console.log("torpor local demo: generating the test-fixture model (random weights: the replies are gibberish by design)");
const model = process.env.TORPOR_MODEL ?? await ensureTestModel(path.join(cache, "models"),
  { layers: 8, embedding: 512, feedForward: 512, heads: 8, contextLength: 16384, seed: 3 });
const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-demo-"));
const rt = await startRuntime({ TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dir, TORPOR_LOG_LEVEL: "warn", TORPOR_MAX_CONTEXT_SIZE: "16384" });
try {
  const c = rt.client;
  console.log(`1. runtime up at ${rt.url} (model ${model})`);
  const st = await c.register("demo", "chat", { contextSize: 4096, systemPrompt: "You are a helpful assistant." });
  console.log(`2. session demo/chat registered: residency=${st.residency} (no context until the first request)`);
  const history = "Here is a long document we are reviewing together. ".repeat(50);
  let t = performance.now();
  const r1 = await c.submit("demo", "chat", `${history}\nSummarise it.`, { max_tokens: 24 });
  console.log(`3. first turn: ${r1.usage.prompt_tokens} prompt tokens evaluated in ${(performance.now() - t).toFixed(0)} ms; reply: ${JSON.stringify(r1.reply)}`);
  const rssBefore = await rt.rssBytes();
  t = performance.now();
  const h = await c.hibernate("demo", "chat");
  const rssAfter = await rt.rssBytes();
  console.log(`4. hibernated in ${(performance.now() - t).toFixed(0)} ms: wrote ${MiB(h.record!.bytes)} (${h.record!.tokenCount} tokens) to ${h.record!.stateFile}`);
  console.log(`   runtime RSS ${MiB(rssBefore)} -> ${MiB(rssAfter)}: ${MiB(rssBefore - rssAfter)} freed`);
  t = performance.now();
  const r2 = await c.submit("demo", "chat", "And what was the main point?", { max_tokens: 24 });
  console.log(`5. next turn rehydrated=${r2.torpor.rehydrated} in ${r2.torpor.rehydrate_ms?.toFixed(1)} ms (whole turn ${(performance.now() - t).toFixed(0)} ms, ${r2.usage.prompt_tokens_details.cached_tokens} of ${r2.usage.prompt_tokens} prompt tokens reused); reply: ${JSON.stringify(r2.reply)}`);
  const files = await c.files();
  console.log(`6. hibernation files left on the volume: ${files.files.length} (deleted after the rehydrate)`);
} finally {
  await rt.stop();
  await rm(dir, { recursive: true, force: true });
}
