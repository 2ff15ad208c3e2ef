// The runtime addon's plain state-file writer (runtime/native/AddonContextStateFiles.cpp) on real
// node-llama-cpp: the bytes it writes are llama.cpp's own saveStateToFile's, its xxHash64 is the
// one the store checks on rehydrate, and a session hibernated with it continues exactly.
import assert from "node:assert/strict";
import { open, readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { LlamaContext, Token } from "node-llama-cpp";
import { writeSequenceState } from "../../runtime/model/sequence-state-files.js";
import type { ModelHost } from "../../runtime/model/model-host.js";
import { digestFile } from "../../runtime/storage/state-digest.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { greedy, harness, sharedHost } from "../helpers/in-process-runtime.js";
import { addonBuildable } from "../helpers/runtime-addon.js";

describe("state files written by the runtime addon", () => {
  let host: ModelHost;
  let context: LlamaContext;
  let dir: string;

  before(async () => {
    host = await sharedHost();
    context = await host.createContext(4096, 1);
    dir = await tempDir("torpor-statefiles-");
  });
  after(async () => { await context?.dispose(); });

  it("are available where the addon builds, and say why where not", () => {
    if (addonBuildable) assert.deepEqual(host.stateFiles, { ok: true });
    else assert.ok(!host.stateFiles.ok && host.stateFiles.reason.length > 0);
  });

  it("hold llama.cpp's own bytes and the xxHash64 the store checks, across several 1 MiB pieces", async (t) => {
    if (!host.stateFiles.ok) return t.skip(host.stateFiles.reason);
    const sequence = context.getSequence();
    for (const length of [0, 5, 2500]) {
      await sequence.clearHistory();
      if (length) await sequence.evaluateWithoutGeneratingNewTokens(Array.from({ length }, (_, i) => 10 + ((i * 37) % 200)) as Token[]);
      const theirs = path.join(dir, `llama-${length}.state`), ours = path.join(dir, `addon-${length}.state`);
      await sequence.saveStateToFile(theirs);
      const fh = await open(ours, "wx", 0o600);
      let written: { bytes: number; xxh64: string };
      try { written = await writeSequenceState(sequence)(fh.fd); } finally { await fh.close(); }
      const bytes = await readFile(ours);
      assert.ok(bytes.equals(await readFile(theirs)), `${length} tokens: the same bytes as saveStateToFile`);
      assert.equal(written.bytes, bytes.length);
      assert.equal(written.xxh64, (await digestFile(ours, { xxh64: true })).xxh64, `${length} tokens: the checksum of what was written`);
      if (length === 2500) assert.ok(bytes.length > 2 * (1 << 20), `${bytes.length} bytes: several pieces`);
    }
    sequence.dispose();
  });

  it("an unsealed hibernate written by the addon rehydrates and continues exactly", async (t) => {
    if (!host.stateFiles.ok) return t.skip(host.stateFiles.reason);
    const a = await harness();
    const b = await harness({}, undefined, undefined, (h) => Object.create(h, { stateFiles: { value: { ok: false, reason: "test: llama.cpp's writer" } } }) as ModelHost);
    const text = Array.from({ length: 40 }, (_, i) => `note ${i}: the meeting moved to Thursday`).join("\n");
    const [x, y] = [await a.manager.register({ namespace: "t1", name: "x", contextSize: 4096 }), await b.manager.register({ namespace: "t1", name: "x", contextSize: 4096 })];
    await x.submit(text, greedy(4));
    await y.submit(text, greedy(4));
    const [hx, hy] = [await x.hibernate("test"), await y.hibernate("test")];
    assert.ok((await readFile(hx.record!.stateFile)).equals(await readFile(hy.record!.stateFile)), "the addon's file is llama.cpp's");
    const [rx, ry] = [await x.submit("When is the meeting?", greedy(8)), await y.submit("When is the meeting?", greedy(8))];
    assert.equal(rx.rehydrated, true);
    assert.ok(rx.cachedTokens > 100, `restored tokens reused (${rx.cachedTokens})`);
    assert.equal(rx.text, ry.text);
  });
});
