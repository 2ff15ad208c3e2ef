// A local address for a Service of the testbed, as `kubectl port-forward svc/...` gives on kind.
// The testbed has no kube-proxy, so Service addresses do not route and the URL that `cluster-up`
// printed was a pod's IP: it went dead as soon as that pod was replaced (a `helm upgrade` that
// touches the gateway, a drain of its node). This forwarder picks a Ready pod of the Service for
// each connection, so the printed address keeps working across restarts.
import net from "node:net";
import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { isReadyPod } from "../common/runtime-pods.js";

export interface ServiceForward {
  url: string;
  close(): Promise<void>;
}

/** Forwards 127.0.0.1:`localPort` (0: any free port) to `targetPort` of a Ready pod matching `selector`. */
export async function forwardService(kc: KubeConfig, namespace: string, selector: string, targetPort: number, localPort = 0): Promise<ServiceForward> {
  const core = kc.makeApiClient(CoreV1Api);
  // Looked up once a second at most: a connection must not cost an API call, and a pod that went
  // away is noticed when connecting to it fails (the next connection looks again).
  let cached: { ip: string; at: number } | undefined;
  const target = async (): Promise<string | undefined> => {
    if (cached && Date.now() - cached.at < 1000) return cached.ip;
    const pods = await core.listNamespacedPod({ namespace, labelSelector: selector });
    const ip = pods.items.find(isReadyPod)?.status?.podIP;
    cached = ip ? { ip, at: Date.now() } : undefined;
    return ip;
  };
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    client.pause();
    target().then((ip) => {
      if (!ip) { client.destroy(); return; }
      const upstream = net.connect(targetPort, ip, () => { client.pipe(upstream); upstream.pipe(client); client.resume(); });
      upstream.on("error", () => { cached = undefined; client.destroy(); });
      client.on("error", () => upstream.destroy());
      client.on("close", () => upstream.destroy());
    }, () => client.destroy());
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
