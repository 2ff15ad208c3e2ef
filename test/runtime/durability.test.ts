// What survives what, in-process on real node-llama-cpp: hand-offs between placements (epochs),
// checkpoints while resident, states another llama.cpp wrote (replayed from the history), and
// what the sweeper leaves.
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { counterValue, greedy, harness } from "../helpers/in-process-runtime.js";
import { HibernationStore } from "../../runtime/storage/hibernation-store.js";
import { tempDir } from "../../testbed/temp-dir.js";

describe("hand-off between placements", () => {
  it("a new placement adopts the old one's commit and continues exactly; the old copy can no longer save", async () => {
    const old = await harness();
    const twin = await harness();
    const a = await old.manager.register({ namespace: "default", name: "moving", epoch: 1 });
    const t = await twin.manager.register({ namespace: "default", name: "moving" });
    for (const turn of ["The code word is heron.", "Repeat it."]) {
      assert.equal((await a.submit(turn, greedy(12))).text, (await t.submit(turn, greedy(12))).text);
    }
    await a.hibernate("shutdown");
    // A second runtime on the same volume, placed under the next epoch.
    const next = await harness({}, old.dir);
    const b = await next.manager.register({ namespace: "default", name: "moving", epoch: 2 });
    assert.equal(b.residency, "Hibernated");
    const rb = await b.submit("And once more?", greedy(12));
    assert.equal(rb.rehydrated, true);
    assert.ok(rb.cachedTokens > 0);
    assert.equal(b.status().lastRehydrate?.restoreVerified, true, "the restored tokens were reused");
    assert.equal(b.status().lastRehydrate?.reusedTokens, rb.cachedTokens);
    assert.equal(rb.text, (await t.submit("And once more?", greedy(12))).text, "greedy continuation after the move");
    // The stale holder is refused: re-registering under its old epoch, and saving.
    await assert.rejects(old.manager.register({ namespace: "default", name: "moving", epoch: 1 }).then((s) => s.submit("fork?", greedy(2))), /stale_epoch|epoch 2 now owns/);
  });

  it("a placement replaced before its first request still hands the state on (found in the demo: a second reconcile re-placed a just-moved session)", async () => {
    const first = await harness();
    const a = await first.manager.register({ namespace: "default", name: "quick", epoch: 1 });
    await a.submit("The code word is heron.", greedy(8));
    await a.hibernate("request");
    const pod = await harness({}, first.dir);
    const two = await pod.manager.register({ namespace: "default", name: "quick", epoch: 2 });
    assert.equal(two.residency, "Hibernated");
    // Re-placed under epoch 3 on the same pod before any request reached epoch 2.
    const three = await pod.manager.register({ namespace: "default", name: "quick", epoch: 3 });
    assert.equal(three.residency, "Hibernated", "epoch 2 adopted the commit at registration: epoch 3 accepts it");
    const r = await three.submit("Repeat it.", greedy(8));
    assert.equal(r.rehydrated, true);
    assert.ok(three.messages().some((m) => m.type === "user" && m.text === "The code word is heron."));
  });
});

describe("shutdown", () => {
  it("answers on after the SIGTERM save until the operator has asked for each saved session, and says it was in memory", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "leaving", epoch: 1 });
    const idle = await h.manager.register({ namespace: "default", name: "asleep", epoch: 1 });
    void idle; // never in memory: nothing to hand off
    await s.submit("The code word is heron.", greedy(4));
    assert.deepEqual(await h.manager.shutdown(), { hibernated: 1, failed: 0 });
    const waiting = h.manager.handOffsCollected(30_000);
    const t0 = performance.now();
    const out = await h.manager.handOff("default", "leaving", 2);
    assert.equal(out.outcome, "hibernated", "saved from memory by the shutdown: its next pod takes it back into memory");
    assert.deepEqual(await waiting, { asked: 1, unasked: [] });
    assert.ok(performance.now() - t0 < 5000, "no wait once every saved session was asked for");
  });

  it("stops waiting after its deadline when no operator asks", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "unasked", epoch: 3 });
    await s.submit("Hello.", greedy(2));
    await h.manager.shutdown();
    assert.deepEqual(await h.manager.handOffsCollected(50), { asked: 0, unasked: ["default/unasked"] });
    const local = await harness();
    await (await local.manager.register({ namespace: "default", name: "no-operator" })).submit("Hello.", greedy(2));
    await local.manager.shutdown();
    assert.deepEqual(await local.manager.handOffsCollected(60_000), { asked: 0, unasked: [] }, "no epoch, no operator: nothing to wait for");
  });
});

describe("checkpoints", () => {
  it("writes the state between turns, keeps it after a restore, and a crash loses at most the turns since", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "ckpt", checkpoint: { afterTurns: 1 } });
    await s.submit("First: the river is called Tejo.", greedy(8));
    await s.submit("Second: the bridge is red.", greedy(8));
    await s.warm(); // queued behind the checkpoint the second turn scheduled
    const st = s.status();
    assert.equal(st.residency, "InMemory");
    assert.ok(st.lastCheckpoint, "checkpointed while resident");
    assert.equal(st.lastCheckpoint!.tokenCount, st.tokenCount);
    const files = await readdir(path.join(h.dir, "default"));
    assert.equal(files.filter((f) => f.endsWith(".state")).length, 1, "checkpoints replace each other");
    // A crash now (the process gone without a hibernate): another runtime finds the checkpoint.
    const after = await harness({}, h.dir);
    const back = await after.manager.register({ namespace: "default", name: "ckpt", checkpoint: { afterTurns: 1 } });
    assert.equal(back.status().foundOnVolume?.tokenCount, st.tokenCount);
    const r = await back.submit("Third?", greedy(4));
    assert.equal(r.rehydrated, true);
    assert.deepEqual(back.messages().slice(0, s.messages().length), s.messages(), "both turns restored");
    // With checkpoints on, the file restored from stays until the next checkpoint replaces it.
    assert.ok((await readdir(path.join(h.dir, "default"))).some((f) => f.endsWith(".state")));
    assert.ok(await counterValue(after.metrics, "torpor_runtime_checkpoint_duration_seconds") >= 0);
  });

  it("hibernating right after a checkpoint writes nothing again", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "ckpt-fast", checkpoint: { afterTurns: 1 } });
    await s.submit("hello", greedy(4));
    await s.warm();
    const ckpt = s.status().lastCheckpoint!;
    const out = await s.hibernate("request");
    assert.equal(out.record!.stateFile, ckpt.stateFile, "the checkpoint is the hibernation");
    assert.equal((await s.submit("again", greedy(4))).rehydrated, true);
  });

  it("sessions whose spec sets no policy follow the pool's; one whose own policy is off does not", async () => {
    const h = await harness({ checkpoint: { afterTurns: 1 } });
    const pooled = await h.manager.register({ namespace: "default", name: "pooled" });
    const off = await h.manager.register({ namespace: "default", name: "opted-out", checkpoint: { intervalMs: 0 } });
    for (const s of [pooled, off]) {
      await s.submit("The river is called Tejo.", greedy(6));
      await s.warm(); // queued behind a checkpoint the turn scheduled, if any
    }
    assert.equal(pooled.status().lastCheckpoint?.tokenCount, pooled.status().tokenCount, "checkpointed under the pool's policy");
    assert.equal(off.status().lastCheckpoint, undefined);
    const states = (await readdir(path.join(h.dir, "default"))).filter((f) => f.endsWith(".state"));
    assert.deepEqual(states.map((f) => f.split(".")[0]), ["pooled"]);
  });

  it("an interval policy checkpoints on the runtime's timer, not before", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "ckpt-timer", checkpoint: { intervalMs: 60_000 } });
    await s.submit("hello", greedy(4));
    await h.manager.sweepIdle();
    await s.warm();
    assert.equal(s.status().lastCheckpoint, undefined);
    h.clock.advance(61_000);
    await h.manager.sweepIdle();
    await s.warm();
    assert.ok(s.status().lastCheckpoint);
  });
});

describe("states written by another llama.cpp", () => {
  it("are not loaded: the session is rebuilt from the saved history, and says so", async () => {
    const h = await harness();
    const twin = await harness();
    const s = await h.manager.register({ namespace: "default", name: "upgraded" });
    const t = await twin.manager.register({ namespace: "default", name: "upgraded" });
    for (const turn of ["Name a colour.", "Another one."]) assert.equal((await s.submit(turn, greedy(8))).text, (await t.submit(turn, greedy(8))).text);
    const out = await s.hibernate("test");
    const manifest = JSON.parse(await readFile(out.record!.manifestFile, "utf8")) as { runtime: { nodeLlamaCpp: string } };
    manifest.runtime.nodeLlamaCpp = "0.0.1";
    await writeFile(out.record!.manifestFile, JSON.stringify(manifest));
    const r = await s.submit("And a third?", greedy(8));
    assert.equal(r.rehydrated, true);
    assert.equal(r.cachedTokens, 0, "nothing reused: the history was evaluated again");
    assert.equal(r.text, (await t.submit("And a third?", greedy(8))).text, "same continuation as a session that never moved");
    assert.equal(s.status().lastRehydrate?.replayed, "runtime_version");
    assert.equal(await counterValue(h.metrics, "torpor_runtime_state_replays_total"), 1);
  });
});

describe("placed again on the same runtime", () => {
  it("keeps the copy in memory when no placement came between (a retried reconcile), drops it when one did", async () => {
    const h = await harness();
    const s = await h.manager.register({ namespace: "default", name: "again", epoch: 2 });
    await s.submit("The code word is heron.", greedy(8));
    const same = await h.manager.register({ namespace: "default", name: "again", epoch: 3 });
    assert.equal(same, s, "the same copy serves the new epoch");
    assert.equal(same.residency, "InMemory");
    assert.equal(same.epoch, 3);
    assert.equal((await same.submit("Repeat it.", greedy(4))).created, false);
    // Elsewhere meanwhile (epoch 4 claimed by another runtime on the volume): this copy is stale.
    const other = await harness({}, h.dir);
    await other.manager.register({ namespace: "default", name: "again", epoch: 4 });
    const back = await h.manager.register({ namespace: "default", name: "again", epoch: 5 });
    assert.notEqual(back, s, "a placement came between: the old copy is dropped and the volume decides");
  });
});

describe("sweeper", () => {
  it("removes unreferenced state files and folders left empty (a deleted namespace's), never a folder with anything in it, a fresh one, or lost+found", async () => {
    const root = await tempDir("torpor-sweep-");
    const h = await harness({}, root);
    const s = await h.manager.register({ namespace: "kept", name: "chat" });
    await s.submit("hello", greedy(2));
    await s.hibernate("test");
    const old = (Date.now() - 7200_000) / 1000;
    const folder = async (rel: string, at = old) => { await mkdir(path.join(root, rel), { recursive: true }); await utimes(path.join(root, rel), at, at); };
    await writeFile(path.join(root, "kept", "stray.0123456789ab.state"), "x");
    await utimes(path.join(root, "kept", "stray.0123456789ab.state"), old, old);
    await utimes(path.join(root, "kept"), old, old);
    await folder("gone/tenant-a");
    await folder("gone");
    await folder("fresh", Date.now() / 1000);
    await folder("lost+found");
    const sweep = () => new HibernationStore(root).sweepOrphans(3600_000);
    const first = await sweep();
    assert.deepEqual(first.map((f) => path.relative(root, f)).sort(), [path.join("gone", "tenant-a"), path.join("kept", "stray.0123456789ab.state")]);
    // Removing tenant-a made gone/ newer: it goes in a later sweep, once it has been empty as long.
    await utimes(path.join(root, "gone"), old, old);
    assert.deepEqual((await sweep()).map((f) => path.relative(root, f)), ["gone"]);
    assert.deepEqual((await readdir(root)).sort(), ["fresh", "kept", "lost+found"]);
    assert.equal((await s.submit("still here?", greedy(2))).rehydrated, true, "the hibernated session's files are untouched");
  });
});
