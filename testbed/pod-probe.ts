// One probe of a container, as the kubelet runs it: httpGet (2xx/3xx), tcpSocket (connects) or
// exec (exit 0), each bounded by timeoutSeconds. A probe with no handler passes.
import { spawn } from "node:child_process";
import net from "node:net";
import type { V1Container, V1Probe } from "@kubernetes/client-node";

export async function runProbe(p: V1Probe, container: V1Container, ip: string, cwd: string): Promise<boolean> {
  const port = (raw: number | string | undefined) =>
    typeof raw === "number" ? raw : Number(container.ports?.find((x) => x.name === raw)?.containerPort ?? raw);
  const timeout = (p.timeoutSeconds ?? 1) * 1000;
  if (p.httpGet) {
    const r = await fetch(`http://${ip}:${port(p.httpGet.port)}${p.httpGet.path ?? "/"}`, { signal: AbortSignal.timeout(timeout) });
    return r.status >= 200 && r.status < 400;
  }
  if (p.tcpSocket) {
    return new Promise((resolve) => {
      const s = net.connect(port(p.tcpSocket!.port), ip);
      s.setTimeout(timeout, () => { s.destroy(); resolve(false); });
      s.once("connect", () => { s.destroy(); resolve(true); });
      s.once("error", () => resolve(false));
    });
  }
  if (p.exec?.command?.length) {
    const [cmd, ...args] = p.exec.command;
    return new Promise((resolve) => {
      const child = spawn(cmd!, args, { cwd, stdio: "ignore" });
      const timer = setTimeout(() => { child.kill("SIGKILL"); resolve(false); }, timeout);
      child.once("exit", (code) => { clearTimeout(timer); resolve(code === 0); });
      child.once("error", () => { clearTimeout(timer); resolve(false); });
    });
  }
  return true;
}
