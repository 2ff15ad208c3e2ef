// When a runtime pool goes to zero and when it comes back, branch by branch.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { V1Deployment } from "@kubernetes/client-node";
import { WAKE_ANNOTATION, type InferenceSession } from "../../contract/inference-session.js";
import { NO_RUNTIME_POOL_REASON, POOL_STOPPED_REASON, SCALED_TO_ZERO_REASON } from "../../contract/runtime-pool.js";
import { computeStatus, decidePlacement } from "../../operator/decisions.js";
import { decidePoolScale, isAsleep, isStopped, poolOf, type PoolState } from "../../operator/pool-scaling.js";

const T0 = Date.parse("2026-01-01T00:00:00.000Z");
const iso = (ms: number) => new Date(T0 + ms).toISOString();

const pool = (extra: Partial<PoolState> = {}): PoolState =>
  ({ name: "runtime-m", namespace: "torpor", model: "m", replicas: 2, readyReplicas: 2, afterMs: 60_000, awakeReplicas: 2, createdAt: T0, ...extra });

const session = (name: string, status: InferenceSession["status"] = {}, extra: { annotations?: Record<string, string>; generation?: number; residency?: "InMemory" | "Hibernated"; model?: string; deleting?: boolean } = {}): InferenceSession => ({
  apiVersion: "torpor.dev/v1alpha1", kind: "InferenceSession",
  metadata: {
    name, namespace: "ns", generation: extra.generation ?? 1, ...(extra.annotations ? { annotations: extra.annotations } : {}),
    ...(extra.deleting ? { deletionTimestamp: iso(0) } : {}),
  },
  spec: { model: extra.model ?? "m", residency: extra.residency ?? "InMemory" },
  status: { appliedGeneration: 1, ...status },
});

const asleep = (hib: number) => session("a", { residency: "Hibernated", phase: "Idle", lastHibernation: { file: "f", bytes: 1, tokenCount: 1, time: iso(hib), durationMs: 1 }, lastActivityTime: iso(hib - 1000) });

describe("runtime pool scaling", () => {
  it("reads a pool from its Deployment: policy, replicas to come back with, what the operator did", () => {
    const d: V1Deployment = {
      metadata: {
        name: "torpor-runtime-m", namespace: "torpor", labels: { "torpor.dev/model": "m" }, creationTimestamp: new Date(T0),
        annotations: { "torpor.dev/scale-to-zero-after-seconds": "300", "torpor.dev/awake-replicas": "3", "torpor.dev/scaled-to-zero-at": iso(5000) },
      },
      spec: { replicas: 0, selector: {}, template: {} },
    };
    const p = poolOf(d)!;
    assert.deepEqual(p, { name: "torpor-runtime-m", namespace: "torpor", model: "m", replicas: 0, readyReplicas: 0, afterMs: 300_000, awakeReplicas: 3, scaledToZeroAt: T0 + 5000, createdAt: T0 });
    assert.equal(isAsleep(p), true);
    assert.equal(poolOf({ metadata: { name: "x" } }), undefined, "no model label: not a pool");
    const off = poolOf({ metadata: { name: "x", labels: { "torpor.dev/model": "m" }, annotations: { "torpor.dev/scale-to-zero-after-seconds": "soon" } } })!;
    assert.equal(off.afterMs, 0, "an unreadable policy is off");
    assert.equal(isAsleep({ ...off, replicas: 0 }), false, "a pool a person scaled to zero is theirs");
  });

  it("sleeps once every session has slept for the policy's time, not before", () => {
    const s = [asleep(10_000), session("b", { residency: "NotCreated", phase: "Idle" })];
    assert.deepEqual(decidePoolScale(pool(), s, T0 + 69_999), { kind: "none" });
    assert.deepEqual(decidePoolScale(pool(), s, T0 + 70_000), { kind: "sleep", idleSinceMs: T0 + 10_000 });
    assert.deepEqual(decidePoolScale(pool({ afterMs: 0 }), s, T0 + 1e9), { kind: "none" }, "policy off");
    assert.deepEqual(decidePoolScale(pool({ wokenAt: T0 + 50_000 }), s, T0 + 100_000), { kind: "none" }, "idleness counts from the last wake");
    assert.deepEqual(decidePoolScale(pool({ createdAt: T0 + 50_000 }), [], T0 + 100_000), { kind: "none" }, "a new pool is not idle since the epoch");
    assert.equal(decidePoolScale(pool(), [], T0 + 60_000).kind, "sleep", "a pool with no sessions at all");
    assert.deepEqual(decidePoolScale(pool({ readyReplicas: 1 }), s, T0 + 1e9), { kind: "none" }, "starting or rolling");
  });

  it("owns the replica count of a pool that scales to zero, and of no other", () => {
    assert.deepEqual(decidePoolScale(pool({ replicas: 1, readyReplicas: 1 }), [], T0 + 1000), { kind: "resize", replicas: 2 });
    assert.deepEqual(decidePoolScale(pool({ replicas: 0, readyReplicas: 0 }), [], T0 + 1000), { kind: "resize", replicas: 2 }, "at zero, but not asleep: the configured count");
    assert.deepEqual(decidePoolScale(pool({ replicas: 5, afterMs: 0 }), [], T0 + 1e9), { kind: "none" }, "policy off: the chart's, or a person's");
    assert.deepEqual(decidePoolScale(pool({ replicas: 0, readyReplicas: 0, awakeReplicas: 0 }), [], T0 + 1e9), { kind: "none" }, "replicas 0 in values");
  });

  it("counts idleness from when a woken pool became available, not from the wake: its pods' start is not idleness", () => {
    const s = [asleep(10_000)];
    assert.deepEqual(decidePoolScale(pool({ afterMs: 2000, wokenAt: T0 + 100_000, availableAt: T0 + 130_000 }), s, T0 + 131_000), { kind: "none" });
    assert.equal(decidePoolScale(pool({ afterMs: 2000, wokenAt: T0 + 100_000, availableAt: T0 + 130_000 }), s, T0 + 132_000).kind, "sleep");
  });

  it("stays up while a session is in memory, moving, or asked into memory; other models' sessions do not count", () => {
    const later = T0 + 1e9;
    for (const busy of [
      session("a", { residency: "InMemory", phase: "Idle" }),
      session("a", { residency: "Hibernated", phase: "Rehydrating" }),
      session("a", { residency: "InMemory", phase: "HandingOff" }),
      session("a", { residency: "Hibernated", phase: "Idle" }, { generation: 2 }), // kubectl patch to InMemory, not carried out yet
    ]) assert.deepEqual(decidePoolScale(pool(), [busy], later), { kind: "none" }, JSON.stringify(busy.status));
    assert.equal(decidePoolScale(pool(), [session("x", { residency: "InMemory" }, { model: "other" })], later).kind, "sleep");
    assert.equal(decidePoolScale(pool(), [session("x", { residency: "InMemory" }, { deleting: true })], later).kind, "sleep", "a deleting session's files go by cleanup pod");
  });

  it("wakes for a request or a pre-warm after it went to sleep, with the replicas it had; not for what its pods did on the way out", () => {
    const p = pool({ replicas: 0, scaledToZeroAt: T0 + 100_000 });
    assert.deepEqual(decidePoolScale(p, [asleep(10_000)], T0 + 200_000), { kind: "none" });
    const requested = session("a", { residency: "Hibernated" }, { annotations: { [WAKE_ANNOTATION]: iso(150_000) } });
    assert.deepEqual(decidePoolScale(p, [requested], T0 + 200_000), { kind: "wake", replicas: 2, why: "a request for ns/a" });
    const before = session("a", { residency: "Hibernated" }, { annotations: { [WAKE_ANNOTATION]: iso(50_000) } });
    assert.equal(decidePoolScale(p, [before], T0 + 200_000).kind, "none", "a request before the sleep was served then");
    assert.equal(decidePoolScale(p, [session("a", { residency: "Hibernated", phase: "Idle" }, { generation: 2 })], T0 + 200_000).kind, "wake", "kubectl patch to InMemory");
    assert.equal(decidePoolScale(p, [session("a", { residency: "InMemory", phase: "HandingOff" })], T0 + 200_000).kind, "none", "a terminating pod is saving it");
    // A tenant may edit its session's annotations: a wake stamped in the future would wake the
    // pool after every sleep (a model load each time), or keep it up for good.
    const forged = session("a", { residency: "Hibernated", phase: "Idle" }, { annotations: { [WAKE_ANNOTATION]: iso(1e10) } });
    assert.equal(decidePoolScale(p, [forged], T0 + 200_000).kind, "none");
    assert.equal(decidePoolScale(pool(), [forged], T0 + 200_000).kind, "sleep");
  });

  it("a session of a sleeping pool is Ready (a request wakes the pool) and says why, and is not Pending", () => {
    const s = session("a", { residency: "Hibernated", pod: "gone" });
    const plan = decidePlacement(s, [], false, true);
    assert.equal(plan.kind === "wait" && plan.reason, SCALED_TO_ZERO_REASON);
    const st = computeStatus(s, { now: new Date(T0), waiting: plan as { reason: string; message: string } });
    const ready = st.conditions!.find((c) => c.type === "Ready")!;
    assert.equal(ready.reason, SCALED_TO_ZERO_REASON);
    assert.equal(ready.status, "True", "kubectl wait --for=condition=Ready returns; the gateway wakes the pool for the request");
    assert.match(ready.message, /next request/);
    const none = computeStatus(s, { now: new Date(T0), waiting: decidePlacement(s, [], false, false) as { reason: string; message: string } });
    assert.equal(none.conditions!.find((c) => c.type === "Ready")!.status, "False", "no pool at all: not Ready");
    assert.equal(st.phase, "Idle");
    assert.equal(st.residency, "Hibernated");
    assert.equal((decidePlacement(s, [], false, false) as { reason: string }).reason, "NoRuntimePod");
  });

  it("a session whose model no pool serves says so, and which models the pools serve; a pod of the model starting is waited for", () => {
    const s = session("a", { residency: "InMemory" });
    s.spec.model = "llama-70b";
    const none = decidePlacement(s, [], false, false, undefined, new Set(["smollm2", "m"]));
    assert.equal(none.kind === "wait" && none.reason, NO_RUNTIME_POOL_REASON);
    assert.match((none as { message: string }).message, /no runtime pool serves model "llama-70b" \(the pools here serve: "m", "smollm2"\)/);
    const st = computeStatus(s, { now: new Date(T0), waiting: none as { reason: string; message: string } });
    assert.equal(st.conditions!.find((c) => c.type === "Ready")!.reason, NO_RUNTIME_POOL_REASON);
    assert.equal(st.phase, "Pending");
    const starting = decidePlacement(s, [{ name: "p", namespace: "torpor", node: "n", ip: "1.2.3.4", port: 8080, model: "llama-70b", ready: false, sessions: 0 }], false, false, undefined, new Set(["smollm2"]));
    assert.equal((starting as { reason: string }).reason, "NoRuntimePod", "a pod of the model exists: it is coming");
    s.spec.model = "smollm2";
    assert.equal((decidePlacement(s, [], false, false, undefined, new Set(["smollm2"])) as { reason: string }).reason, "NoRuntimePod", "its pool has no Ready pod yet");
  });

  it("a pool a person scaled to zero, with no policy to bring it back, is stopped: its sessions say so at once, once its pods are going", () => {
    assert.equal(isStopped(pool({ replicas: 0, afterMs: 0 })), true, "kubectl scale --replicas=0 on a pool without the policy");
    assert.equal(isStopped(pool({ replicas: 0, afterMs: 60_000 })), false, "under a policy the operator restores its replicas");
    assert.equal(isStopped(pool({ replicas: 0, afterMs: 60_000, scaledToZeroAt: T0 })), false, "asleep: a request wakes it");
    assert.equal(isStopped(pool({ replicas: 2, afterMs: 0 })), false);
    const s = session("a", { residency: "Hibernated", pod: "gone" });
    s.spec.model = "m";
    const pods = new Set(["m"]), stopped = new Set(["m"]);
    const plan = decidePlacement(s, [], false, false, undefined, pods, stopped);
    assert.equal(plan.kind === "wait" && plan.reason, POOL_STOPPED_REASON);
    assert.match((plan as { message: string }).message, /scaled to 0 replicas by hand and has no scale-to-zero policy, so no request brings it back; scale its Deployment up/);
    const st = computeStatus(s, { now: new Date(T0), waiting: plan as { reason: string; message: string } });
    assert.equal(st.conditions!.find((c) => c.type === "Ready")!.status, "False");
    assert.equal(st.residency, "Hibernated", "what was saved stays saved");
    const pod = { name: "p", namespace: "torpor", node: "n", ip: "1.2.3.4", port: 8080, model: "m", ready: false, sessions: 0 };
    assert.equal((decidePlacement(s, [{ ...pod, terminating: true }], false, false, undefined, pods, stopped) as { reason: string }).reason, POOL_STOPPED_REASON, "a pod being deleted never serves again");
    assert.equal((decidePlacement(s, [pod], false, false, undefined, pods, stopped) as { reason: string }).reason, "NoRuntimePod", "a pod of the model not being deleted may turn Ready");
    assert.equal((decidePlacement(s, [], false, false, undefined, pods, new Set()) as { reason: string }).reason, "NoRuntimePod", "a pool with replicas: its pods are coming");
  });
});
