// Load with nothing lost: 100 concurrent streaming clients over 20 sessions through the gateway,
// while sessions are hibernated at random by kubectl patch and by the idle policy. Zero 5xx, and
// every client turn appears exactly once, in order, in its session's history. A conversation cannot
// outgrow its context, so a client also stops once its session's context is nearly full (a fast
// machine gets there before the three minutes are up).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { RuntimeClient } from "../../contract/runtime-client.js";
import type { InferenceSession } from "../../contract/inference-session.js";
import { freePort } from "../../testbed/local-runtime.js";
import { eventually, installTorpor, startEntryPoint, TOKEN, type NodeProcess } from "../../testbed/torpor-on-testbed.js";
import { startTestbed, type Testbed } from "../../testbed/testbed.js";

const SESSIONS = 20;
const CLIENTS = 100;
// Three minutes, as the reliability issue asks; TORPOR_LOAD_SECONDS shortens it for local iteration.
const SECONDS = Number(process.env.TORPOR_LOAD_SECONDS ?? 180);
const CONTEXT = 32768;
/** Room left for the turns the session's other clients may have in flight (~100 tokens each). */
const CONTEXT_MARGIN = (CLIENTS / SESSIONS) * 200;

describe("load", () => {
  let tb: Testbed;
  let operator: NodeProcess;
  let gateway: NodeProcess;
  let gw: string;

  before(async () => {
    tb = await startTestbed();
    await installTorpor(tb);
    const sessions = Array.from({ length: SESSIONS }, (_, i) => `
apiVersion: torpor.dev/v1alpha1
kind: InferenceSession
metadata: {name: load-${i}, namespace: default}
spec: {model: tiny, contextSize: ${CONTEXT}, hibernation: {idleAfter: ${i % 2 ? "2s" : "1h"}}}`).join("\n---");
    await tb.kubectl(["apply", "-f", "-"], sessions);
    operator = await startEntryPoint("operator/main.js", tb, { TORPOR_OPERATOR_PORT: String(await freePort()), POD_NAME: "operator-0" });
    const port = await freePort();
    gateway = await startEntryPoint("gateway/main.js", tb, { TORPOR_GATEWAY_PORT: String(port), TORPOR_GATEWAY_AUTH: "disabled", TORPOR_GATEWAY_WAKE_TIMEOUT_SECONDS: "120" });
    gw = `http://127.0.0.1:${port}`;
    await eventually("gateway", async () => ((await fetch(`${gw}/healthz`)).ok ? true : undefined), 20_000);
    await eventually("placement of every session", async () => {
      const list = JSON.parse(await tb.kubectl(["get", "isess", "-o", "json"])) as { items: InferenceSession[] };
      return list.items.every((s) => s.status?.pod) ? true : undefined;
    }, 60_000);
  });
  after(async () => {
    await gateway?.stop();
    await operator?.stop();
    await tb?.stop();
  });

  it(`${CLIENTS} streaming clients over ${SESSIONS} sessions for ${SECONDS}s with random hibernation: no 5xx, no lost or repeated turn`, async () => {
    const started = Date.now();
    const deadline = started + SECONDS * 1000;
    const sent = new Map<number, number>();
    let stoppedFull = 0;
    const statuses = new Map<number, number>();
    let patches = 0;
    const client = async (c: number) => {
      const session = `load-${c % SESSIONS}`;
      let turn = 0;
      while (Date.now() < deadline) {
        const res = await fetch(`${gw}/v1/sessions/default/${session}/submit`, {
          method: "POST", headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: `client ${c} turn ${turn}`, max_tokens: 3, stream: true }),
        });
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        const text = await res.text();
        if (res.status !== 200) throw new Error(`client ${c} turn ${turn}: HTTP ${res.status} ${text.slice(0, 300)}`);
        assert.match(text, /data: \[DONE\]/);
        turn++;
        const last = text.split("\n").filter((l) => l.startsWith("data: {")).at(-1)!;
        const usage = (JSON.parse(last.slice(6)) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
        if (usage.prompt_tokens + usage.completion_tokens > CONTEXT - CONTEXT_MARGIN) { stoppedFull++; break; }
      }
      sent.set(c, turn);
    };
    const patcher = async () => {
      while (Date.now() < deadline && sent.size < CLIENTS) {
        await new Promise((r) => setTimeout(r, 1500));
        const victim = `load-${Math.floor(Math.random() * SESSIONS)}`;
        await tb.kubectl(["patch", "isess", victim, "--type=merge", "-p", '{"spec":{"residency":"Hibernated"}}']);
        patches++;
      }
    };
    await Promise.all([...Array.from({ length: CLIENTS }, (_, c) => client(c)), patcher()]);
    const fiveXx = [...statuses].filter(([s]) => s >= 500).reduce((a, [, n]) => a + n, 0);
    assert.equal(fiveXx, 0);

    const list = JSON.parse(await tb.kubectl(["get", "isess", "-o", "json"])) as { items: InferenceSession[] };
    let turns = 0;
    for (const s of list.items) {
      const rt = new RuntimeClient(`http://${s.status!.podIP}:8080`, TOKEN);
      const h = await rt.request<{ history: Array<{ type: string; text?: string }> }>("GET", `/v1/sessions/default/${s.metadata.name}?history=true`);
      const prompts = h.history.filter((m) => m.type === "user").map((m) => m.text!);
      for (let c = Number(s.metadata.name.split("-")[1]); c < CLIENTS; c += SESSIONS) {
        const mine = prompts.filter((p) => p.startsWith(`client ${c} turn `)).map((p) => Number(p.split(" ").at(-1)));
        assert.deepEqual(mine, Array.from({ length: sent.get(c)! }, (_, t) => t), `client ${c} in ${s.metadata.name}`);
        turns += mine.length;
      }
    }
    const seconds = Math.round((Date.now() - started) / 1000);
    console.log(`load: ${turns} turns by ${CLIENTS} clients over ${SESSIONS} sessions in ${seconds}s (${stoppedFull} clients stopped at a full context), ${patches} random hibernations, statuses ${JSON.stringify(Object.fromEntries(statuses))}`);
    assert.ok(turns >= CLIENTS, "every client completed at least one turn");
  });
});
