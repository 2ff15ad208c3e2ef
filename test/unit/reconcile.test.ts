// The controller's pure decisions, branch by branch.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { InferenceSession } from "../../contract/inference-session.js";
import { choosePod, computeStatus, decidePlacement, decideTransition, handOffSource, liveStateLost, nextEpoch, refusedAsIs, sameStatus, droppedFields, statusAfterFailedPlacement, type RuntimePod } from "../../operator/decisions.js";
import type { SessionStatus } from "../../contract/runtime-api.js";
import { ClusterView } from "../../operator/cluster-view.js";
import { pollRuntimes, runtimeFingerprint } from "../../operator/runtime-monitor.js";
import { registerBody } from "../../operator/session-reconciler.js";
import { effectiveCheckpoint } from "../../runtime/sessions/checkpoint-policy.js";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const pod = (name: string, extra: Partial<RuntimePod> = {}): RuntimePod =>
  ({ name, namespace: "torpor", node: `node-${name}`, ip: "127.1.0.1", port: 8080, model: "m", ready: true, sessions: 0, ...extra });

const session = (extra: Partial<InferenceSession> = {}): InferenceSession => ({
  apiVersion: "torpor.dev/v1alpha1", kind: "InferenceSession",
  metadata: { name: "s", namespace: "ns", generation: 3, finalizers: ["torpor.dev/hibernation-files"] },
  spec: { model: "m", residency: "InMemory" }, ...extra,
});

const runtime = (residency: SessionStatus["residency"], extra: Partial<SessionStatus> = {}): SessionStatus => ({
  namespace: "ns", name: "s", path: "", residency, phase: "Idle", epoch: 0, contextSize: 1024, tokenCount: 10, messages: 2, queued: 0,
  createdAt: "2026-01-01T00:00:00.000Z", lastActivity: "2026-01-01T00:00:00.000Z", ...extra,
});

const now = new Date("2026-01-01T01:00:00.000Z");

describe("placement", () => {
  it("picks the least loaded Ready pod of the model, stably", () => {
    const pods = [pod("b", { sessions: 1 }), pod("a", { sessions: 1 }), pod("c", { sessions: 5 }), pod("d", { ready: false }), pod("e", { model: "other" })];
    assert.equal(choosePod(pods, "m")?.name, "a");
    assert.equal(choosePod([pod("x", { ready: false })], "m"), undefined);
  });

  it("keeps a session on its Ready pod and registers only when the pod does not know it", () => {
    const s = session({ status: { pod: "b" } });
    assert.deepEqual(decidePlacement(s, [pod("a"), pod("b")], true), { kind: "use", pod: pod("b"), register: false, heldInMemory: false });
    assert.equal((decidePlacement(s, [pod("a"), pod("b")], false) as { register: boolean }).register, true);
  });

  it("moves a session whose pod is gone; an in-memory one lost its live state unless a saved state turns up", () => {
    const hib = decidePlacement(session({ status: { pod: "gone", residency: "Hibernated" } }), [pod("a")], false);
    assert.deepEqual(hib, { kind: "use", pod: pod("a"), register: true, heldInMemory: false });
    assert.equal(liveStateLost(hib as { register: boolean; heldInMemory: boolean }, "NotCreated"), false);
    const mem = decidePlacement(session({ status: { pod: "gone", residency: "InMemory" } }), [pod("a")], false) as { register: boolean; heldInMemory: boolean };
    assert.equal(liveStateLost(mem, "NotCreated"), true);
    // SIGTERM hibernated it on the way out: the state on the volume is the latest one.
    assert.equal(liveStateLost(mem, "Hibernated"), false);
  });

  it("does not ask a pod again for a spec it refused, until the spec or the pod changes", () => {
    const refused = computeStatus(session(), { now, pod: pod("a"), error: { reason: "SpecInvalid", message: "contextSize: must be an integer between 256 and 8192" } });
    assert.equal(refused.conditions!.find((c) => c.type === "Ready")!.reason, "SpecInvalid");
    const s = session({ status: refused });
    assert.equal(refusedAsIs(s, "a"), true);
    assert.equal(refusedAsIs(s, "b"), false, "another pod (the pool's pods rolled): ask it");
    assert.equal(refusedAsIs({ ...s, metadata: { ...s.metadata, generation: 4 } }, "a"), false, "a new spec: ask again");
    const other = computeStatus(session(), { now, pod: pod("a"), error: { reason: "RuntimeUnavailable", message: "x" } });
    assert.equal(refusedAsIs(session({ status: other }), "a"), false, "only a refusal of the spec itself");
  });

  it("says why a session in memory keeps a context size other than its spec's", () => {
    const ready = (spec: number | undefined, rt: SessionStatus) =>
      computeStatus(session({ spec: { model: "m", residency: "InMemory", ...(spec !== undefined ? { contextSize: spec } : {}) } }), { now, pod: pod("a"), runtime: rt }).conditions!.find((c) => c.type === "Ready")!;
    assert.equal(ready(1024, runtime("InMemory")).message, "served by pod a on node node-a");
    assert.equal(ready(undefined, runtime("InMemory")).message, "served by pod a on node node-a", "no spec size: the pool's default, nothing to compare");
    const kept = ready(256, runtime("InMemory", { contextSize: 2048, tokenCount: 423 }));
    assert.equal(kept.status, "True");
    assert.match(kept.message, /keeps its context of 2048 tokens: spec.contextSize 256 does not hold the 423 tokens/);
    assert.match(ready(4096, runtime("InMemory", { contextSize: 2048, tokenCount: 423 })).message, /moves to a context of 4096 tokens \(spec.contextSize\) before its next turn/);
    assert.match(ready(512, runtime("InMemory", { contextSize: 2048, tokenCount: 423 })).message, /moves to a context of 512 tokens/);
    assert.equal(ready(256, runtime("Hibernated", { contextSize: 2048, tokenCount: 423 })).message, "served by pod a on node node-a", "asleep: the size is chosen when it wakes");
  });

  it("still knows a session was in memory after a round without any Ready pod cleared its pod", () => {
    const waited = computeStatus(session({ status: { pod: "b", residency: "InMemory" } }), { now, waiting: { reason: "NoRuntimePod", message: "none" } });
    assert.equal(waited.pod, undefined);
    const plan = decidePlacement(session({ status: waited }), [pod("c")], false) as { register: boolean; heldInMemory: boolean };
    assert.equal(liveStateLost(plan, "NotCreated"), true);
  });

  it("notices a runtime that restarted in the same pod and forgot an in-memory session", () => {
    const s = session({ status: { pod: "b", residency: "InMemory" } });
    const restarted = decidePlacement(s, [pod("b")], false) as { register: boolean; heldInMemory: boolean };
    assert.equal(restarted.register, true);
    assert.equal(liveStateLost(restarted, "NotCreated"), true);
    const healthy = decidePlacement(s, [pod("b")], true) as { register: boolean; heldInMemory: boolean };
    assert.equal(liveStateLost(healthy, "InMemory"), false);
  });

  it("waits when no runtime pod serves the model", () => {
    assert.equal(decidePlacement(session(), [pod("a", { model: "x" })], false).kind, "wait");
  });

  it("finalizes through any Ready pod, even for a session that never ran", () => {
    const deleting = session({ metadata: { name: "s", namespace: "ns", deletionTimestamp: "2026-01-01T00:00:00Z", finalizers: ["torpor.dev/hibernation-files"] } });
    assert.deepEqual(decidePlacement(deleting, [pod("a")], false), { kind: "finalize", pod: pod("a") });
    assert.deepEqual(decidePlacement(deleting, [], false), { kind: "finalize" });
  });
});

describe("hand-off", () => {
  const t = now.getTime();
  it("waits for a terminating or NotReady pod that holds the session in memory, until its deadline", () => {
    const held = session({ status: { pod: "old", residency: "InMemory" } });
    assert.equal(handOffSource(held, [pod("old", { ready: false, handOffDeadline: t + 1000 }), pod("new")], t)?.name, "old");
    assert.equal(handOffSource(held, [pod("old", { ready: false, handOffDeadline: t - 1 }), pod("new")], t), undefined, "deadline passed: fencing takes over");
    assert.equal(handOffSource(held, [pod("new")], t), undefined, "the pod is gone: nothing to wait for");
    assert.equal(handOffSource(held, [pod("old"), pod("new")], t), undefined, "a Ready holder keeps the session");
  });
  it("asks the old pod whatever status says (status lags a rehydrate or a first request), but not for a deleted session", () => {
    const old = [pod("old", { ready: false, handOffDeadline: t + 1000 })];
    assert.equal(handOffSource(session({ status: { pod: "old", residency: "Hibernated" } }), old, t)?.name, "old");
    assert.equal(handOffSource(session({ status: { pod: "old", residency: "NotCreated" } }), old, t)?.name, "old");
    const deleting = session({ status: { pod: "old", residency: "InMemory" } });
    deleting.metadata.deletionTimestamp = now.toISOString();
    assert.equal(handOffSource(deleting, old, t), undefined);
  });
  it("what a hand-off committed is kept when the pod chosen next does not answer (a pool scaled to zero by hand: both pods going)", () => {
    const s = session({ status: { pod: "old", residency: "InMemory", epoch: 5, tokenCount: 40 } });
    const record = { manifestFile: "ns/s@e5.torpor.json", stateFile: "s.0123456789ab.state", bytes: 4096, tokenCount: 40, hibernatedAt: now.toISOString(), durationMs: 3, reason: "handoff" };
    const st = statusAfterFailedPlacement(s, { now, committed: { outcome: "hibernated", record }, pod: pod("going"), err: new Error("socket hang up") });
    assert.equal(st.residency, "Hibernated", "not InMemory: nothing holds it");
    assert.equal(st.conditions!.find((c) => c.type === "Hibernated")!.reason, "HandedOff");
    const ready = st.conditions!.find((c) => c.type === "Ready")!;
    assert.equal(ready.status, "False");
    assert.match(ready.message, /going did not answer \(socket hang up\)/);
    // The next round, with no pod left, has only status to go by.
    const later = computeStatus({ ...s, status: st }, { now, waiting: { reason: "NoRuntimePod", message: "none" } });
    assert.equal(later.residency, "Hibernated");
    assert.equal(later.conditions!.find((c) => c.type === "Degraded")!.status, "False", "the failed call is not held against it");
    const placed = decidePlacement({ ...s, status: later }, [pod("new")], false);
    assert.equal(placed.kind === "use" && placed.heldInMemory, true, "back into memory on its next pod");
  });
  it("what a hand-off committed shows in status though no pod can take the session yet (a pool scaled down by hand)", () => {
    const s = session({ status: { pod: "old", residency: "InMemory", epoch: 4, tokenCount: 321 } });
    const record = { manifestFile: "default/chat@e5.torpor.json", stateFile: "chat.0123456789ab.state", bytes: 2048, tokenCount: 321, hibernatedAt: now.toISOString(), durationMs: 12, reason: "handoff" };
    const st = computeStatus(s, { now, waiting: { reason: "NoRuntimePod", message: "none" }, committed: { outcome: "hibernated", record } });
    assert.equal(st.residency, "Hibernated");
    assert.equal(st.lastHibernation?.bytes, 2048);
    assert.equal(st.conditions!.find((c) => c.type === "Hibernated")!.status, "True");
    assert.equal(st.conditions!.find((c) => c.type === "Hibernated")!.reason, "HandedOff");
    assert.equal(st.conditions!.find((c) => c.type === "Ready")!.reason, "NoRuntimePod");
    // And it stays so in the rounds after, with nothing new to say.
    const later = computeStatus({ ...s, status: st }, { now, waiting: { reason: "NoRuntimePod", message: "none" } });
    assert.equal(later.residency, "Hibernated");
    assert.equal(later.conditions!.find((c) => c.type === "Hibernated")!.reason, "HandedOff");
    // It was in memory: its next pod takes it back into memory, as after any move in memory.
    const placed = decidePlacement({ ...s, status: later }, [pod("new")], false);
    assert.equal(placed.kind === "use" && placed.heldInMemory, true);
    // Once a runtime has it, the reason is the ordinary one.
    const back = computeStatus({ ...s, status: later }, { now, pod: pod("new"), runtime: runtime("Hibernated") });
    assert.equal(back.conditions!.find((c) => c.type === "Hibernated")!.reason, "Hibernated");
    assert.equal(computeStatus(s, { now, waiting: { reason: "NoRuntimePod", message: "none" }, committed: { outcome: "not-created" } }).residency, "NotCreated");
  });

  it("status says HandingOff and not Ready, keeps the pod and the epoch; epochs only grow", () => {
    const s = session({ status: { pod: "old", residency: "InMemory", epoch: 4, tokenCount: 321 } });
    const st = computeStatus(s, { now, handOffFrom: pod("old") });
    assert.equal(st.tokenCount, 321, "what was last known stands");
    assert.equal(st.phase, "HandingOff");
    assert.equal(st.pod, "old");
    assert.equal(st.epoch, 4);
    assert.equal(st.handOffFrom, "old");
    assert.equal(st.conditions!.find((c) => c.type === "Ready")!.reason, "HandOff");
    assert.equal(nextEpoch(s), 5);
    assert.equal(nextEpoch(session()), 1);
  });
  it("a deleted session whose pool has no Ready pod is cleaned up by any Ready runtime", () => {
    const s = session({ status: { pod: "gone" } });
    s.metadata.deletionTimestamp = now.toISOString();
    assert.equal((decidePlacement(s, [pod("x", { model: "other" })], false) as { pod?: RuntimePod }).pod?.name, "x");
  });
});

describe("transitions", () => {
  const cases: Array<["InMemory" | "Hibernated", SessionStatus["residency"], string | undefined]> = [
    ["Hibernated", "InMemory", "hibernate"],
    ["InMemory", "Hibernated", "rehydrate"],
    ["InMemory", "NotCreated", undefined],
    ["Hibernated", "NotCreated", undefined],
    ["Hibernated", "Hibernated", undefined],
    ["InMemory", "InMemory", undefined],
  ];
  for (const [desired, observed, expected] of cases) {
    it(`desired ${desired}, runtime ${observed}, spec just changed -> ${expected ?? "nothing"}`, () => {
      assert.equal(decideTransition(session({ spec: { model: "m", residency: desired }, status: { observedGeneration: 3, appliedGeneration: 2 } }), observed), expected);
    });
  }

  it("does not undo the runtime's idle hibernation (this generation's InMemory was already met)", () => {
    assert.equal(decideTransition(session({ status: { observedGeneration: 3, appliedGeneration: 3 } }), "Hibernated"), undefined);
  });

  it("uses the pod found serving the session at its epoch when status names a pod that is gone", () => {
    const s = session({ status: { pod: "gone", residency: "InMemory", epoch: 4 } });
    // Held in memory before: if the holder has it hibernated (not rehydrated yet), it is put back.
    assert.deepEqual(decidePlacement(s, [pod("a"), pod("b", { sessions: 9 })], true, false, "b"), { kind: "use", pod: pod("b", { sessions: 9 }), register: false, heldInMemory: true });
    // Status naming a Ready pod wins over any holder; a holder that is not Ready is no holder.
    assert.equal((decidePlacement(session({ status: { pod: "a" } }), [pod("a"), pod("b")], true, false, "b") as { pod: RuntimePod }).pod.name, "a");
    assert.equal((decidePlacement(s, [pod("a"), pod("b", { ready: false })], false, false, "b") as { pod: RuntimePod }).pod.name, "a");
  });

  it("puts a session that moved while in memory back in memory on its new pod, and only then", () => {
    const applied = session({ status: { observedGeneration: 3, appliedGeneration: 3, residency: "InMemory", pod: "old" } });
    const plan = decidePlacement(applied, [pod("new")], false) as { register: boolean; heldInMemory: boolean };
    assert.equal(plan.heldInMemory, true);
    assert.equal(decideTransition(applied, "Hibernated", plan.register && plan.heldInMemory), "rehydrate", "its SIGTERM saved it; it was not asleep");
    assert.equal(decideTransition(applied, "Hibernated"), undefined, "without a move, an idle hibernation stands");
    const asleep = session({ status: { observedGeneration: 3, appliedGeneration: 3, residency: "Hibernated", pod: "old" } });
    const moved = decidePlacement(asleep, [pod("new")], false) as { register: boolean; heldInMemory: boolean };
    assert.equal(decideTransition(asleep, "Hibernated", moved.register && moved.heldInMemory), undefined, "a sleeping session moves asleep");
    const wantsSleep = session({ spec: { model: "m", residency: "Hibernated" }, status: { residency: "InMemory", pod: "old" } });
    assert.equal(decideTransition(wantsSleep, "Hibernated", true), undefined, "spec.residency Hibernated wins");
  });

  it("still rehydrates when the change to InMemory was first observed while the session had no runtime", () => {
    // Generation 3 says InMemory; the pod holding the hibernated session was being replaced.
    const s = session({ status: { observedGeneration: 2, appliedGeneration: 2, residency: "Hibernated" } });
    const waiting = computeStatus(s, { now, waiting: { reason: "NoRuntimePod", message: "replacing" } });
    assert.equal(waiting.observedGeneration, 3);
    assert.equal(waiting.appliedGeneration, 2, "nothing was carried out in that round");
    assert.equal(decideTransition({ ...s, status: waiting }, "Hibernated"), "rehydrate");
    const done = computeStatus({ ...s, status: waiting }, { now, pod: pod("a"), runtime: runtime("InMemory") });
    assert.equal(done.appliedGeneration, 3);
  });

  it("leaves the rehydrate to the request that woke the session", () => {
    const woken = session({
      metadata: { name: "s", namespace: "ns", generation: 4, annotations: { "torpor.dev/woken-by-request-at": "2026-01-01T00:10:00.000Z" } },
      status: { observedGeneration: 3, appliedGeneration: 3, lastHibernation: { file: "f", bytes: 1, tokenCount: 1, sha256: "x", time: "2026-01-01T00:05:00.000Z", durationMs: 1 } },
    });
    assert.equal(decideTransition(woken, "Hibernated"), undefined);
    // An older wake does not count once the session has been hibernated again.
    const stale = { ...woken, status: { ...woken.status, lastHibernation: { ...woken.status!.lastHibernation!, time: "2026-01-01T00:20:00.000Z" } } };
    assert.equal(decideTransition(stale, "Hibernated"), "rehydrate");
  });
});

describe("status", () => {
  it("reflects the runtime with conditions and observedGeneration", () => {
    const st = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("Hibernated", {
      lastHibernation: { manifestFile: "/v/ns/s.torpor.json", stateFile: "x", bytes: 1234, sha256: "ab", tokenCount: 10, hibernatedAt: "2026-01-01T00:30:00.000Z", durationMs: 12.34, reason: "request" },
    }) });
    assert.equal(st.residency, "Hibernated");
    assert.equal(st.observedGeneration, 3);
    assert.equal(st.pod, "a");
    assert.equal(st.node, "node-a");
    assert.equal(st.lastHibernation?.bytes, 1234);
    assert.equal(st.contextSize, 1024, "the size the runtime gives it (spec.contextSize, or the pool's default)");
    assert.equal(computeStatus(session({ status: st }), { now, waiting: { reason: "NoRuntimePod", message: "none" } }).contextSize, 1024, "kept while no runtime answers");
    const c = Object.fromEntries(st.conditions!.map((x) => [x.type, x]));
    assert.equal(c.Hibernated!.status, "True");
    assert.equal(c.Ready!.status, "True");
    assert.equal(c.Degraded!.status, "False");
    assert.equal(c.Ready!.observedGeneration, 3);
  });

  it("notices status fields an older CRD drops, and then does not write for them alone", () => {
    const written = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("InMemory") });
    const { contextSize, ...stored } = written;
    assert.equal(contextSize, 1024);
    assert.deepEqual(droppedFields(written, stored), ["contextSize"]);
    assert.deepEqual(droppedFields(written, written), []);
    assert.equal(sameStatus(stored, written), false, "without knowing, every reconcile would write again");
    assert.equal(sameStatus(stored, written, new Set(["contextSize"])), true);
    assert.equal(sameStatus(stored, { ...written, tokenCount: 11 }, new Set(["contextSize"])), false, "other changes are still written");
  });

  it("keeps lastTransitionTime while a condition holds", () => {
    const first = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("InMemory") });
    const later = computeStatus(session({ status: first }), { now: new Date(now.getTime() + 60_000), pod: pod("a"), runtime: runtime("InMemory") });
    assert.deepEqual(later.conditions, first.conditions);
    assert.ok(sameStatus(first, later));
  });

  it("says when live state was lost and from where the conversation resumes", () => {
    const prev = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("InMemory") });
    const st = computeStatus(session({ status: prev }), { now, pod: pod("b"), runtime: runtime("NotCreated"), liveStateLost: true });
    assert.equal(st.liveStateLostAt, now.toISOString());
    assert.equal(st.phase, "Lost");
    const degraded = st.conditions!.find((c) => c.type === "Degraded")!;
    assert.equal(degraded.reason, "LiveStateLost");
    assert.match(degraded.message, /from scratch/);
    // Still lost while nothing new happened: a later round, not in memory yet.
    const still = computeStatus(session({ status: st }), { now: new Date(now.getTime() + 5000), pod: pod("b"), runtime: runtime("NotCreated", { lastActivity: "2026-01-01T00:00:00.000Z" }) });
    assert.equal(still.conditions!.find((c) => c.type === "Degraded")!.reason, "LiveStateLost");
    // A new conversation since, hibernated later: that is not the loss again (found on cluster-up:
    // every later hibernate turned the session Degraded LiveStateLost).
    const after = new Date(now.getTime() + 60_000).toISOString();
    const asleep = computeStatus(session({ status: st }), { now: new Date(now.getTime() + 120_000), pod: pod("b"), runtime: runtime("Hibernated", { lastActivity: after }) });
    assert.equal(asleep.conditions!.find((c) => c.type === "Degraded")!.status, "False");
    assert.equal(asleep.liveStateLostAt, now.toISOString(), "when it happened stays on record");
  });

  it("surfaces a refused state file as Degraded with its reason", () => {
    const st = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("Hibernated", { lastError: { code: "state_rejected", reason: "checksum_mismatch", message: "bad", at: now.toISOString() } }) });
    const c = Object.fromEntries(st.conditions!.map((x) => [x.type, x]));
    assert.equal(c.Degraded!.status, "True");
    assert.equal(c.Degraded!.reason, "ChecksumMismatch");
    assert.equal(c.Ready!.status, "False");
  });

  it("a session asked to hibernate before its first request says Hibernated (nothing to wait for), and not once it is lost", () => {
    const asleep = session({ spec: { model: "m", residency: "Hibernated" } });
    const st = computeStatus(asleep, { now, pod: pod("a"), runtime: runtime("NotCreated") });
    const hib = st.conditions!.find((c) => c.type === "Hibernated")!;
    assert.equal(st.residency, "NotCreated", "status still says what the runtime holds");
    assert.equal(hib.status, "True");
    assert.equal(hib.reason, "NotCreated");
    assert.equal(st.appliedGeneration, 3);
    const awake = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("NotCreated") });
    assert.equal(awake.conditions!.find((c) => c.type === "Hibernated")!.status, "False", "not asked to sleep: False as before");
    const prev = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("InMemory") });
    const lost = computeStatus({ ...asleep, status: prev }, { now, pod: pod("b"), runtime: runtime("NotCreated"), liveStateLost: true });
    assert.equal(lost.conditions!.find((c) => c.type === "Hibernated")!.status, "False", "a conversation lost is not one saved");
  });

  it("a session registered over a commit its status never recorded (saved while no operator ran) shows its tokens and bytes", () => {
    const found = { tokenCount: 32, hibernatedAt: now.toISOString(), bytes: 738_600 };
    const st = computeStatus(session({ status: { residency: "NotCreated" } }), { now, pod: pod("a"), runtime: runtime("Hibernated", { foundOnVolume: found }) });
    assert.equal(st.tokenCount, 32);
    assert.match(st.conditions!.find((c) => c.type === "Hibernated")!.message, /738600 bytes/);
    // What the runtime hibernated itself, or status already knew, stands over it.
    const own = computeStatus(session(), { now, pod: pod("a"), runtime: runtime("Hibernated", { foundOnVolume: found, lastHibernation: { manifestFile: "m", stateFile: "s", bytes: 99, tokenCount: 40, hibernatedAt: now.toISOString(), durationMs: 1, reason: "request" } }) });
    assert.equal(own.tokenCount, 40);
  });

  it("reports Pending with the reason when no pod serves the model", () => {
    const st = computeStatus(session(), { now, waiting: { reason: "NoRuntimePod", message: "none" } });
    assert.equal(st.phase, "Pending");
    assert.equal(st.conditions!.find((c) => c.type === "Ready")!.reason, "NoRuntimePod");
  });
});

describe("the operator's session cache", () => {
  const at = (rv: string, extra: Partial<InferenceSession["metadata"]> = {}) => session({ metadata: { ...session().metadata, resourceVersion: rv, ...extra } });

  it("takes a status write's result while it still holds what the write was based on", () => {
    const view = new ClusterView("token");
    view.sessions.set("ns/s", at("270"));
    view.recordWrite(at("270"), at("271"));
    assert.equal(view.sessions.get("ns/s")!.metadata.resourceVersion, "271");
  });

  it("never puts a write's result over a newer object from the watch (a delete during the write stays seen)", () => {
    const view = new ClusterView("token");
    view.sessions.set("ns/s", at("272", { deletionTimestamp: "2026-01-01T00:00:00Z" }));
    view.recordWrite(at("270"), at("271"));
    assert.equal(view.sessions.get("ns/s")!.metadata.resourceVersion, "272");
    assert.ok(view.sessions.get("ns/s")!.metadata.deletionTimestamp, "the deletion is still in the cache");
  });

  const withStatus = (rv: string, phase: string) => ({ ...at(rv), status: { phase, message: phase } } as unknown as InferenceSession);

  it("does not reconcile again for the echo of its own status write (it bypassed the retry backoff)", () => {
    const view = new ClusterView("token");
    assert.equal(view.observe(withStatus("270", "Pending")), true, "a new session is reconciled");
    view.recordWrite(withStatus("270", "Pending"), withStatus("271", "Degraded"));
    assert.equal(view.observe(withStatus("271", "Degraded")), false, "the echo of our write queues nothing");
    assert.equal(view.sessions.get("ns/s")!.metadata.resourceVersion, "271");
    assert.equal(view.observe({ ...withStatus("272", "Degraded"), spec: { ...session().spec, residency: "Hibernated" } }), true, "a user's change is reconciled");
  });

  it("does not reconcile for an echo that comes ahead of its write's response", () => {
    const view = new ClusterView("token");
    view.observe(withStatus("270", "Pending"));
    const done = view.startWrite(withStatus("270", "Pending"), { phase: "Degraded", message: "Degraded" } as unknown as NonNullable<InferenceSession["status"]>);
    assert.equal(view.observe(withStatus("271", "Degraded")), false);
    done();
    view.recordWrite(withStatus("270", "Pending"), withStatus("271", "Degraded"));
    assert.equal(view.sessions.get("ns/s")!.metadata.resourceVersion, "271");
    assert.equal(view.observe({ ...at("272", { deletionTimestamp: "2026-01-01T00:00:00Z" }), status: { phase: "Degraded" } } as unknown as InferenceSession), true, "a deletion is reconciled");
  });

  it("keeps a later write of its own over the echo of an earlier one", () => {
    const view = new ClusterView("token");
    view.observe(withStatus("270", "Pending"));
    view.recordWrite(withStatus("270", "Pending"), withStatus("271", "Placing"));
    view.recordWrite(withStatus("271", "Placing"), withStatus("272", "Ready"));
    assert.equal(view.observe(withStatus("271", "Placing")), false);
    assert.equal(view.sessions.get("ns/s")!.status!.phase, "Ready", "the earlier echo did not replace the later write");
    assert.equal(view.observe(withStatus("272", "Ready")), false);
    assert.equal(view.observe(withStatus("273", "Ready")), true, "someone else's write is reconciled");
  });

  it("names the sessions of a model that no Ready pod serves, so a pod turning Ready places them at once", () => {
    const view = new ClusterView("token");
    const k8sPod = (name: string, ready: boolean) => ({
      metadata: { name, namespace: "torpor", labels: { "torpor.dev/model": "m" } },
      status: { podIP: "127.1.0.1", conditions: [{ type: "Ready", status: ready ? "True" : "False" }] },
    });
    view.pods.set("torpor/a", k8sPod("a", true));
    view.pods.set("torpor/b", k8sPod("b", false));
    const on = (name: string, pod?: string, extra: Partial<InferenceSession> = {}) =>
      view.sessions.set(`ns/${name}`, session({ metadata: { ...session().metadata, name }, status: pod ? { pod } : {}, ...extra }));
    on("served", "a");
    on("on-unready", "b");
    on("unplaced");
    on("other-model", undefined, { spec: { model: "x" } });
    on("deleting", undefined, { metadata: { ...session().metadata, name: "deleting", deletionTimestamp: "2026-01-01T00:00:00Z" } });
    assert.deepEqual(view.sessionsWaitingFor("m").sort(), ["ns/on-unready", "ns/unplaced"]);
  });

  it("spreads a burst of placements before any runtime reports them: status and placements in flight count", () => {
    const view = new ClusterView("token");
    for (const name of ["a", "b"]) {
      view.pods.set(`torpor/${name}`, { metadata: { name, namespace: "torpor", labels: { "torpor.dev/model": "m" } }, status: { podIP: "127.1.0.1", conditions: [{ type: "Ready", status: "True" }] } });
    }
    const place = (name: string) => {
      const chosen = choosePod(view.runtimePods(), "m")!;
      return { chosen: chosen.name, release: view.reserve(chosen), name };
    };
    // Four workers decide at once: two each, not four on "a".
    const burst = ["s1", "s2", "s3", "s4"].map(place);
    assert.deepEqual(burst.map((p) => p.chosen), ["a", "b", "a", "b"]);
    // Their status is written (the pod named) and the reservations go: the count stays.
    for (const p of burst) { view.sessions.set(`ns/${p.name}`, session({ metadata: { ...session().metadata, name: p.name }, status: { pod: p.chosen } })); p.release(); p.release(); }
    assert.deepEqual(view.runtimePods().map((p) => p.sessions), [2, 2]);
    // A runtime's report and the status of the same session count once.
    view.reports.set("torpor/a", new Map([["ns/s1", "x"], ["ns/other", "y"]]));
    assert.deepEqual(view.runtimePods().map((p) => p.sessions), [3, 2]);
  });
});

describe("the runtime monitor", () => {
  it("queues a session whose runtime view changed, but not for a change its last reconcile already acted on", async () => {
    const st = (residency: string, at: string) => ({ namespace: "ns", name: "s", path: "", residency, phase: "Idle", epoch: 1, contextSize: 256, tokenCount: 3, messages: 1, queued: 0,
      createdAt: "2026-01-01T00:00:00Z", lastActivity: "2026-01-01T00:00:00Z", ...(at ? { lastHibernation: { hibernatedAt: at } } : {}) }) as unknown as SessionStatus;
    let report = st("InMemory", "");
    const server = createServer((_req, res) => { res.setHeader("content-type", "application/json"); res.end(JSON.stringify({ sessions: [report] })); });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const port = (server.address() as AddressInfo).port;
      const view = new ClusterView("token");
      view.pods.set("torpor/a", { metadata: { name: "a", namespace: "torpor" }, spec: { containers: [{ name: "runtime", ports: [{ name: "http", containerPort: port }] }] },
        status: { podIP: "127.0.0.1", conditions: [{ type: "Ready", status: "True" }] } });
      view.sessions.set("ns/s", session({ status: { pod: "a" } }));
      const queued: string[] = [];
      await pollRuntimes(view, (k) => queued.push(k));
      assert.deepEqual(queued, ["ns/s"], "first report");
      // The operator's reconcile hibernated it and wrote status from what the runtime said after.
      report = st("Hibernated", "2026-01-01T00:01:00Z");
      view.actedOn.set("ns/s", `a|${runtimeFingerprint(report)}`);
      await pollRuntimes(view, (k) => queued.push(k));
      assert.deepEqual(queued, ["ns/s"], "the hibernate its reconcile saw queues nothing more");
      // A user's request woke it on the pod: nothing has acted on that yet.
      report = st("InMemory", "2026-01-01T00:01:00Z");
      await pollRuntimes(view, (k) => queued.push(k));
      assert.deepEqual(queued, ["ns/s", "ns/s"], "a change nobody acted on is queued");
    } finally {
      server.close();
    }
  });
});


describe("checkpoint policy", () => {
  it("a session's own policy replaces its pool's; interval 0s without afterTurns turns the pool's off", () => {
    const pool = { afterTurns: 4, intervalMs: 300_000 };
    assert.deepEqual(effectiveCheckpoint(undefined, pool), pool);
    assert.deepEqual(effectiveCheckpoint({ afterTurns: 2 }, pool), { afterTurns: 2 }, "not merged field by field");
    assert.equal(effectiveCheckpoint({ intervalMs: 0 }, pool), undefined);
    assert.equal(effectiveCheckpoint(undefined, { afterTurns: 0, intervalMs: 0 }), undefined, "the chart's zeros: off");
    assert.equal(effectiveCheckpoint(undefined, undefined), undefined);
  });

  it("the operator sends interval 0s as 0, so that it reaches the runtime as the session's own policy", () => {
    const spec = (checkpoint: object | undefined) => session({ spec: { model: "m", ...(checkpoint ? { hibernation: { checkpoint } } : {}) } });
    assert.equal(registerBody(spec({ interval: "0s" })).checkpointIntervalSeconds, 0);
    assert.equal(registerBody(spec({ interval: "1500ms" })).checkpointIntervalSeconds, 2);
    assert.equal(registerBody(spec({ afterTurns: 3 })).checkpointIntervalSeconds, undefined);
    assert.equal("checkpointIntervalSeconds" in registerBody(spec(undefined)), false);
  });
});
