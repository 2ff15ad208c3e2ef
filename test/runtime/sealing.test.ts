// Sealed hibernation files on real node-llama-cpp: what someone with write access to the shared
// volume can try (flip a byte, edit the history, transplant a session into another namespace,
// plant plaintext, use another key) is refused with state_rejected, the files are kept, the
// process keeps serving; rotation keeps old files readable; no plaintext reaches the volume.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cp, open, readdir, readFile, stat, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { createLogger } from "../../common/logger.js";
import { ManualClock } from "../../common/clock.js";
import { StateRejectedError } from "../../contract/errors.js";
import { RuntimeMetrics } from "../../runtime/metrics.js";
import { SessionManager } from "../../runtime/sessions/session-manager.js";
import type { ModelHost } from "../../runtime/model/model-host.js";
import { HibernationStore } from "../../runtime/storage/hibernation-store.js";
import { CHUNK, SEALED_CHUNK } from "../../runtime/storage/sealed-chunks.js";
import { openSealedFile, SealError, sealFile, SealingKeys, type SealIdentity } from "../../runtime/storage/sealing.js";
import { SealingThreads } from "../../runtime/storage/sealing-threads.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { otherModel } from "../../testbed/models.js";
import { greedy, sharedHost } from "../helpers/in-process-runtime.js";
import { addonBuildable } from "../helpers/runtime-addon.js";

const key = (id: string) => `${id}:${randomBytes(32).toString("base64")}`;
const OLD = key("k0"), NEW = key("k1");

/** A host that seals through staged plaintext files, as a runtime without the addon's sealed states does. */
const staged = (host: ModelHost): ModelHost => Object.create(host, { stateFiles: { value: { ok: false, reason: "test: staged files" } } }) as ModelHost;

/** `keys` "" gives an unsealed store. */
async function sealedRuntime(keys: string, dir?: string, model?: () => Promise<string>, hostAs: (h: ModelHost) => ModelHost = (h) => h) {
  const root = dir ?? await tempDir("torpor-sealed-");
  const staging = await tempDir("torpor-staging-");
  const store = new HibernationStore(root, keys ? { sealing: { keys: SealingKeys.parse(keys), stagingDir: staging } } : {});
  const manager = new SessionManager(hostAs(await sharedHost(model)), store, new ManualClock(1), new RuntimeMetrics(false), createLogger("test", "silent"), {
    maxResident: 8, idleAfterMs: 0, defaultContextSize: 1024, maxContextSize: 8192, podName: "test",
  });
  return { root, staging, store, manager };
}

const SECRET = "my passport number is X1234567";

/** A conversation whose state spans several 1 MiB chunks. */
const LONG = Array.from({ length: 60 }, (_, i) => `line ${i}: ${SECRET}`).join("\n");

async function hibernated(keys: string, namespace = "t1", name = "chat", dir?: string, text = SECRET) {
  const rt = await sealedRuntime(keys, dir);
  const s = await rt.manager.register({ namespace, name, ...(text === SECRET ? {} : { contextSize: 4096 }) });
  await s.submit(text, greedy(6));
  const out = await s.hibernate("test");
  return { ...rt, s, manifest: out.record!.manifestFile, state: out.record!.stateFile };
}

/** Every forgery below, counted for the reliability summary: tried, refused, and loaded (must stay 0). */
const attacks = { tried: 0, refused: 0, harmless: 0, loaded: 0 };
after(() => {
  console.log(`\nattacks on the volume: ${attacks.tried} tried, ${attacks.refused} refused, ${attacks.harmless} changed only unauthenticated listing fields (the authentic conversation loaded), ${attacks.loaded} loaded forged state`);
});

async function refuses(attempt: Promise<unknown>, ok: (err: unknown) => boolean): Promise<void> {
  attacks.tried++;
  const outcome = await attempt.then(() => "loaded", (err: unknown) => (ok(err) ? "refused" : err));
  if (outcome === "loaded") attacks.loaded++;
  else if (outcome === "refused") attacks.refused++;
  assert.equal(outcome, "refused");
}

const rejected = (reason: string) => (err: unknown) => err instanceof StateRejectedError && err.reason === reason;

describe("sealed hibernation files", () => {
  it("round-trip continues exactly, with no plaintext on the volume or left in staging", async () => {
    const rt = await hibernated(NEW);
    const twin = await sealedRuntime(NEW);
    const t = await twin.manager.register({ namespace: "t1", name: "twin" });
    await t.submit(SECRET, greedy(6));
    for (const f of [rt.manifest, rt.state]) assert.ok(!(await readFile(f)).includes("passport"), `${path.basename(f)} holds plaintext`);
    const r = await rt.s.submit("What did I tell you?", greedy(8));
    assert.equal(r.rehydrated, true);
    assert.equal(r.text, (await t.submit("What did I tell you?", greedy(8))).text);
    await rt.store.settled(); // staged plaintext is deleted after the answer
    assert.deepEqual(await readdir(rt.staging), [], "staging plaintext removed");
  });

  it("the addon seals and opens as llama.cpp streams (nothing staged), and reads and writes the same files as a runtime that stages them", async (t) => {
    const host = await sharedHost();
    if (!host.stateFiles.ok) {
      assert.ok(!addonBuildable, `the addon should have been built here: ${host.stateFiles.reason}`);
      return t.skip(host.stateFiles.reason);
    }
    // A conversation of several 1 MiB chunks, so chunk boundaries fall inside llama.cpp's tensors.
    const long = LONG;
    const twin = await sealedRuntime(NEW);
    const want = await twin.manager.register({ namespace: "t1", name: "twin", contextSize: 4096 });
    await want.submit(long, greedy(6));
    const answers = [(await want.submit("What did I tell you?", greedy(8))).text, (await want.submit("And then?", greedy(8))).text];

    const dir = await tempDir("torpor-sealed-");
    const [native, files] = [await sealedRuntime(NEW, dir), await sealedRuntime(NEW, dir, undefined, staged)];
    const a = await native.manager.register({ namespace: "t1", name: "chat", contextSize: 4096 });
    await a.submit(long, greedy(6));
    const first = await a.hibernate("test");
    assert.ok(first.record!.bytes > 2 * CHUNK, `a state of ${first.record!.bytes} bytes spans several chunks`);
    assert.deepEqual(await readdir(native.staging), [], "nothing staged by the hibernate, even before the background clean-up");
    assert.ok(!(await readFile(first.record!.stateFile)).includes("passport"), "sealed");
    // Sealed in the addon, opened through a staged file.
    const b = await files.manager.register({ namespace: "t1", name: "chat", contextSize: 4096 });
    const r = await b.submit("What did I tell you?", greedy(8));
    assert.equal(r.rehydrated, true);
    assert.ok(r.cachedTokens > 100, `the restored tokens are reused (${r.cachedTokens})`);
    assert.equal(r.text, answers[0], "sealed in the addon, opened through a staged file: the same continuation");
    // Sealed through a staged file, opened in the addon.
    await b.hibernate("test");
    const again = await a.submit("And then?", greedy(8));
    assert.equal(again.rehydrated, true);
    assert.ok(again.cachedTokens > 100, `the restored tokens are reused (${again.cachedTokens})`);
    assert.equal(again.text, answers[1], "sealed through a staged file, opened in the addon: the same continuation");
    assert.deepEqual(await readdir(native.staging), [], "nothing staged by the rehydrate");
  });

  it("a sealed rehydrate asks for its file to be read ahead once it passed its check, and continues exactly", async (t) => {
    const host = await sharedHost();
    if (!host.stateFiles.ok || !host.prefetchStateFile) return t.skip(host.stateFiles.ok ? "this addon has no prefetchStateFile" : host.stateFiles.reason);
    const asked: number[] = [];
    const recording = (h: ModelHost) => Object.create(h, { prefetchStateFile: { value: (fd: number, bytes: number) => { asked.push(bytes); h.prefetchStateFile!(fd, bytes); } } }) as ModelHost;
    const rt = await sealedRuntime(NEW, undefined, undefined, recording);
    const twin = await sealedRuntime(NEW);
    const [x, y] = [await rt.manager.register({ namespace: "t1", name: "ahead", contextSize: 4096 }), await twin.manager.register({ namespace: "t1", name: "ahead", contextSize: 4096 })];
    await x.submit(LONG, greedy(4));
    await y.submit(LONG, greedy(4));
    const h = await x.hibernate("test");
    const [rx, ry] = [await x.submit("What did I tell you?", greedy(8)), await y.submit("What did I tell you?", greedy(8))];
    assert.equal(rx.rehydrated, true);
    assert.equal(rx.text, ry.text);
    assert.deepEqual(asked, [h.record!.bytes], "asked once, for the whole sealed file");
    // A file that fails its check is not read ahead: nothing past the size check opens it.
    const again = await x.hibernate("test");
    await writeFile(again.record!.stateFile, "more", { flag: "a" });
    asked.length = 0;
    await x.submit("Again?", greedy(2)).catch(() => undefined);
    assert.deepEqual(asked, [], "a file of the wrong size is not opened for read-ahead");
  });

  it("a state of several chunks with chunks reordered, dropped, duplicated, cut, appended or taken from another session is refused by the runtime, and kept", async () => {
    const base = await hibernated(NEW, "t1", "multi", undefined, LONG);
    const other = await hibernated(NEW, "t1", "neighbour", base.root, LONG);
    const [file, otherFile] = [await readFile(base.state), await readFile(other.state)];
    const chunks = Math.floor(file.length / SEALED_CHUNK);
    assert.ok(chunks >= 2, `${file.length} bytes: several chunks`);
    // The header is what precedes chunk 0: magic, key id, prefix (sealing.ts).
    const h = 8 + 1 + file[8]! + 8;
    const chunk = (f: Buffer, i: number) => f.subarray(h + i * SEALED_CHUNK, h + (i + 1) * SEALED_CHUNK);
    const forgeries: Record<string, Buffer> = {
      reordered: Buffer.concat([file.subarray(0, h), chunk(file, 1), chunk(file, 0), file.subarray(h + 2 * SEALED_CHUNK)]),
      dropped: Buffer.concat([file.subarray(0, h + SEALED_CHUNK), file.subarray(h + 2 * SEALED_CHUNK)]),
      duplicated: Buffer.concat([file.subarray(0, h + SEALED_CHUNK), chunk(file, 0), file.subarray(h + 2 * SEALED_CHUNK)]),
      "cut at a chunk boundary": file.subarray(0, h + SEALED_CHUNK),
      "cut inside a chunk": file.subarray(0, file.length - 9),
      appended: Buffer.concat([file, chunk(file, 0)]),
      "a chunk of another session": Buffer.concat([file.subarray(0, h), chunk(otherFile, 0), file.subarray(h + SEALED_CHUNK)]),
      "a flipped bit in a middle chunk": (() => { const x = Buffer.from(file); x[h + SEALED_CHUNK + 1000]! ^= 4; return x; })(),
    };
    for (const [what, bytes] of Object.entries(forgeries)) {
      await writeFile(base.state, bytes);
      // The manifest's size check refuses a file of another size first; the seal refuses the rest.
      await refuses(base.s.submit("hi", greedy(2)), (e) => e instanceof StateRejectedError && ["seal_invalid", "truncated"].includes(e.reason)).catch((err: unknown) => {
        throw new Error(`${what}: ${String(err)}`);
      });
      assert.ok((await readFile(base.state)).equals(bytes), `${what}: kept for inspection`);
    }
    // The authentic file still opens: nothing of the refusals stuck.
    await writeFile(base.state, file);
    const r = await base.s.submit("What did I tell you?", greedy(4));
    assert.equal(r.rehydrated, true);
  });

  it("at startup, removes staged plaintext a killed runtime left, and keeps a live neighbour's", async () => {
    const rt = await sealedRuntime(NEW);
    const gone = spawnSync(process.execPath, ["-e", ""]).pid;
    const files = {
      dead: `${gone}.0123456789abcdef.plain`,
      mine: `${process.pid}.0123456789abcdef.plain`, // a restarted container's pid is often its predecessor's
      live: `${process.ppid}.fedcba9876543210.plain`,
      unrelated: "notes.txt",
    };
    for (const f of Object.values(files)) await writeFile(path.join(rt.staging, f), SECRET);
    assert.deepEqual((await rt.store.sweepStaging()).sort(), [files.dead, files.mine].sort());
    assert.deepEqual((await readdir(rt.staging)).sort(), [files.live, files.unrelated].sort());
  });

  it("refuses a flipped byte, an edited manifest, a planted plaintext file; keeps them; keeps serving", async () => {
    const flipped = await hibernated(NEW, "t1", "flip");
    const fh = await open(flipped.state, "r+");
    const size = (await fh.stat()).size;
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, Math.floor(size / 2));
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, Math.floor(size / 2));
    await fh.close();
    await refuses(flipped.s.submit("hi", greedy(2)), rejected("seal_invalid"));
    assert.equal((await stat(flipped.state)).size, size, "kept for inspection");

    const edited = await hibernated(NEW, "t1", "edit");
    const env = JSON.parse(await readFile(edited.manifest, "utf8")) as { sealed: { data: string } };
    const data = Buffer.from(env.sealed.data, "base64");
    data[5] = data[5]! ^ 0x20;
    env.sealed.data = data.toString("base64");
    await writeFile(edited.manifest, JSON.stringify(env));
    await refuses(edited.s.submit("hi", greedy(2)), rejected("seal_invalid"));

    const planted = await hibernated(NEW, "t1", "plant");
    await writeFile(planted.manifest, JSON.stringify({ format: "torpor.dev/hibernation", version: 1, namespace: "t1", name: "plant", path: "", stateFile: path.basename(planted.state), stateBytes: 1, stateSha256: "", history: [], contextSize: 256, tokenCount: 1, modelFingerprint: (await sharedHost()).fingerprint }));
    await refuses(planted.s.submit("hi", greedy(2)), rejected("unsealed"));

    const bystander = await planted.manager.register({ namespace: "t1", name: "bystander" });
    assert.equal((await bystander.submit("still serving?", greedy(2))).completionTokens, 2);
  });

  it("a manifest or state replaced by a FIFO or a symlink to /dev/zero is refused at once, sealed or not, and the runtime keeps serving", async () => {
    // A FIFO's open blocks a thread-pool thread until a writer comes: two such reads would stop
    // every decode of a runtime with two pool threads. /dev/zero reads forever.
    for (const keys of [NEW, ""]) await plantedFiles(await hibernated(keys, "t1", keys ? "fifo" : "fifo-unsealed"));
  });

  async function plantedFiles(rt: Awaited<ReturnType<typeof hibernated>>): Promise<void> {
    const { manifest, state } = rt;
    const within = async (what: string, attempt: Promise<unknown>, unblock: () => Promise<void>) => {
      let timer: NodeJS.Timeout | undefined;
      const hung = new Promise<string>((resolve) => { timer = setTimeout(() => resolve("hung"), 5000); });
      const outcome = await Promise.race([attempt.then(() => "loaded", (e: unknown) => e), hung]);
      clearTimeout(timer);
      if (outcome === "hung") { await unblock(); await attempt.catch(() => undefined); }
      attacks.tried++;
      const refused = outcome instanceof StateRejectedError;
      if (refused) attacks.refused++;
      if (outcome === "loaded") attacks.loaded++;
      assert.ok(refused, `${what}: ${outcome instanceof Error ? outcome.message : String(outcome)}`);
    };
    // Opening a FIFO for writing lets a reader blocked in open() go on (it then reads nothing).
    const unblockFifo = (p: string) => async () => { const w = await open(p, "w"); await w.close(); };
    const original = await readFile(manifest);
    for (const [what, plant] of [
      ["manifest as a FIFO", async () => { spawnSync("rm", ["-f", manifest]); spawnSync("mkfifo", [manifest]); }],
      ["manifest as a symlink to /dev/zero", async () => { spawnSync("rm", ["-f", manifest]); spawnSync("ln", ["-s", "/dev/zero", manifest]); }],
    ] as const) {
      await plant();
      await within(what, rt.s.submit("hi", greedy(2)), unblockFifo(manifest));
      assert.ok(spawnSync("test", ["-e", manifest]).status === 0 || spawnSync("test", ["-L", manifest]).status === 0, `${what}: kept for inspection`);
    }
    spawnSync("rm", ["-f", manifest]);
    await writeFile(manifest, original);
    spawnSync("rm", ["-f", state]);
    spawnSync("mkfifo", [state]);
    await within("state as a FIFO", rt.s.submit("hi", greedy(2)), unblockFifo(state));
    spawnSync("rm", ["-f", state]);
    spawnSync("ln", ["-s", "/dev/zero", state]);
    await within("state as a symlink to /dev/zero", rt.s.submit("hi", greedy(2)), async () => undefined);
    const bystander = await rt.manager.register({ namespace: "t1", name: "bystander" });
    assert.equal((await bystander.submit("still serving?", greedy(2))).completionTokens, 2);
  }

  it("unsealed, what loads is the file that was checked: a state swapped for a FIFO after the check does not block the load", async () => {
    const rt = await hibernated("", "t1", "swapped");
    // The swap lands after the store opened the state, before llama.cpp opens it (once the
    // context is allocated): what someone with write access to the volume could time.
    const verify = rt.store.verify.bind(rt.store);
    rt.store.verify = (ref, fp, window, whileHashing) => verify(ref, fp, window, async (m) => {
      await whileHashing?.(m);
      await new Promise((r) => setTimeout(r, 50));
      spawnSync("rm", ["-f", rt.state]);
      spawnSync("mkfifo", [rt.state]);
    });
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<"hung">((resolve) => { timer = setTimeout(() => resolve("hung"), 10_000); });
    const outcome = await Promise.race([rt.s.submit("What did I tell you?", greedy(4)), hung]);
    clearTimeout(timer);
    if (outcome === "hung") { const w = await open(rt.state, "w"); await w.close(); }
    if (outcome === "hung") assert.fail("the load opened the FIFO");
    assert.equal(outcome.rehydrated, true);
    assert.equal((rt.s.messages().find((m) => m.type === "user") as { text: string }).text, SECRET);
    spawnSync("rm", ["-f", rt.state]);
  });

  it("refuses a session transplanted into another namespace or name", async () => {
    const src = await hibernated(NEW, "t1", "victim");
    for (const [ns, name] of [["t2", "victim"], ["t1", "thief"]] as const) {
      const srcDir = path.join(src.root, "t1"), dstDir = path.join(src.root, ns);
      for (const f of await readdir(srcDir)) {
        if (f.startsWith("victim")) await cp(path.join(srcDir, f), path.join(dstDir, f.replace("victim", name)), { force: true });
      }
      const thief = await src.manager.register({ namespace: ns, name });
      await refuses(thief.submit("what was the passport number?", greedy(4)), (e: unknown) => e instanceof StateRejectedError && (e.reason === "seal_invalid" || e.reason === "manifest_invalid"));
    }
  });

  it("a session whose pool's model changed opens under the model it was sealed with and is rebuilt from its history; an edited model name does not open", async () => {
    const before = await hibernated(NEW, "t1", "upgraded");
    const upgraded = await sealedRuntime(NEW, before.root, otherModel);
    const s = await upgraded.manager.register({ namespace: "t1", name: "upgraded" });
    const r = await s.submit("What did I tell you?", greedy(2));
    assert.equal(r.rehydrated, true);
    assert.equal(r.cachedTokens, 0, "the other model's KV cache is not loaded");
    assert.equal(s.status().lastRehydrate?.replayed, "model_changed");
    assert.deepEqual(s.messages().filter((m) => m.type === "user").map((m) => (m as { text: string }).text), [SECRET, "What did I tell you?"]);

    const edited = await hibernated(NEW, "t1", "renamed", before.root);
    const env = JSON.parse(await readFile(edited.manifest, "utf8")) as { modelFingerprint: string };
    await writeFile(edited.manifest, JSON.stringify({ ...env, modelFingerprint: "0".repeat(64) }));
    await refuses((await upgraded.manager.register({ namespace: "t1", name: "renamed" })).submit("hi", greedy(2)), rejected("seal_invalid"));
  });

  it("rotation: new keys seal, old files still open; a file sealed with a key the runtime lacks is refused", async () => {
    const old = await hibernated(OLD, "t1", "rotated");
    const rotated = await sealedRuntime(`${NEW},${OLD}`, old.root);
    const s = await rotated.manager.register({ namespace: "t1", name: "rotated" });
    assert.equal((await s.submit("still there?", greedy(2))).rehydrated, true);
    await s.hibernate("test");
    const env = JSON.parse(await readFile(path.join(old.root, "t1", "rotated.torpor.json"), "utf8")) as { sealed: { keyId: string } };
    assert.equal(env.sealed.keyId, "k1", "re-sealed with the new key");
    const stranger = await sealedRuntime(key("k9"), old.root);
    await refuses((await stranger.manager.register({ namespace: "t1", name: "rotated" })).submit("hi", greedy(2)), rejected("seal_invalid"));
  });

  it("fuzzed sealed files (mutations, truncations, swaps) are always refused, never loaded", async () => {
    const base = await hibernated(NEW, "t1", "fuzz");
    const other = await hibernated(NEW, "t1", "other", base.root);
    const [manifest, state, otherState] = await Promise.all([readFile(base.manifest), readFile(base.state), readFile(other.state)]);
    let tried = 0;
    await fc.assert(fc.asyncProperty(
      fc.oneof(
        fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }), file: fc.constantFrom("state", "manifest") }),
        fc.record({ kind: fc.constant("truncate" as const), at: fc.nat(), file: fc.constantFrom("state", "manifest") }),
        fc.record({ kind: fc.constant("swap" as const) }),
      ),
      async (m) => {
        tried++;
        await writeFile(base.manifest, manifest);
        await writeFile(base.state, state);
        if (m.kind === "swap") await writeFile(base.state, otherState.subarray(0, state.length));
        else {
          const buf = Buffer.from(m.file === "state" ? state : manifest);
          const at = m.at % buf.length;
          const out = m.kind === "flip" ? (buf[at] = buf[at]! ^ (1 << m.bit), buf) : buf.subarray(0, at);
          await writeFile(m.file === "state" ? base.state : base.manifest, out);
        }
        const probe = await sealedRuntime(NEW, base.root);
        attacks.tried++;
        const s = await probe.manager.register({ namespace: "t1", name: "fuzz" }).catch(() => undefined);
        if (!s) { attacks.refused++; return; } // refused at registration: fine
        const r = await s.submit("hi", greedy(1)).then(() => "loaded", (e: unknown) => e instanceof StateRejectedError ? "refused" : `other: ${String(e)}`);
        const authentic = r === "loaded" && s.messages()[0]?.type === "user" && (s.messages()[0] as { text: string }).text === SECRET;
        if (r === "refused") attacks.refused++; else if (authentic) attacks.harmless++; else attacks.loaded++;
        // Only the authentic conversation may ever load (a flip in an unauthenticated listing field
        // of the manifest, such as its advisory byte count, changes nothing that is loaded).
        assert.ok(r === "refused" || (r === "loaded" && s.messages()[0]?.type === "user" && (s.messages()[0] as { text: string }).text === SECRET), `${JSON.stringify(m)} -> ${r}`);
      }), { numRuns: 40 });
    await writeFile(base.manifest, manifest);
    await writeFile(base.state, state);
    await truncate(base.state, 0).catch(() => undefined);
    assert.equal(tried, 40);
  });
});

// States of real sessions above fit in one chunk; these files span several, split into ranges
// that separate threads seal and open, and are attacked chunk by chunk.
describe("sealed state files across threads", () => {
  const identity: SealIdentity = { namespace: "t1", name: "big", path: "", modelFingerprint: "f" };
  const keys = SealingKeys.parse(NEW);
  const pools = [new SealingThreads(0), new SealingThreads(1), new SealingThreads(3)];
  after(() => Promise.all(pools.map((p) => p.close())));

  it("a file sealed by any thread count opens with any other, byte for byte, at every chunk boundary", async () => {
    const dir = await tempDir("torpor-chunks-");
    for (const size of [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77]) {
      const plain = randomBytes(size);
      await writeFile(path.join(dir, "plain"), plain);
      for (const [i, sealer] of pools.entries()) {
        const sealed = path.join(dir, `sealed-${size}-${i}`);
        const bytes = await sealFile(keys, identity, "s", path.join(dir, "plain"), sealed, sealer);
        assert.equal((await stat(sealed)).size, bytes);
        for (const [j, opener] of pools.entries()) {
          const back = path.join(dir, `back-${size}-${i}-${j}`);
          await openSealedFile(keys, identity, "s", sealed, back, opener);
          assert.ok((await readFile(back)).equals(plain), `size ${size}: sealed on ${sealer.threads} threads, opened on ${opener.threads}`);
        }
      }
    }
  });

  it("refuses reordered, dropped, duplicated, truncated, appended and transplanted chunks, on every thread count", async () => {
    const dir = await tempDir("torpor-chunks-");
    await writeFile(path.join(dir, "plain"), randomBytes(4 * CHUNK + 5));
    const sealed = path.join(dir, "sealed");
    await sealFile(keys, identity, "s", path.join(dir, "plain"), sealed, pools[2]!);
    const other = path.join(dir, "other");
    await sealFile(keys, { ...identity, name: "other" }, "s", path.join(dir, "plain"), other, pools[2]!);
    const file = await readFile(sealed), otherFile = await readFile(other);
    const head = file.length - 4 * SEALED_CHUNK - (4 + 5 + 16);
    const chunk = (f: Buffer, i: number) => f.subarray(head + i * SEALED_CHUNK, head + (i + 1) * SEALED_CHUNK);
    const forgeries: Record<string, Buffer> = {
      reordered: Buffer.concat([file.subarray(0, head), chunk(file, 1), chunk(file, 0), file.subarray(head + 2 * SEALED_CHUNK)]),
      dropped: Buffer.concat([file.subarray(0, head + SEALED_CHUNK), file.subarray(head + 2 * SEALED_CHUNK)]),
      duplicated: Buffer.concat([file.subarray(0, head + SEALED_CHUNK), chunk(file, 0), file.subarray(head + 2 * SEALED_CHUNK)]),
      "cut at a chunk boundary": file.subarray(0, head + 3 * SEALED_CHUNK),
      "cut inside a chunk": file.subarray(0, file.length - 9),
      appended: Buffer.concat([file, chunk(file, 2)]),
      "a chunk of another session": Buffer.concat([file.subarray(0, head + 2 * SEALED_CHUNK), chunk(otherFile, 2), file.subarray(head + 3 * SEALED_CHUNK)]),
      "a flipped bit in the last chunk": Buffer.concat([file.subarray(0, file.length - 1), Buffer.from([file[file.length - 1]! ^ 1])]),
    };
    for (const [what, bytes] of Object.entries(forgeries)) {
      await writeFile(path.join(dir, "forged"), bytes);
      for (const pool of pools) {
        await refuses(openSealedFile(keys, identity, "s", path.join(dir, "forged"), path.join(dir, "out"), pool), (e) => e instanceof SealError).catch((err: unknown) => {
          throw new Error(`${what} on ${pool.threads} threads: ${String(err)}`);
        });
      }
    }
    // The pool keeps working after refusals and after an error that is not the file's fault.
    await assert.rejects(openSealedFile(keys, identity, "s", path.join(dir, "missing"), path.join(dir, "out"), pools[2]!), { code: "ENOENT" });
    await openSealedFile(keys, identity, "s", sealed, path.join(dir, "out"), pools[2]!);
    assert.ok((await readFile(path.join(dir, "out"))).equals(await readFile(path.join(dir, "plain"))));
  });
});
