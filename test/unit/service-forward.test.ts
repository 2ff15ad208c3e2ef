// The testbed's stand-in for `kubectl port-forward svc/...` (testbed/service-forward.ts): a
// connection made while no pod is Ready waits for one instead of being closed.
import assert from "node:assert/strict";
import http from "node:http";
import type net from "node:net";
import { describe, it } from "node:test";
import { forwardTo } from "../../testbed/service-forward.js";

async function listen(port = 0): Promise<http.Server> {
  const server = http.createServer((req, res) => res.end(`hello ${req.url}`));
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return server;
}
const portOf = (s: http.Server) => (s.address() as net.AddressInfo).port;
const closed = (s: http.Server) => new Promise<void>((resolve) => s.close(() => resolve()));

describe("testbed service forward", () => {
  it("holds a connection while no pod is ready and forwards it once one is", async () => {
    const upstream = await listen();
    let ready = false;
    const fwd = await forwardTo(async () => (ready ? "127.0.0.1" : undefined), portOf(upstream), { retryMs: 20 });
    try {
      const t0 = Date.now();
      setTimeout(() => { ready = true; }, 300);
      const res = await fetch(`${fwd.url}/a`);
      assert.equal(await res.text(), "hello /a");
      assert.ok(Date.now() - t0 >= 250, "answered once the pod was there, not before");
    } finally {
      await fwd.close();
      await closed(upstream);
    }
  });

  it("forgets an address that refuses and tries again (a pod that went away; its successor at the same place)", async () => {
    const probe = await listen();
    const port = portOf(probe);
    await closed(probe); // nothing listens there now
    let forgotten = 0;
    const fwd = await forwardTo(async () => "127.0.0.1", port, { retryMs: 20, forget: () => { forgotten++; } });
    let upstream: http.Server | undefined;
    try {
      setTimeout(() => { void listen(port).then((s) => { upstream = s; }); }, 200);
      const res = await fetch(`${fwd.url}/b`);
      assert.equal(await res.text(), "hello /b");
      assert.ok(forgotten >= 1, "the refusing address was dropped from the cache");
    } finally {
      await fwd.close();
      if (upstream) await closed(upstream);
    }
  });

  it("closes the connection when no pod is ready within the wait", async () => {
    const fwd = await forwardTo(async () => undefined, 9, { waitMs: 200, retryMs: 20 });
    try {
      const t0 = Date.now();
      await assert.rejects(fetch(`${fwd.url}/c`));
      assert.ok(Date.now() - t0 >= 150, "held for the wait first");
    } finally {
      await fwd.close();
    }
  });
});
