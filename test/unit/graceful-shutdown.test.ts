// The gateway's SIGTERM: answers being streamed finish, connections routed during the drain are served.
import assert from "node:assert/strict";
import { request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import express from "express";
import { createLogger } from "../../common/logger.js";
import { GracefulShutdown } from "../../gateway/graceful-shutdown.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A server whose /stream writes a chunk every 50 ms for `ms`, and /ping answers at once. */
async function serve(shutdown: GracefulShutdown, streamMs: number): Promise<{ server: Server; port: number }> {
  const app = express();
  app.use(shutdown.closeConnections);
  app.get("/ping", (_q, r) => { r.json({ ready: shutdown.ready }); });
  app.get("/stream", async (_q, r) => {
    r.setHeader("content-type", "text/event-stream");
    for (let t = 0; t < streamMs; t += 50) { r.write(`data: ${t}\n\n`); await sleep(50); }
    r.end("data: [DONE]\n\n");
  });
  const server = app.listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  return { server, port: (server.address() as AddressInfo).port };
}

/** A shutdown whose exits are recorded, its server, and a stream of `streamMs` under way for 50 ms. */
async function streaming(times: { drainMs: number; inFlightMs: number }, streamMs: number) {
  const exits: number[] = [];
  const shutdown = new GracefulShutdown(times, createLogger("test", "silent"), (c) => { exits.push(c); });
  const { server, port } = await serve(shutdown, streamMs);
  const stream = get(port, "/stream");
  await sleep(50);
  return { exits, shutdown, server, port, stream };
}

/** A GET on a connection of its own: status, the connection header and the whole body, or the error. */
const get = (port: number, path: string) => new Promise<{ status: number; connection?: string; body: string } | Error>((resolve) => {
  const req = request({ host: "127.0.0.1", port, path, agent: false }, (res) => {
    let body = "";
    res.setEncoding("utf8").on("data", (c: string) => { body += c; }).on("end", () => resolve({ status: res.statusCode!, connection: res.headers.connection, body }))
      .on("error", resolve);
  });
  req.on("error", resolve).end();
});

describe("gateway graceful shutdown", () => {
  it("on SIGTERM serves new connections through the drain, then refuses them, and exits once the streams in flight are done", async () => {
    const { exits, shutdown, server, port, stream: streamed } = await streaming({ drainMs: 300, inFlightMs: 10_000 }, 1200);
    shutdown.begin(server, "SIGTERM");
    assert.equal(shutdown.ready, false, "readiness fails at once, so the pod leaves the endpoints");
    const during = await get(port, "/ping");
    assert.ok(!(during instanceof Error), `a connection routed during the drain is served: ${String(during)}`);
    assert.equal(during.status, 200);
    assert.equal(during.connection, "close", "and told to reconnect elsewhere");
    await sleep(400);
    const after = await get(port, "/ping");
    assert.ok(after instanceof Error && /ECONNREFUSED/.test(after.message), "after the drain nothing new is accepted");
    assert.deepEqual(exits, [], "a stream is still under way");
    const stream = await streamed;
    assert.ok(!(stream instanceof Error) && stream.body.endsWith("data: [DONE]\n\n"), "the stream started before SIGTERM ran to its end");
    for (let i = 0; i < 40 && exits.length === 0; i++) await sleep(50);
    assert.deepEqual(exits, [0]);
  });

  it("exits at the deadline when a request outlives it", async () => {
    const { exits, shutdown, server, stream } = await streaming({ drainMs: 50, inFlightMs: 300 }, 5000);
    shutdown.begin(server, "SIGTERM");
    await sleep(200);
    assert.deepEqual(exits, []);
    await sleep(400);
    assert.deepEqual(exits, [0]);
    server.closeAllConnections();
    await stream;
  });

  it("a Ctrl-C skips the drain, and a second one exits at once", async () => {
    const { exits, shutdown, server, port, stream } = await streaming({ drainMs: 60_000, inFlightMs: 60_000 }, 5000);
    shutdown.begin(server, "SIGINT");
    await sleep(50);
    assert.ok((await get(port, "/ping")) instanceof Error, "no drain: nothing new is accepted");
    assert.deepEqual(exits, []);
    shutdown.begin(server, "SIGINT");
    assert.deepEqual(exits, [0]);
    server.closeAllConnections();
    await stream;
  });
});
