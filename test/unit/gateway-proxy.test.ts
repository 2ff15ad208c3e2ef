// The gateway's proxy against a fake runtime: how answers the runtime cannot finish reach the caller.
import assert from "node:assert/strict";
import { createServer, type RequestListener, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { createLogger } from "../../common/logger.js";
import { TorporError } from "../../contract/errors.js";
import type { InferenceSession } from "../../contract/inference-session.js";
import { allowEveryone } from "../../gateway/access.js";
import { createGatewayApp, GatewayMetrics } from "../../gateway/app.js";
import { SessionRouter, type SessionSource } from "../../gateway/session-router.js";
import { KubeConfig } from "@kubernetes/client-node";

const session = { apiVersion: "torpor.dev/v1alpha1", kind: "InferenceSession", metadata: { name: "s", namespace: "ns" }, spec: { model: "m" }, status: { epoch: 1, pod: "p" } } as InferenceSession;
/** A KubeConfig for an API server nothing here calls: the deletion is refused before any call. */
function offlineKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({ clusters: [{ name: "c", server: "https://127.0.0.1:1" }], users: [{ name: "u" }], contexts: [{ name: "x", cluster: "c", user: "u" }], currentContext: "x" });
  return kc;
}
const chunk = (text: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: text } }] })}\n\n`;

describe("gateway proxy", () => {
  const servers: Server[] = [];
  after(() => { for (const s of servers) s.close(); });
  const listen = async (handler: RequestListener) => {
    const server = createServer(handler);
    servers.push(server);
    await new Promise((r) => server.listen(0, "127.0.0.1", () => r(undefined)));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  };

  /** A chat request through a gateway whose session lives on the fake runtime `runtime`. */
  async function chat(runtime: RequestListener, stream: boolean, wakeTimeoutMs = 1000): Promise<Response> {
    const url = await listen(runtime);
    const source: SessionSource = { get: async () => session };
    const router = { route: async () => ({ session, url, pod: "p", woken: false }) } as unknown as SessionRouter;
    const gateway = await listen(createGatewayApp({
      router, source, access: allowEveryone, runtimeToken: "t", log: createLogger("test", "silent"), maxBodyBytes: 1 << 20, wakeTimeoutMs,
    }, new GatewayMetrics(false)));
    return fetch(`${gateway}/v1/sessions/ns/s/chat/completions`, { method: "POST", body: JSON.stringify({ messages: [{ role: "user", content: "story" }], stream }) });
  }

  /** A runtime that streams two chunks and then is killed, or finishes. */
  const streaming = (ending: "killed" | "done"): RequestListener => (_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(chunk("Once upon"));
    res.write(chunk(" a time"));
    if (ending === "killed") setTimeout(() => res.socket?.destroy(), 20);
    else res.end("data: [DONE]\n\n");
  };

  it("a stream the runtime does not finish (its pod killed) ends with an error event that says why", async () => {
    const text = await (await chat(streaming("killed"), true)).text();
    assert.match(text, /Once upon/);
    assert.doesNotMatch(text, /\[DONE\]/);
    const last = text.trim().split("\n\n").at(-1)!;
    const event = JSON.parse(last.replace(/^data: /, "")) as { error: { code: string; message: string } };
    assert.equal(event.error.code, "runtime_unavailable");
    assert.match(event.error.message, /went away in the middle of the answer/);
  });

  it("a finished stream passes through untouched", async () => {
    const text = await (await chat(streaming("done"), true)).text();
    assert.ok(text.endsWith("data: [DONE]\n\n"));
    assert.doesNotMatch(text, /error/);
  });

  it("a non-streamed answer cut by the runtime's shutdown is asked again, however long the cut answer ran", async () => {
    let calls = 0;
    // The first pod wrote for longer than the whole wake bound before its shutdown deadline stopped it.
    const runtime: RequestListener = (_req, res) => {
      const first = ++calls === 1;
      setTimeout(() => {
        const body = first ? new TorporError("shutting_down", "stopped at the shutdown deadline").toJSON() : { choices: [{ index: 0, message: { role: "assistant", content: "whole" } }] };
        res.writeHead(first ? 503 : 200, { "content-type": "application/json" }).end(JSON.stringify(body));
      }, first ? 400 : 0);
    };
    const r = await chat(runtime, false, 200);
    assert.equal(r.status, 200);
    assert.equal(((await r.json()) as { choices: Array<{ message: { content: string } }> }).choices[0]!.message.content, "whole");
    assert.equal(calls, 2);
  });

  it("a session being deleted is refused as such, not as one that does not exist (kubectl get still lists it)", async () => {
    const deleting = { ...session, metadata: { ...session.metadata, deletionTimestamp: "2026-12-07T02:57:24Z", finalizers: ["torpor.dev/hibernation-files"] } } as InferenceSession;
    const source = { get: async () => deleting } as unknown as SessionSource;
    const router = new SessionRouter(offlineKubeConfig(), source, { record: () => undefined } as never, createLogger("test", "silent"), { wakeTimeoutMs: 1000, runtimePort: 8080 }, {} as never);
    await assert.rejects(router.route("ns", "s"), (err: TorporError) => err.code === "session_not_found" && /is being deleted \(since 2026-12-07T02:57:24.000Z\)/.test(err.message));
  });
});
