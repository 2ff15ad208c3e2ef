// Which pod the gateway sends a request to, from the status the operator computes: a session whose
// state its runtime refused is sent there (the runtime answers 422 at once, or serves a repaired
// file), while placement and hand-offs are waited for.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { InferenceSession } from "../../contract/inference-session.js";
import type { SessionStatus } from "../../contract/runtime-api.js";
import { computeStatus, type Observation, type RuntimePod } from "../../operator/decisions.js";
import { servingPod, unservable } from "../../gateway/serving-pod.js";

const pod: RuntimePod = { name: "rt-0", namespace: "torpor", node: "node-a", ip: "127.1.0.1", port: 8080, model: "m", ready: true, sessions: 1 };
const session: InferenceSession = {
  apiVersion: "torpor.dev/v1alpha1", kind: "InferenceSession",
  metadata: { name: "s", namespace: "ns", generation: 2 }, spec: { model: "m", residency: "InMemory" },
};
const runtime = (residency: SessionStatus["residency"], extra: Partial<SessionStatus> = {}): SessionStatus => ({
  namespace: "ns", name: "s", path: "", residency, phase: "Idle", epoch: 1, contextSize: 1024, tokenCount: 10, messages: 2, queued: 0,
  createdAt: "2026-01-01T00:00:00.000Z", lastActivity: "2026-01-01T00:00:00.000Z", ...extra,
});
const routed = (o: Omit<Observation, "now">) => servingPod({ ...session, status: computeStatus(session, { now: new Date("2026-01-01T01:00:00Z"), ...o }) });
const refused = { code: "state_rejected", reason: "seal_invalid", message: "chunk 1 does not authenticate", at: "2026-01-01T00:59:00.000Z" };

describe("gateway routing from the session's status", () => {
  it("sends requests for a resident or hibernated session to its pod", () => {
    assert.equal(routed({ pod, runtime: runtime("InMemory") }), "rt-0");
    assert.equal(routed({ pod, runtime: runtime("Hibernated") }), "rt-0");
  });

  it("sends a request for a session whose state was refused to its pod, which answers for itself", () => {
    assert.equal(routed({ pod, runtime: runtime("Hibernated", { lastError: refused }) }), "rt-0");
    assert.equal(routed({ pod, runtime: runtime("Hibernated"), error: { reason: "CapacityExhausted", message: "the pool is full" } }), "rt-0");
  });

  it("holds requests while the session is not placed or is being handed off", () => {
    assert.equal(routed({ waiting: { reason: "NoRuntimePod", message: "no Ready runtime pod serves model m" } }), undefined);
    assert.equal(routed({ pod, runtime: runtime("Hibernated", { lastError: refused }), handOffFrom: { ...pod, name: "rt-old", ready: false } }), undefined);
    assert.equal(servingPod(session), undefined, "no status yet");
  });

  it("answers at once, with a status and a reason, for a session nothing will serve until someone changes something", () => {
    const why = (reason: string, message: string) => unservable({ ...session, status: computeStatus(session, { now: new Date("2026-01-01T01:00:00Z"), waiting: { reason, message } }) }, "ns", "s");
    const stopped = why("PoolStopped", "the runtime pool of model \"m\" was scaled to 0 replicas by hand");
    assert.deepEqual([stopped?.status, stopped?.code], [503, "pool_stopped"]);
    assert.match(stopped!.message, /session ns\/s cannot be served now: the runtime pool of model "m" was scaled to 0 replicas by hand/);
    assert.deepEqual([why("NoRuntimePool", "no runtime pool serves model \"m\"")?.status, why("NoRuntimePool", "x")?.code], [404, "model_not_found"]);
    assert.equal(why("NoRuntimePod", "no Ready runtime pod serves model m"), undefined, "pods are coming: wait");
    assert.equal(why("ScaledToZero", "asleep"), undefined, "a sleeping pool is woken by the request");
    assert.equal(unservable(session, "ns", "s"), undefined, "no status yet");
  });
});
