// Fidelity on a real model (SmolLM2-135M-Instruct, its own tokenizer and chat template): what a
// random-weight fixture cannot show. Greedy continuation after a hibernate/rehydrate, and after a
// move to the other runtime pod, equals a twin that never hibernated; the restored tokens are
// reused; an OpenAI SDK client streams real text through the gateway.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { ChatHistoryItem, Token } from "node-llama-cpp";
import OpenAI from "openai";
import { TorporError } from "../../contract/errors.js";
import type { InferenceSession } from "../../contract/inference-session.js";
import { freePort } from "../../testbed/local-runtime.js";
import { realModel } from "../../testbed/models.js";
import { eventually, installTorpor, startEntryPoint, type NodeProcess } from "../../testbed/torpor-on-testbed.js";
import { startTestbed, type Testbed } from "../../testbed/testbed.js";
import { greedy, harness } from "../helpers/in-process-runtime.js";

const TURNS = ["My name is Ada and I live in Porto.", "Name one dish I could cook tonight.", "What is my name and where do I live?"];

describe("real model, in process", () => {
  it("continues exactly after hibernate + rehydrate, reusing every restored token", async () => {
    const h = await harness({}, undefined, realModel);
    const twin = await h.manager.register({ namespace: "default", name: "twin", systemPrompt: "Answer briefly." });
    const s = await h.manager.register({ namespace: "default", name: "sleeper", systemPrompt: "Answer briefly." });
    for (const [i, turn] of TURNS.entries()) {
      if (i > 0) {
        const out = await s.hibernate("test");
        assert.equal(out.outcome, "hibernated");
      }
      const a = await twin.submit(turn, greedy(32));
      const b = await s.submit(turn, greedy(32));
      assert.ok(/[a-z]{3,}/i.test(a.text), `real text: ${a.text}`);
      assert.equal(b.text, a.text, `turn ${i} diverged after a rehydrate`);
      if (i > 0) {
        assert.equal(b.rehydrated, true);
        const r = s.status().lastRehydrate!;
        assert.equal(r.restoreVerified, true);
        assert.ok(b.cachedTokens >= r.tokenCount - 1, `reused ${b.cachedTokens} of ${r.tokenCount} restored tokens`);
      }
    }
  });
  it("samples as asked: greedy is the model's own choice; penalties and logit_bias steer it; a token outside the vocabulary is refused", async () => {
    const h = await harness({}, undefined, realModel);
    const s = await h.manager.register({ namespace: "default", name: "sampler" });
    const messages: ChatHistoryItem[] = [{ type: "user", text: "Write the days of the week, one per line, three times over." }];
    const plain = await s.complete(messages, greedy(48));
    // The model's own greedy choice: the same prompt through a bare sequence, nothing between the
    // logits and the argmax.
    const prompt = h.host.chatWrapper.generateContextState({ chatHistory: [...messages, { type: "model", response: [] }] }).contextText.tokenize(h.host.model.tokenizer);
    const ctx = await h.host.createContext(1024);
    const own: Token[] = [];
    try {
      for await (const t of ctx.getSequence().evaluate(prompt, { temperature: 0 })) { own.push(t); if (own.length >= 48) break; }
    } finally { await ctx.dispose(); }
    const ownText = h.host.model.detokenize(own);
    assert.ok(plain.text.length > 20 && ownText.startsWith(plain.text), `greedy ${JSON.stringify(plain.text)} is not the model's own ${JSON.stringify(ownText)}`);

    const penalised = await s.complete(messages, { ...greedy(48), frequencyPenalty: 2, presencePenalty: 2 });
    assert.notEqual(penalised.text, plain.text, "penalties changed nothing");
    const banned = await s.complete(messages, { ...greedy(8), logitBias: [[own[0]!, -100]] });
    assert.ok(!banned.text.startsWith(h.host.model.detokenize([own[0]!])), `a banned first token was chosen: ${banned.text}`);
    const fox = h.host.model.tokenize("fox")[0]!;
    const forced = await s.complete(messages, { ...greedy(4), logitBias: [[fox, 100]] });
    assert.equal(forced.text, h.host.model.detokenize([fox, fox, fox, fox]));
    await assert.rejects(s.complete(messages, { ...greedy(4), logitBias: [[h.host.vocabularySize!, 1]] }),
      (e: unknown) => e instanceof TorporError && e.code === "bad_request" && /vocabulary/.test(e.message));
    assert.equal((await s.complete(messages, greedy(48))).text, plain.text, "the session serves as before");
  });
});

describe("real model on the testbed", () => {
  let tb: Testbed;
  let operator: NodeProcess;
  let gateway: NodeProcess;
  let gw: string;
  const get = async (name: string) => JSON.parse(await tb.kubectl(["get", "isess", name, "-o", "json"])) as InferenceSession;
  const session = (name: string) => `apiVersion: torpor.dev/v1alpha1\nkind: InferenceSession\nmetadata: {name: ${name}, namespace: default}\nspec: {model: tiny, contextSize: 2048, systemPrompt: Answer briefly.}\n`;

  before(async () => {
    tb = await startTestbed();
    await installTorpor(tb, 2, {}, await realModel());
    operator = await startEntryPoint("operator/main.js", tb, { TORPOR_OPERATOR_PORT: String(await freePort()), POD_NAME: "operator-0", TORPOR_RESYNC_SECONDS: "5" });
    const port = await freePort();
    gateway = await startEntryPoint("gateway/main.js", tb, { TORPOR_GATEWAY_PORT: String(port), TORPOR_GATEWAY_AUTH: "disabled" });
    gw = `http://127.0.0.1:${port}`;
    await eventually("gateway", async () => ((await fetch(`${gw}/healthz`)).ok ? true : undefined), 20_000);
  });
  after(async () => {
    await gateway?.stop();
    await operator?.stop();
    await tb?.stop();
  });

  it("streams real text with the OpenAI SDK, and after a move to the other pod continues exactly like a twin that never moved", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("mover") + "---\n" + session("stayer"));
    const client = (name: string) => new OpenAI({ apiKey: "unused", baseURL: `${gw}/v1/sessions/default/${name}`, maxRetries: 0, timeout: 120_000 });
    const chats: Record<string, Array<{ role: "user" | "assistant"; content: string }>> = { mover: [], stayer: [] };
    const turn = async (name: string, content: string) => {
      chats[name]!.push({ role: "user", content });
      const stream = await client(name).chat.completions.create({ model: "smollm2", messages: chats[name]!, max_tokens: 32, temperature: 0, stream: true, stream_options: { include_usage: true } }).withResponse();
      let text = "";
      let usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } } | undefined;
      for await (const chunk of stream.data) { text += chunk.choices[0]?.delta?.content ?? ""; usage = (chunk as { usage?: typeof usage }).usage ?? usage; }
      chats[name]!.push({ role: "assistant", content: text });
      return { text, usage, rehydrated: stream.response.headers.get("x-torpor-rehydrated") === "true" };
    };
    for (const content of TURNS.slice(0, 2)) {
      const a = await turn("stayer", content);
      const b = await turn("mover", content);
      assert.ok(/[a-z]{3,}/i.test(a.text), `real text: ${a.text}`);
      assert.equal(b.text, a.text);
    }
    const placed = await eventually("mover InMemory", async () => { const s = await get("mover"); return s.status?.residency === "InMemory" ? s : undefined; }, 20_000);
    const deletedAt = Date.now();
    await tb.kubectl(["delete", "pod", placed.status!.pod!, "--wait=false"]);
    const a = await turn("stayer", TURNS[2]!);
    const b = await turn("mover", TURNS[2]!);
    const moved = await get("mover");
    assert.notEqual(moved.status!.pod, placed.status!.pod);
    assert.equal(b.text, a.text, "greedy continuation after the move");
    const restored = await eventually("the restore check in status", async () => { const s = await get("mover"); return s.status?.lastRehydrate?.restoreVerified !== undefined ? s : undefined; }, 20_000);
    // Rehydrated on the new pod by that turn, or just before it by the operator (it was in memory).
    assert.ok(b.rehydrated || Date.parse(restored.status!.lastRehydrate!.time) >= deletedAt, JSON.stringify(restored.status!.lastRehydrate));
    assert.equal(restored.status!.lastRehydrate!.restoreVerified, true);
    assert.ok(restored.status!.lastRehydrate!.reusedTokens! > 0);
    assert.equal(b.usage?.prompt_tokens_details?.cached_tokens, restored.status!.lastRehydrate!.reusedTokens, "cached_tokens is the reuse of the restored state");
  });
});
