// The runtime addon's plain state-file writer (runtime/native/AddonContextStateFiles.cpp) on real
// node-llama-cpp: the bytes it writes are llama.cpp's own saveStateToFile's, its xxHash64 is the
// one the store checks on rehydrate, and a session hibernated with it continues exactly.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { appendFile, open, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { LlamaContext, Token } from "node-llama-cpp";
import { loadSequenceState, writeSequenceState } from "../../runtime/model/sequence-state-files.js";
import { CHECKSUM_MISMATCH } from "../../runtime/storage/state-transfer.js";
import type { ModelHost } from "../../runtime/model/model-host.js";
import { digestFile } from "../../runtime/storage/state-digest.js";
import { eventually } from "../../testbed/eventually.js";
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

  for (const flashAttention of [false, true]) it(`hold llama.cpp's own bytes and the xxHash64 the store checks, across several 1 MiB pieces (flash attention ${flashAttention ? "on: pieces straight from the KV cache" : "off: rows through the buffer"})`, async (t) => {
    if (!host.stateFiles.ok) return t.skip(host.stateFiles.reason);
    const own = await host.createContext(4096, 1, flashAttention);
    t.after(() => own.dispose());
    const sequence = own.getSequence();
    for (const length of [0, 5, 2500]) {
      await sequence.clearHistory();
      if (length) await sequence.evaluateWithoutGeneratingNewTokens(Array.from({ length }, (_, i) => 10 + ((i * 37) % 200)) as Token[]);
      const theirs = path.join(dir, `llama-${length}-${flashAttention}.state`), ours = path.join(dir, `addon-${length}-${flashAttention}.state`);
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

  /** Loads `file` with the addon's one-pass loader into a new sequence of `into`. */
  async function loadPlain(into: LlamaContext, file: string, xxh64?: string) {
    const sequence = into.getSequence();
    const bytes = await readFile(file);
    const fh = await open(file, "r");
    try {
      await loadSequenceState(sequence)(fh.fd, { bytes: bytes.length, xxh64: xxh64 ?? (await digestFile(file, { xxh64: true })).xxh64! });
      return { sequence };
    } catch (err) {
      return { sequence, err: err as NodeJS.ErrnoException };
    } finally { await fh.close(); }
  }

  async function next(sequence: ReturnType<LlamaContext["getSequence"]>, n: number): Promise<number[]> {
    const out: number[] = [];
    for await (const token of sequence.evaluate([17 as Token], { temperature: 0 })) { out.push(token); if (out.length >= n) break; }
    return out;
  }

  for (const flashAttention of [false, true]) {
    it(`an unsealed state loads in one pass with its checksum and continues exactly (flash attention ${flashAttention ? "on: pieces straight into the KV cache" : "off: rows through the buffer"})`, async (t) => {
      if (!host.stateFiles.ok) return t.skip(host.stateFiles.reason);
      const [from, into] = [await host.createContext(4096, 1, flashAttention), await host.createContext(4096, 1, flashAttention)];
      try {
        const original = from.getSequence();
        await original.evaluateWithoutGeneratingNewTokens(Array.from({ length: 2500 }, (_, i) => 10 + ((i * 37) % 200)) as Token[]);
        const file = path.join(dir, `load-${flashAttention}.state`);
        await original.saveStateToFile(file);
        const { sequence, err } = await loadPlain(into, file);
        assert.equal(err, undefined);
        assert.deepEqual(sequence.contextTokens, original.contextTokens);
        assert.deepEqual(await next(sequence, 8), await next(original, 8), "greedy continuation identical");
      } finally {
        await from.dispose();
        await into.dispose();
      }
    });
  }

  it("an unsealed state with a byte changed, a wrong checksum or bytes after it is refused and leaves the sequence empty", async (t) => {
    if (!host.stateFiles.ok) return t.skip(host.stateFiles.reason);
    const sequence = context.getSequence();
    await sequence.evaluateWithoutGeneratingNewTokens(Array.from({ length: 1500 }, (_, i) => 10 + ((i * 37) % 200)) as Token[]);
    const good = path.join(dir, "refused.state");
    await sequence.saveStateToFile(good);
    sequence.dispose();
    const bytes = await readFile(good);
    const flipped = Buffer.from(bytes);
    flipped[Math.floor(flipped.length * 0.8)]! ^= 0x40;
    await writeFile(path.join(dir, "flipped.state"), flipped);
    await writeFile(path.join(dir, "longer.state"), bytes);
    await appendFile(path.join(dir, "longer.state"), Buffer.alloc(100, 1));
    const into = await host.createContext(4096, 1);
    try {
      const goodHash = (await digestFile(good, { xxh64: true })).xxh64!;
      for (const [name, file, xxh64, code] of [
        ["a byte changed in the KV cache", "flipped.state", goodHash, CHECKSUM_MISMATCH],
        ["the checksum of another file", "refused.state", "0123456789abcdef", CHECKSUM_MISMATCH],
        ["bytes after the state (its own checksum)", "longer.state", undefined, undefined],
      ] as const) {
        const { sequence: s, err } = await loadPlain(into, path.join(dir, file), xxh64);
        assert.ok(err, `${name}: refused`);
        assert.equal(err.code, code, `${name}: ${err.message}`);
        assert.deepEqual(s.contextTokens, [], `${name}: nothing left in the sequence`);
        s.dispose();
      }
    } finally { await into.dispose(); }
  });

  for (const addon of [true, false]) {
    it(`a state corrupt deep in its KV cells is refused (checksum_mismatch), kept, and the session stays Hibernated (${addon ? "checked as the addon loads it" : "without the addon: checked beside the prompt"})`, async (t) => {
      if (addon && !host.stateFiles.ok) return t.skip(host.stateFiles.reason);
      const h = await harness({}, undefined, undefined, addon ? undefined : (x) => Object.create(x, { stateFiles: { value: { ok: false, reason: "test: llama.cpp's loader" } } }) as ModelHost);
      const s = await h.manager.register({ namespace: "t1", name: `deep-${addon}`, contextSize: 4096 });
      await s.submit(Array.from({ length: 30 }, (_, i) => `note ${i}: keep this`).join("\n"), greedy(2));
      const { record } = await s.hibernate("test");
      const fh = await open(record!.stateFile, "r+");
      try { await fh.write(Buffer.from([0xde, 0xad, 0xbe, 0xef]), 0, 4, record!.bytes - 4096); } finally { await fh.close(); }
      await assert.rejects(s.submit("what did I say?", greedy(4)), (e: NodeJS.ErrnoException & { reason?: string }) => e.reason === "checksum_mismatch");
      assert.equal(s.status().residency, "Hibernated");
      assert.equal((await readFile(record!.stateFile)).length, record!.bytes, "the file is kept");
    });
  }

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

  it("a rehydrate asks for its unsealed state to be read ahead as the file opens, and continues exactly; bad arguments are refused", async (t) => {
    if (!host.stateFiles.ok || !host.prefetchStateFile) return t.skip(host.stateFiles.ok ? "this addon has no prefetchStateFile" : host.stateFiles.reason);
    const asked: Array<{ fd: number; bytes: number }> = [];
    const a = await harness({}, undefined, undefined, (h) => Object.create(h, { prefetchStateFile: { value: (fd: number, bytes: number) => { asked.push({ fd, bytes }); h.prefetchStateFile!(fd, bytes); } } }) as ModelHost);
    const b = await harness();
    const text = Array.from({ length: 30 }, (_, i) => `item ${i}: the parcel left the depot`).join("\n");
    const [x, y] = [await a.manager.register({ namespace: "t1", name: "p", contextSize: 4096 }), await b.manager.register({ namespace: "t1", name: "p", contextSize: 4096 })];
    await x.submit(text, greedy(4));
    await y.submit(text, greedy(4));
    const hx = await x.hibernate("test");
    const rx = await x.submit("Where is the parcel?", greedy(8));
    const ry = await y.submit("Where is the parcel?", greedy(8));
    assert.equal(rx.rehydrated, true);
    assert.equal(rx.text, ry.text, "read ahead or not, the same continuation");
    assert.deepEqual(asked.map((c) => c.bytes), [hx.record!.bytes], "asked once, for the whole file");
    assert.ok(asked[0]!.fd >= 0);
    // The addon reads through its own copy of the descriptor: closing ours at once is safe.
    const prefetch = (host.llama as unknown as { _bindings: { AddonContext: { prefetchStateFile: (fd: unknown, bytes: unknown) => boolean } } })._bindings.AddonContext.prefetchStateFile;
    const file = path.join(dir, "prefetch.bin");
    await writeFile(file, Buffer.alloc(3 << 20, 1));
    const fh = await open(file, "r");
    assert.equal(prefetch(fh.fd, 3 << 20), true);
    await fh.close();
    assert.equal(prefetch(1 << 20, 10), false, "a descriptor that is not open is a hint not taken");
    assert.throws(() => prefetch("3", 10), TypeError);
    assert.throws(() => prefetch(-1, 10), RangeError);
    assert.throws(() => prefetch(3, -5), RangeError);
  });

  it("a prefetch fills the page cache with the file, skips one already there, and one asking past the file's end stops there without harm", async (t) => {
    if (!host.stateFiles.ok || !host.prefetchStateFile) return t.skip(host.stateFiles.ok ? "this addon has no prefetchStateFile" : host.stateFiles.reason);
    const file = path.join(dir, "prefetch-cold.bin");
    // Synced: the page cache keeps dirty pages whatever it is told.
    const written = await open(file, "w");
    try { await written.writeFile(Buffer.alloc(40 << 20, 7)); await written.sync(); } finally { await written.close(); }
    const residentPages = () => Number(execFileSync("fincore", ["--raw", "--noheadings", "--bytes", "--output", "RES", file], { encoding: "utf8" }).trim());
    try { residentPages(); } catch { return t.skip("no fincore (util-linux) to see the page cache with"); }
    execFileSync("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);
    assert.ok(residentPages() < 40 << 20, "the file left the page cache");
    const fh = await open(file, "r");
    try {
      // 24 MiB more than the file holds (a file truncated since it was checked): it stops at the end.
      host.prefetchStateFile(fh.fd, 64 << 20);
    } finally { await fh.close(); }
    await eventually("the whole file read into the page cache", async () => residentPages() === 40 << 20 || undefined, 20_000);
    // Cached already: not read again (what this process reads, /proc/self/io, grows by the probes only).
    const readSoFar = async () => Number(/rchar: (\d+)/.exec(await readFile("/proc/self/io", "utf8"))![1]);
    const before = await readSoFar();
    const cached = await open(file, "r");
    try { host.prefetchStateFile(cached.fd, 40 << 20); } finally { await cached.close(); }
    await new Promise((r) => setTimeout(r, 500));
    assert.ok((await readSoFar()) - before < 8 << 20, "a file in the page cache is not read through again");
    // Alive, and the next prefetch still works.
    await writeFile(file, Buffer.alloc(1 << 20, 1));
    const again = await open(file, "r");
    try { host.prefetchStateFile(again.fd, 1 << 20); } finally { await again.close(); }
    assert.equal((await readFile(file)).length, 1 << 20);
  });
});
