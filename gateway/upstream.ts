// The gateway's requests to runtime pods: node:http over a keep-alive pool, the response handed on
// as a Node stream. fetch (undici) with its web-stream bridge cost about a millisecond more per
// proxied request on the benchmark machine (figure 6), which is the whole overhead budget.
import http from "node:http";

const agent = new http.Agent({ keepAlive: true, maxSockets: 512, scheduling: "lifo" });

/** POSTs a JSON body; resolves with the response head (the body streams), rejects if no response came. */
export function postJson(url: string, token: string, body: string, signal: AbortSignal): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: "POST", agent, signal,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
    }, resolve);
    req.once("error", reject);
    req.end(body);
  });
}
