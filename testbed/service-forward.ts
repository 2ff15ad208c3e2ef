// A local address for a Service of the testbed, as `kubectl port-forward svc/...` gives on kind.
// The testbed has no kube-proxy, so Service addresses do not route and the URL that `cluster-up`
// printed was a pod's IP: it went dead as soon as that pod was replaced (a `helm upgrade` that
// touches the gateway, a drain of its node). This forwarder picks a Ready pod of the Service for
// each connection, so the printed address keeps working across restarts.
//
// While no pod is Ready (the testbed runs one gateway; a drain of its node leaves none for a few
// seconds), a connection is held until one is, instead of closed at once: the openai Node client
// (undici) waited out its whole timeout on about 1 in 30 connections closed right after accept
// (against a bare server that accepts and closes: 1 of 30 requests hung, 29 failed at once), so a
// drain turned into a client hanging for minutes. Held, the turn is late by the gap, and answered.
import net from "node:net";
import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { isReadyPod } from "../common/runtime-pods.js";

export interface ServiceForward {
  url: string;
  close(): Promise<void>;
}

/** How long a connection is held for a Ready pod before it is closed. */
const WAIT_FOR_POD_MS = 30_000;

/** Forwards 127.0.0.1:`localPort` (0: any free port) to `targetPort` of a Ready pod matching `selector`. */
export async function forwardService(kc: KubeConfig, namespace: string, selector: string, targetPort: number, localPort = 0): Promise<ServiceForward> {
  const core = kc.makeApiClient(CoreV1Api);
  // Looked up once a second at most: a connection must not cost an API call, and a pod that went
  // away is noticed when connecting to it fails (the next look asks again).
  let cached: { ip: string; at: number } | undefined;
  const target = async (): Promise<string | undefined> => {
    if (cached && Date.now() - cached.at < 1000) return cached.ip;
    const pods = await core.listNamespacedPod({ namespace, labelSelector: selector });
    const ip = pods.items.find(isReadyPod)?.status?.podIP;
    cached = ip ? { ip, at: Date.now() } : undefined;
    return ip;
  };
  return forwardTo(target, targetPort, { localPort, forget: () => { cached = undefined; } });
}

/**
 * Forwards each connection to `targetPort` of the address `target` names at that moment, waiting
 * (up to `waitMs`) while it names none or the address refuses. `forget` drops a cached address
 * that refused.
 */
export async function forwardTo(target: () => Promise<string | undefined>, targetPort: number,
  opts: { localPort?: number; forget?: () => void; waitMs?: number; retryMs?: number } = {}): Promise<ServiceForward> {
  const { localPort = 0, forget = () => undefined, waitMs = WAIT_FOR_POD_MS, retryMs = 200 } = opts;
  const open = new Set<net.Socket>();
  const connectOnce = async (): Promise<net.Socket | undefined> => {
    const ip = await target().catch(() => undefined);
    if (!ip) return undefined;
    return new Promise((resolve) => {
      const upstream = net.connect(targetPort, ip);
      upstream.once("connect", () => { upstream.removeAllListeners("error"); resolve(upstream); });
      upstream.once("error", () => { forget(); upstream.destroy(); resolve(undefined); });
    });
  };
  const server = net.createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    client.on("error", () => client.destroy());
    // Nothing is read from the client until the upstream is there: what it sent waits in the socket.
    client.pause();
    void (async () => {
      const deadline = Date.now() + waitMs;
      let upstream = await connectOnce();
      while (!upstream && !client.destroyed && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, retryMs));
        upstream = await connectOnce();
      }
      if (!upstream || client.destroyed) { upstream?.destroy(); client.destroy(); return; }
      upstream.on("error", () => { forget(); client.destroy(); });
      client.on("close", () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    })();
  });
  await new Promise<void>((resolve, reject) => { server.once("error", reject); server.listen(localPort, "127.0.0.1", resolve); });
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const c of open) c.destroy(); // kept-alive connections would hold close() open
    }),
  };
}
