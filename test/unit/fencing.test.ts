// Epoch fencing on the hibernation volume, with the real store on a real folder: two runtimes
// (epoch 1, the old holder; epoch 2, the new placement) race to commit one session, on every
// interleaving the test can force. The newer placement always wins; state never goes backwards.
import assert from "node:assert/strict";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { StaleEpochError } from "../../contract/errors.js";
import type { EpochWindow } from "../../runtime/storage/hibernation-manifest.js";
import { HibernationStore } from "../../runtime/storage/hibernation-store.js";
import { tempDir } from "../../testbed/temp-dir.js";

const ref = { namespace: "ns", name: "chat", path: "" };
const FP = "fingerprint";
const fields = { modelFingerprint: FP, contextSize: 256, tokenCount: 1, history: [], createdAt: "2026-01-01T00:00:00.000Z", runtime: { nodeLlamaCpp: "test" } };

/** A save whose state write can be held open, to land another runtime's step inside it. */
function save(store: HibernationStore, window: EpochWindow, content: string, gate?: Promise<void>) {
  return store.save(ref, window, async (tmp) => { await gate; await writeFile(tmp, content); }, fields);
}

async function load(store: HibernationStore, window: EpochWindow): Promise<string | undefined> {
  const v = await store.verify(ref, FP, window);
  await v?.integrity;
  try {
    return v && await readFile(v.statePath, "utf8");
  } finally {
    await v?.release();
  }
}

type Order = "claim-before-save" | "claim-inside-save, load-before-commit" | "claim-inside-save, load-after-commit" | "claim-after-commit";

async function race(order: Order): Promise<{ loaded: string | undefined; oldSave: "committed" | "refused" }> {
  const store = new HibernationStore(await tempDir("torpor-fence-"));
  const a: EpochWindow = { epoch: 1, min: 0 };
  await store.claim(ref, 1);
  await save(store, a, "A0");
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  let b: EpochWindow | undefined;
  let loaded: string | undefined;
  const claimB = async () => { b = { epoch: 2, min: await store.claim(ref, 2) }; };

  if (order === "claim-before-save") await claimB();
  const oldSave = save(store, a, "A1", gate).then(() => "committed" as const, (err) => {
    assert.ok(err instanceof StaleEpochError, String(err));
    return "refused" as const;
  });
  await new Promise((r) => setTimeout(r, 10)); // A is past its fence check, writing
  if (order.startsWith("claim-inside")) await claimB();
  if (order === "claim-inside-save, load-before-commit") loaded = await load(store, b!);
  release();
  const outcome = await oldSave;
  if (order === "claim-after-commit") await claimB();
  if (loaded === undefined) loaded = await load(store, b!);
  return { loaded, oldSave: outcome };
}

describe("epoch fencing on the volume", () => {
  const expected: Record<Order, { loaded: string; oldSave: "committed" | "refused" }> = {
    "claim-before-save": { loaded: "A0", oldSave: "refused" },
    "claim-inside-save, load-before-commit": { loaded: "A0", oldSave: "committed" },
    "claim-inside-save, load-after-commit": { loaded: "A1", oldSave: "committed" },
    "claim-after-commit": { loaded: "A1", oldSave: "committed" },
  };
  for (const [order, want] of Object.entries(expected) as Array<[Order, typeof expected[Order]]>) {
    it(`${order}: the new placement loads ${want.loaded}; after it commits, the old holder can never win`, async () => {
      const store0 = await race(order);
      assert.deepEqual(store0, want);
    });
  }

  it("after the new placement has loaded, a late commit of the old one is never loaded, by it or any later placement", async () => {
    const store = new HibernationStore(await tempDir("torpor-fence-"));
    await store.claim(ref, 1);
    await save(store, { epoch: 1, min: 0 }, "A0");
    // The old holder starts a save and passes its fence check before the new placement claims.
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const late = save(store, { epoch: 1, min: 0 }, "A-late", gate);
    await new Promise((r) => setTimeout(r, 10));
    const b: EpochWindow = { epoch: 2, min: await store.claim(ref, 2) };
    assert.equal(await load(store, b), "A0");
    // Loaded: the session narrows its window to its own epoch; the restored files go, the claim stays.
    const resident: EpochWindow = { epoch: 2, min: 2 };
    await store.remove(ref, { keepClaims: true });
    release();
    await late; // lands on the volume after the hand-off
    assert.ok((await readdir(`${store.root}/ns`)).includes("chat@e1.torpor.json"));
    assert.equal(await load(store, resident), undefined, "the resident placement ignores it");
    const c: EpochWindow = { epoch: 3, min: await store.claim(ref, 3) };
    assert.equal(c.min, 2);
    assert.equal(await load(store, c), undefined, "so does the next placement");
    // An old holder asking to save or register now is told it is stale.
    await assert.rejects(save(store, { epoch: 1, min: 0 }, "A9"), StaleEpochError);
    await assert.rejects(store.claim(ref, 2), StaleEpochError);
    // Deleting the session removes every file, claims included.
    await store.remove(ref);
    assert.deepEqual(await readdir(`${store.root}/ns`), []);
  });

  it("the newer commit wins whatever order the two commits land in", async () => {
    for (const newerFirst of [true, false]) {
      const store = new HibernationStore(await tempDir("torpor-fence-"));
      await store.claim(ref, 1);
      let release!: () => void;
      const gate = new Promise<void>((r) => { release = r; });
      const old = save(store, { epoch: 1, min: 0 }, "old", newerFirst ? gate : undefined).catch(() => undefined);
      if (!newerFirst) await old;
      const b: EpochWindow = { epoch: 2, min: await store.claim(ref, 2) };
      await save(store, { epoch: 2, min: 2 }, "new");
      release();
      await old;
      assert.equal(await load(store, { epoch: 3, min: await store.claim(ref, 3) }), "new", `newer first: ${newerFirst}`);
      void b;
    }
  });
});
