// The runtime as a real process: HTTP API, auth, refusal of bad state files, a second process
// rehydrating from the same folder, memory really freed, and SIGTERM hibernating everything.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readdir, readFile, stat, symlink, truncate, writeFile, open } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { RuntimeApiError, RuntimeClient } from "../../contract/runtime-client.js";
import { otherModel, smallModel, wideKvModel } from "../../testbed/models.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { startRuntime, TEST_TOKEN, type RuntimeProcess } from "../../testbed/local-runtime.js";

const tmp = tempDir;

async function rejectsWith(p: Promise<unknown>, status: number, code: string, reason?: string): Promise<RuntimeApiError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof RuntimeApiError, `expected RuntimeApiError, got ${String(e)}`);
    assert.equal(e.status, status, e.message);
    assert.equal(e.code, code, e.message);
    if (reason) assert.equal(e.details?.reason, reason, e.message);
    return e;
  }
  assert.fail(`expected ${status} ${code}`);
}

describe("runtime process", () => {
  let dir: string;
  let rt: RuntimeProcess;
  let c: RuntimeClient;

  before(async () => {
    dir = await tmp("torpor-rt-");
    rt = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir });
    c = rt.client;
  });
  after(async () => { await rt?.stop(); });

  it("refuses calls without the runtime token, but serves health and metrics", async () => {
    for (const auth of [undefined, "Bearer wrong-token-xxxxxxxxxxxxxx", "Basic abc"]) {
      const r = await fetch(`${rt.url}/v1/sessions`, { headers: auth ? { authorization: auth } : {} });
      assert.equal(r.status, 401);
      assert.equal(((await r.json()) as { error: { code: string } }).error.code, "unauthorized");
    }
    assert.equal((await fetch(`${rt.url}/healthz`)).status, 200);
    const metrics = await (await fetch(`${rt.url}/metrics`)).text();
    assert.match(metrics, /# TYPE torpor_runtime_hibernate_duration_seconds histogram/);
    assert.match(metrics, /torpor_runtime_rehydrate_duration_seconds_bucket/);
    assert.match(metrics, /torpor_runtime_sessions\{residency="NotCreated"\}/);
  });

  it("answers bad requests with 4xx JSON naming the problem", async () => {
    await c.register("default", "v");
    const cases: Array<[unknown, number, RegExp]> = [
      ["{not json", 400, /not valid JSON/],
      [{}, 400, /^messages/],
      [{ messages: [] }, 400, /^messages: must be a non-empty array/],
      [{ messages: [{ role: "robot", content: "x" }] }, 400, /messages\[0\]\.role/],
      [{ messages: [{ role: "user", content: "x" }], max_tokens: -1 }, 400, /^max_tokens/],
      [{ messages: [{ role: "user", content: "x" }], temperature: "hot" }, 400, /^temperature/],
      [{ messages: [{ role: "assistant", content: "x" }] }, 400, /last message/],
      [{ messages: [{ role: "user", content: "x".repeat(2 << 20) }] }, 413, /exceeds the limit/],
    ];
    for (const [body, status, message] of cases) {
      const r = await c.raw("POST", "/v1/sessions/default/v/chat/completions", typeof body === "string" ? body : JSON.stringify(body));
      assert.equal(r.status, status, JSON.stringify(body).slice(0, 80));
      const j = (await r.json()) as { error: { message: string } };
      assert.match(j.error.message, message);
    }
    await rejectsWith(c.submit("default", "unknown-session", "hi"), 404, "session_not_found");
    await rejectsWith(c.register("default", "Bad_Name"), 400, "bad_request");
    await rejectsWith(c.register("default", "n".repeat(201)), 400, "bad_request");
    await rejectsWith(c.register("default", "ctx", { contextSize: 10 }), 400, "bad_request");
    await rejectsWith(c.register("default", "ctx", { lastActivity: "yesterday" }), 400, "bad_request");
    for (const q of ["ifRoom=yes", "ifActive=1"]) {
      const r = await c.raw("POST", `/v1/sessions/default/v/rehydrate?${q}`, "");
      assert.equal(r.status, 400, q);
      assert.match(((await r.json()) as { error: { message: string } }).error.message, /true or false/);
    }
  });

  it("refuses hibernation paths that escape the namespace folder", async () => {
    for (const p of ["../other", "a/../../b", "/etc", "a//b", ".hidden"]) {
      await rejectsWith(c.register("default", `esc-${Math.random().toString(36).slice(2, 8)}`, { path: p }), 400, "invalid_path");
    }
    // A symlink planted inside the volume must not lead outside it.
    const outside = await tmp("torpor-outside-");
    await c.register("default", "sym-setup", { path: "tenant" });
    await symlink(outside, path.join(dir, "default", "evil"));
    await rejectsWith(c.register("default", "sym", { path: "evil" }), 400, "invalid_path");
    await rejectsWith(c.register("default", "sym2", { path: "evil/deeper" }), 400, "invalid_path");
    assert.deepEqual(await readdir(outside), []);
  });

  it("a caller that hangs up mid-answer: a turn it saw none of is not kept, one it saw part of is", async () => {
    await c.register("default", "hung-up", { contextSize: 4096 });
    await c.submit("default", "hung-up", "first", { max_tokens: 2 });
    const idle = async () => { for (let i = 0; i < 200; i++) { const st = await c.status("default", "hung-up"); if (st.phase === "Idle" && st.queued === 0) return st; await new Promise((r) => setTimeout(r, 50)); } assert.fail("still generating"); };
    const post = (body: object, signal: AbortSignal) => fetch(`${rt.url}/v1/sessions/default/hung-up/submit`, {
      method: "POST", body: JSON.stringify(body), signal, headers: { "content-type": "application/json", authorization: `Bearer ${TEST_TOKEN}` },
    });
    const quiet = new AbortController();
    const plain = post({ prompt: "a long story, not streamed", max_tokens: 3000 }, quiet.signal).catch(() => undefined);
    // Hung up once the answer is under way (the prompt is about 15 tokens): an abort before the
    // first token is node-llama-cpp's AbortError, which never kept the turn.
    const start = (await c.status("default", "hung-up")).tokenCount;
    for (let i = 0; i < 500 && (await c.status("default", "hung-up")).tokenCount <= start + 40; i++) await new Promise((r) => setTimeout(r, 10));
    quiet.abort();
    await plain;
    assert.equal((await idle()).messages, 2, "the turn whose answer never reached its caller is not in the history");
    const loud = new AbortController();
    const r = await post({ prompt: "a long story, streamed", max_tokens: 3000, stream: true }, loud.signal);
    const reader = r.body!.getReader();
    await reader.read();
    await reader.read();
    loud.abort();
    await reader.cancel().catch(() => undefined);
    assert.equal((await idle()).messages, 4, "the streamed turn's caller saw part of the answer: it is kept");
    // Hung up while the prompt is still read (about 3,000 tokens): not a fault of ours.
    const errors = async (code: string) => Number(/\d+$/.exec((await (await fetch(`${rt.url}/metrics`)).text()).split("\n").find((l) => l.startsWith(`torpor_runtime_errors_total{code="${code}"}`)) ?? "0")?.[0] ?? 0);
    const internalBefore = await errors("internal"), closedBefore = await errors("client_closed");
    const early = new AbortController();
    const reading = post({ prompt: "word ".repeat(600), max_tokens: 50 }, early.signal).catch(() => undefined);
    for (let i = 0; i < 1000 && (await c.status("default", "hung-up")).phase !== "Generating"; i++) await new Promise((r) => setTimeout(r, 2));
    early.abort();
    await reading;
    await idle();
    assert.equal(await errors("internal"), internalBefore, "a caller hanging up is not an internal error");
    assert.equal(await errors("client_closed"), closedBefore + 1);
  });

  it("streams OpenAI chunks and reports a rehydrate in a header", async () => {
    await c.register("default", "stream");
    await c.submit("default", "stream", "hello", { max_tokens: 4 });
    await c.hibernate("default", "stream");
    const r = await c.raw("POST", "/v1/sessions/default/stream/chat/completions", { messages: [{ role: "user", content: "hi" }], stream: true, max_tokens: 6 });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("x-torpor-rehydrated"), "true");
    assert.ok(Number(r.headers.get("x-torpor-rehydrate-ms")) >= 0);
    const text = await r.text();
    const events = text.split("\n\n").filter(Boolean).map((e) => e.replace(/^data: /, ""));
    assert.equal(events.at(-1), "[DONE]");
    const last = JSON.parse(events.at(-2)!) as { choices: Array<{ finish_reason: string }>; usage: { completion_tokens: number } };
    assert.equal(last.choices[0]!.finish_reason, "length");
    assert.equal(last.usage.completion_tokens, 6);
  });

  describe("bad state files", () => {
    async function hibernated(name: string): Promise<{ manifest: string; state: string }> {
      await c.register("default", name);
      await c.submit("default", name, "remember this", { max_tokens: 4 });
      const out = await c.hibernate("default", name);
      return { manifest: out.record!.manifestFile, state: out.record!.stateFile };
    }

    it("refuses a truncated state file, keeps it, and keeps serving", async () => {
      const f = await hibernated("truncated");
      await truncate(f.state, 1000);
      await rejectsWith(c.submit("default", "truncated", "hi"), 422, "state_rejected", "truncated");
      assert.equal((await readFile(f.state)).length, 1000, "file kept for inspection");
      const st = await c.status("default", "truncated");
      assert.equal(st.residency, "Hibernated");
      assert.equal(st.lastError?.reason, "truncated");
      await c.register("default", "bystander");
      assert.equal((await c.submit("default", "bystander", "still alive?", { max_tokens: 2 })).usage.completion_tokens, 2);
    });

    it("checks a restored state as it loads (runtime addon) or beside the next prompt's evaluation: a state that loads but fails its check answers 422 (streaming too), sends nothing, keeps the file and stays Hibernated", async () => {
      // Damage deep in the KV cells: llama.cpp loads it, only the checksum can tell.
      const f = await hibernated("late-corrupt");
      const size = (await stat(f.state)).size;
      const fh = await open(f.state, "r+");
      await fh.write(Buffer.from([0xde, 0xad, 0xbe, 0xef]), 0, 4, size - 4096);
      await fh.close();
      await rejectsWith(c.submit("default", "late-corrupt", "hi"), 422, "state_rejected", "checksum_mismatch");
      assert.equal((await c.status("default", "late-corrupt")).residency, "Hibernated");
      assert.deepEqual(await Promise.all([stat(f.manifest), stat(f.state)]).then((x) => x.length), 2, "the refused files are kept");
      const streamed = await c.raw("POST", "/v1/sessions/default/late-corrupt/chat/completions", { messages: [{ role: "user", content: "hi" }], stream: true, max_tokens: 8 });
      assert.equal(streamed.status, 422, "no stream was started for a state that failed its check");
      assert.match(await streamed.text(), /checksum_mismatch/);
      assert.ok(!rt.output().includes("rebuilt from its saved history"), "refused, not replayed");
      if (rt.output().includes('"nativeStateIo":true')) {
        assert.ok(!rt.output().includes("failed its integrity check; the turn is discarded"), "checked in the one pass that loaded it, before any prompt");
      } else {
        assert.match(rt.output(), /failed its integrity check; the turn is discarded/, "llama.cpp loaded it: the check caught it beside the prompt");
      }
      // A good neighbour rehydrates and answers as usual.
      const g = await hibernated("late-good");
      assert.ok(g.state);
      const r = await c.submit("default", "late-good", "again", { max_tokens: 2 });
      assert.equal(r.torpor.rehydrated, true);
      assert.ok(r.usage.prompt_tokens_details.cached_tokens > 0);
    });

    it("refuses a corrupted state file (checksum) and a garbage manifest", async () => {
      const f = await hibernated("corrupt");
      const fh = await open(f.state, "r+");
      await fh.write(Buffer.from([0xde, 0xad, 0xbe, 0xef]), 0, 4, 64);
      await fh.close();
      await rejectsWith(c.submit("default", "corrupt", "hi"), 422, "state_rejected", "checksum_mismatch");
      assert.match((await c.status("default", "corrupt")).lastError!.message, /xxHash64/);
      // New files carry xxHash64 alone (the field the release before this one requires stays, empty).
      // A file of an earlier release carries a SHA-256 alone: it still opens, and is still checked.
      for (const [name, flip] of [["old-release", false], ["old-release-corrupt", true]] as const) {
        const o = await hibernated(name);
        const m = JSON.parse(await readFile(o.manifest, "utf8")) as Record<string, unknown>;
        assert.match(String(m.stateXxh64), /^[0-9a-f]{16}$/);
        assert.equal(m.stateSha256, "");
        delete m.stateXxh64;
        m.stateSha256 = createHash("sha256").update(await readFile(o.state)).digest("hex");
        await writeFile(o.manifest, JSON.stringify(m));
        if (flip) {
          const oh = await open(o.state, "r+");
          await oh.write(Buffer.from([0xde, 0xad, 0xbe, 0xef]), 0, 4, 64);
          await oh.close();
          await rejectsWith(c.submit("default", name, "hi"), 422, "state_rejected", "checksum_mismatch");
          assert.match((await c.status("default", name)).lastError!.message, /SHA-256/);
        } else {
          assert.equal((await c.submit("default", name, "hi", { max_tokens: 2 })).torpor.rehydrated, true);
        }
      }
      const bad = await hibernated("bad-digest");
      const bm = JSON.parse(await readFile(bad.manifest, "utf8")) as Record<string, unknown>;
      await writeFile(bad.manifest, JSON.stringify({ ...bm, stateXxh64: "not-hex" }));
      await rejectsWith(c.submit("default", "bad-digest", "hi"), 422, "state_rejected", "manifest_invalid");
      const badFa = await hibernated("bad-fa");
      const fm = JSON.parse(await readFile(badFa.manifest, "utf8")) as Record<string, unknown>;
      await writeFile(badFa.manifest, JSON.stringify({ ...fm, flashAttention: "yes" }));
      await rejectsWith(c.submit("default", "bad-fa", "hi"), 422, "state_rejected", "manifest_invalid");
      const g = await hibernated("garbage");
      await writeFile(g.manifest, "{\"format\": 42");
      await rejectsWith(c.submit("default", "garbage", "hi"), 422, "state_rejected", "manifest_invalid");
      assert.equal((await fetch(`${rt.url}/healthz`)).status, 200);
    });

    it("a session whose pool's model changed is rebuilt from its saved history: the old state is never loaded, the conversation goes on", async () => {
      const shared = await tmp("torpor-foreign-");
      const other = await startRuntime({ TORPOR_MODEL: await otherModel(), TORPOR_HIBERNATION_DIR: shared });
      try {
        await other.client.register("default", "foreign");
        await other.client.submit("default", "foreign", "written by another model", { max_tokens: 4 });
        await other.client.hibernate("default", "foreign");
        await other.client.register("default", "donor");
        await other.client.submit("default", "donor", "someone else's conversation", { max_tokens: 4 });
        await other.client.hibernate("default", "donor");
      } finally { await other.stop(); }
      // Another session's file, copied under a third name: foreign, whatever the model.
      await writeFile(path.join(shared, "default", "thief.torpor.json"), await readFile(path.join(shared, "default", "donor.torpor.json")));
      const mine = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: shared });
      try {
        const st = await mine.client.register("default", "foreign");
        assert.equal(st.residency, "Hibernated");
        const r = await mine.client.submit("default", "foreign", "hi", { max_tokens: 2 });
        assert.equal(r.torpor.rehydrated, true);
        assert.equal(r.usage.prompt_tokens_details.cached_tokens, 0, "nothing of the other model's KV cache was used");
        const after = await mine.client.request<{ history: Array<{ type: string; text?: string }>; lastRehydrate?: { replayed?: string } }>("GET", "/v1/sessions/default/foreign?history=true");
        assert.equal(after.lastRehydrate?.replayed, "model_changed");
        assert.deepEqual(after.history.filter((m) => m.type === "user").map((m) => m.text), ["written by another model", "hi"]);
        assert.deepEqual((await mine.client.files()).files.map((f) => f.name).sort(), ["donor", "donor"], "the old file is gone once its history is in memory");
        await mine.client.register("default", "thief");
        await rejectsWith(mine.client.submit("default", "thief", "hi"), 422, "state_rejected", "manifest_invalid");
        await mine.client.register("default", "fine");
        await mine.client.submit("default", "fine", "ok", { max_tokens: 2 });
      } finally { await mine.stop(); }
    });
  });
});

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

describe("across processes", () => {
  it("a second runtime on the same folder rehydrates and continues exactly", async () => {
    const dir = await tmp("torpor-x-");
    const model = await smallModel();
    const reference = await startRuntime({ TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: await tmp("torpor-ref-") });
    const first = await startRuntime({ TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dir });
    try {
      for (const c of [reference.client, first.client]) {
        await c.register("team", "moving", { systemPrompt: "You are a test." });
      }
      const r1 = await first.client.submit("team", "moving", "First question", { max_tokens: 12 });
      const ref1 = await reference.client.submit("team", "moving", "First question", { max_tokens: 12 });
      assert.equal(r1.reply, ref1.reply);
      await first.client.hibernate("team", "moving");
    } finally { await first.stop(); }
    const second = await startRuntime({ TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dir });
    try {
      const st = await second.client.register("team", "moving", { systemPrompt: "You are a test." });
      assert.equal(st.residency, "Hibernated");
      const r2 = await second.client.submit("team", "moving", "Second question", { max_tokens: 12 });
      const ref2 = await reference.client.submit("team", "moving", "Second question", { max_tokens: 12 });
      assert.equal(r2.torpor.rehydrated, true);
      assert.equal(r2.reply, ref2.reply);
      assert.equal((await second.client.files()).files.length, 0);
    } finally {
      await second.stop();
      await reference.stop();
    }
  });

  it("SIGTERM finishes generations, hibernates resident sessions, then exits 0", async () => {
    const dir = await tmp("torpor-term-");
    const rt = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir });
    await rt.client.register("default", "a");
    await rt.client.register("default", "b");
    await rt.client.register("default", "lazy");
    await rt.client.submit("default", "a", "hello", { max_tokens: 2 });
    const inflight = rt.client.submit("default", "b", "a long answer please", { max_tokens: 150 });
    // SIGTERM only once the generation is really under way (not merely sent).
    for (let i = 0; i < 200 && (await rt.client.status("default", "b")).phase !== "Generating"; i++) await new Promise((r) => setTimeout(r, 10));
    const code = await rt.stop("SIGTERM");
    const r = await inflight;
    assert.equal(r.usage.completion_tokens, 150, "in-flight generation was not finished");
    assert.equal(code, 0, rt.output());
    assert.deepEqual((await readdir(path.join(dir, "default"))).filter((f) => f.endsWith(".torpor.json")).sort(), ["a.torpor.json", "b.torpor.json"]);
  });

  it("refuses to start on the CPU when GPU layers were asked for and no GPU loaded, unless told the CPU will do", async () => {
    const dir = await tmp("torpor-nogpu-");
    const env = { TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir, TORPOR_GPU_LAYERS: "max", TORPOR_GPU: "auto" };
    await assert.rejects(startRuntime(env), /runtime exited with 1:[\s\S]*no GPU backend loaded[\s\S]*TORPOR_ALLOW_CPU_FALLBACK/);
    const rt = await startRuntime({ ...env, TORPOR_ALLOW_CPU_FALLBACK: "true" });
    try {
      assert.match(rt.output(), /running on the CPU/);
    } finally { await rt.stop(); }
  });

  it("takes TORPOR_FLASH_ATTENTION: on is used, logged and recorded, and its state rehydrates on a runtime left at auto; a bad value stops the start with the reason", async () => {
    const dir = await tmp("torpor-fa-");
    await assert.rejects(startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir, TORPOR_FLASH_ATTENTION: "fast" }), /TORPOR_FLASH_ATTENTION must be auto, on or off, got \\"fast/);
    const rt = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir, TORPOR_FLASH_ATTENTION: "on" });
    try {
      assert.match(rt.output(), /"flashAttention":true[^\n]*model loaded/);
      await rt.client.register("default", "fa", {});
      await rt.client.submit("default", "fa", "hello there", { max_tokens: 4 });
      await rt.client.hibernate("default", "fa");
      const manifest = JSON.parse(await readFile(path.join(dir, "default", "fa.torpor.json"), "utf8")) as { flashAttention?: boolean };
      assert.equal(manifest.flashAttention, true);
    } finally { await rt.stop(); }
    const next = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir });
    try {
      assert.match(next.output(), /"flashAttention":"auto"[^\n]*model loaded/);
      await next.client.register("default", "fa", {});
      const r = await next.client.submit("default", "fa", "and again", { max_tokens: 4 });
      assert.equal(r.torpor.rehydrated, true);
      assert.ok(r.usage.prompt_tokens_details.cached_tokens > 0, "restored, not replayed");
      assert.doesNotMatch(next.output(), /rebuilt from its saved history/);
    } finally { await next.stop(); }
  });

  it("frees at least 90% of the state size from RSS on every hibernate once the pool's grace passes, without creeping across cycles", async () => {
    // Measurement: VmRSS of the runtime process from /proc, polled after the hibernate call returns
    // until the emptied context's grace (1 s here) has passed, compared with the size of the state
    // file written (the KV cells in use). The runtime is started the way the chart starts it
    // (runtime/model/process-tuning.ts); untuned glibc creeps ~4 MiB a cycle.
    const rt = await startRuntime({ TORPOR_MODEL: await wideKvModel(), TORPOR_HIBERNATION_DIR: await tmp("torpor-rss-"), TORPOR_MAX_CONTEXT_SIZE: "16384", TORPOR_CONTEXT_GRACE_MS: "1000" });
    try {
      await rt.client.register("default", "big", { contextSize: 4608 });
      const words = Array.from({ length: 4200 }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
      await rt.client.submit("default", "big", words, { max_tokens: 1 });
      const hibernatedRss: number[] = [];
      for (let cycle = 0; cycle < 5; cycle++) {
        if (cycle > 0) assert.equal((await rt.client.submit("default", "big", "x", { max_tokens: 1 })).torpor.rehydrated, true);
        const rssBefore = await rt.rssBytes();
        const out = await rt.client.hibernate("default", "big");
        const state = out.record!.bytes;
        assert.ok(state >= 50 * 1024 * 1024, `state is only ${mib(state)} MiB`);
        let rssAfter = await rt.rssBytes();
        for (const deadline = Date.now() + 10_000; rssBefore - rssAfter < 0.9 * state && Date.now() < deadline;) {
          await new Promise((r) => setTimeout(r, 100));
          rssAfter = await rt.rssBytes();
        }
        hibernatedRss.push(rssAfter);
        const freed = rssBefore - rssAfter;
        assert.ok(freed >= 0.9 * state, `cycle ${cycle}: freed ${mib(freed)} MiB of RSS for a ${mib(state)} MiB state, 10 s after the hibernate`);
        if (cycle === 4) {
          const creep = rssAfter - hibernatedRss[0]!;
          assert.ok(creep <= 0.25 * state, `hibernated RSS grew by ${mib(creep)} MiB over ${cycle} cycles (${hibernatedRss.map(mib).join(", ")} MiB)`);
        }
      }
    } finally { await rt.stop(); }
  });

  it("keeps a hibernated session's emptied context for the grace: a rehydrate within it allocates nothing, and the memory goes after it", async () => {
    const rt = await startRuntime({ TORPOR_MODEL: await wideKvModel(), TORPOR_HIBERNATION_DIR: await tmp("torpor-grace-"), TORPOR_MAX_CONTEXT_SIZE: "16384", TORPOR_CONTEXT_GRACE_MS: "4000" });
    const metric = async (name: string) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(await (await fetch(`${rt.url}/metrics`)).text())?.[1] ?? NaN);
    const contexts = async (state: string) => Number(new RegExp(`^torpor_runtime_contexts\\{state="${state}"\\} (\\S+)$`, "m").exec(await (await fetch(`${rt.url}/metrics`)).text())?.[1] ?? 0);
    try {
      await rt.client.register("default", "g", { contextSize: 4608 });
      const first = await rt.client.submit("default", "g", "one two three four five six seven eight nine ten", { max_tokens: 4, temperature: 0 });
      await rt.client.hibernate("default", "g");
      assert.equal(await contexts("idle"), 1, "the emptied context is kept for the grace");
      const again = await rt.client.submit("default", "g", "eleven", { max_tokens: 4, temperature: 0 });
      assert.equal(again.torpor.rehydrated, true);
      assert.ok(again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens, "the restored tokens are reused");
      assert.equal(await metric("torpor_runtime_context_reuses_total"), 1, "the rehydrate took the kept context");
      const rssResident = await rt.rssBytes();
      await rt.client.hibernate("default", "g");
      for (const deadline = Date.now() + 15_000; await contexts("idle") > 0 && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 200));
      assert.equal(await contexts("idle"), 0, "the context is freed once the grace has passed");
      assert.ok(await rt.rssBytes() < rssResident, "RSS went down after the grace");
    } finally { await rt.stop(); }
  });
});
