// A stream the runtime ends before its [DONE] (the pod killed mid-answer) reaches the caller with
// an error event, so an OpenAI client does not take half an answer for a whole one.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { createLogger } from "../../common/logger.js";
import type { InferenceSession } from "../../contract/inference-session.js";
import { allowEveryone } from "../../gateway/access.js";
import { createGatewayApp, GatewayMetrics } from "../../gateway/app.js";
import type { SessionRouter, SessionSource } from "../../gateway/session-router.js";

const session = { apiVersion: "torpor.dev/v1alpha1", kind: "InferenceSession", metadata: { name: "s", namespace: "ns" }, spec: { model: "m" }, status: { epoch: 1, pod: "p" } } as InferenceSession;
const chunk = (text: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: text } }] })}\n\n`;
const listen = async (server: Server) => {
  await new Promise((r) => server.listen(0, "127.0.0.1", () => r(undefined)));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
};

describe("gateway: a stream the runtime does not finish", () => {
  const servers: Server[] = [];
  after(() => { for (const s of servers) s.close(); });

  /** A gateway in front of a fake runtime that writes two chunks and then `ending` (or is killed). */
  async function chat(ending: "killed" | "done"): Promise<string> {
    const runtime = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(chunk("Once upon"));
      res.write(chunk(" a time"));
      if (ending === "killed") setTimeout(() => res.socket?.destroy(), 20);
      else res.end("data: [DONE]\n\n");
    });
    servers.push(runtime);
    const url = await listen(runtime);
    const source: SessionSource = { get: async () => session };
    const router = { route: async () => ({ session, url, pod: "p", woken: false }) } as unknown as SessionRouter;
    const gateway = createServer(createGatewayApp({
      router, source, access: allowEveryone, runtimeToken: "t", log: createLogger("test", "silent"), maxBodyBytes: 1 << 20, wakeTimeoutMs: 1000,
    }, new GatewayMetrics(false)));
    servers.push(gateway);
    const r = await fetch(`${await listen(gateway)}/v1/sessions/ns/s/chat/completions`, {
      method: "POST", body: JSON.stringify({ messages: [{ role: "user", content: "story" }], stream: true }),
    });
    assert.equal(r.status, 200);
    return r.text();
  }

  it("ends with an error event that says why", async () => {
    const text = await chat("killed");
    assert.match(text, /Once upon/);
    assert.doesNotMatch(text, /\[DONE\]/);
    const last = text.trim().split("\n\n").at(-1)!;
    const event = JSON.parse(last.replace(/^data: /, "")) as { error: { code: string; message: string } };
    assert.equal(event.error.code, "runtime_unavailable");
    assert.match(event.error.message, /went away in the middle of the answer/);
  });

  it("passes a finished stream through untouched", async () => {
    const text = await chat("done");
    assert.ok(text.endsWith("data: [DONE]\n\n"));
    assert.doesNotMatch(text, /error/);
  });
});
