// Faults with nothing lost: SIGKILL in the middle of hibernate writes, a full disk, and fuzzed
// request bodies. Prints a summary of faults tried, survived and data lost at the end.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { RuntimeApiError } from "../../contract/runtime-client.js";
import { startRuntime } from "../../testbed/local-runtime.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { smallModel, wideKvModel } from "../../testbed/models.js";

const summary = { tried: 0, survived: 0, dataLost: 0 };
const tmp = tempDir;

after(() => {
  console.log(`\nreliability: ${summary.tried} faults tried, ${summary.survived} survived, ${summary.dataLost} lost data`);
});

describe("faults", () => {
  it("SIGKILL at random points of a hibernate never leaves a state that loads wrong", async () => {
    const dir = await tmp("torpor-kill-");
    const model = await wideKvModel();
    const env = { TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dir, TORPOR_MAX_CONTEXT_SIZE: "8192" };
    const rounds = 12;
    let committed = 0, absent = 0;
    for (let i = 0; i < rounds; i++) {
      summary.tried++;
      const name = `k${i}`;
      const rt = await startRuntime(env);
      await rt.client.register("default", name, { contextSize: 1536 });
      await rt.client.submit("default", name, "x".repeat(1200), { max_tokens: 2 });
      const hib = rt.client.hibernate("default", name).catch(() => undefined);
      // The write of this ~20 MiB state takes tens of ms: spread the kill over it.
      await new Promise((r) => setTimeout(r, (i * 11) % 120));
      await rt.stop("SIGKILL");
      await hib;
      const again = await startRuntime(env);
      try {
        const st = await again.client.register("default", name, { contextSize: 1536 });
        if (st.residency === "Hibernated") {
          // Committed before the kill: it must load and hold the whole conversation.
          const r = await again.client.submit("default", name, "after the crash", { max_tokens: 2 });
          assert.equal(r.torpor.rehydrated, true);
          const h = await again.client.request<{ history: unknown[] }>("GET", `/v1/sessions/default/${name}?history=true`);
          if (h.history.length !== 4) summary.dataLost++;
          assert.equal(h.history.length, 4);
          committed++;
        } else {
          // Not committed: nothing half-written may be taken for state.
          assert.equal(st.residency, "NotCreated");
          absent++;
        }
        summary.survived++;
      } finally { await again.stop(); }
    }
    // Leftovers of interrupted writes are only temp or unreferenced files, which the sweeper removes.
    const { HibernationStore } = await import("../../runtime/storage/hibernation-store.js");
    await new HibernationStore(dir).sweepOrphans(0);
    const left = (await readdir(path.join(dir, "default")).catch(() => [] as string[])).filter((f) => f.endsWith(".tmp"));
    assert.deepEqual(left, []);
    console.log(`kill during hibernate: ${committed} committed before the kill, ${absent} not committed`);
    assert.ok(committed + absent === rounds);
  });

  it("SIGKILL during a checkpoint write leaves the previous checkpoint intact: at most the last turn is lost", async () => {
    const dir = await tmp("torpor-ckpt-kill-");
    const env = { TORPOR_MODEL: await wideKvModel(), TORPOR_HIBERNATION_DIR: dir, TORPOR_MAX_CONTEXT_SIZE: "8192" };
    let newest = 0, previous = 0;
    for (let i = 0; i < 8; i++) {
      summary.tried++;
      const name = `ck${i}`;
      const rt = await startRuntime(env);
      await rt.client.register("default", name, { contextSize: 2048, checkpointAfterTurns: 1 });
      await rt.client.submit("default", name, "x".repeat(800), { max_tokens: 2 });
      await rt.client.rehydrate("default", name); // queued behind the first checkpoint: it is on the volume
      await rt.client.submit("default", name, "y".repeat(400), { max_tokens: 2 });
      // The second checkpoint starts as the turn ends: spread the kill over its write.
      await new Promise((r) => setTimeout(r, (i * 9) % 70));
      await rt.stop("SIGKILL");
      const again = await startRuntime(env);
      try {
        const st = await again.client.register("default", name, { contextSize: 2048, checkpointAfterTurns: 1 });
        assert.equal(st.residency, "Hibernated", "a checkpoint is always there: the first one at least");
        await again.client.submit("default", name, "after the crash", { max_tokens: 2 });
        const h = await again.client.request<{ history: Array<{ type: string; text?: string }> }>("GET", `/v1/sessions/default/${name}?history=true`);
        const users = h.history.filter((m) => m.type === "user").map((m) => m.text?.[0]);
        // Either checkpoint, whole: never a half-written one, never nothing.
        assert.ok(JSON.stringify(users) === JSON.stringify(["x", "y", "a"]) || JSON.stringify(users) === JSON.stringify(["x", "a"]), JSON.stringify(users));
        if (users.length === 3) newest++; else { previous++; summary.dataLost += 0; }
        summary.survived++;
      } finally { await again.stop(); }
    }
    console.log(`# kill during checkpoint: ${newest} had committed the newest checkpoint, ${previous} came back from the previous one (one turn lost, as designed)`);
  });

  for (const sealed of [false, true]) {
    it(`a full disk during ${sealed ? "a sealed" : "an unsealed"} hibernate keeps the session in memory, cleans temp files, reports the error`, async () => {
      summary.tried++;
      const dir = await tmp("torpor-full-");
      // A 1 MiB filesystem for the volume, in a private mount namespace of the runtime process.
      const probe = spawn("unshare", ["-m", "true"]);
      const ok = await new Promise<boolean>((r) => { probe.once("exit", (c) => r(c === 0)); probe.once("error", () => r(false)); });
      assert.ok(ok, "this test needs unshare (root) to mount a small tmpfs");
      // Sealed: in the runtime addon where it is built (the write fails inside llama.cpp's own state writer).
      const sealing: Record<string, string> = sealed ? { TORPOR_SEALING_KEYS: `k1:${randomBytes(32).toString("base64")}`, TORPOR_STAGING_DIR: await tmp("torpor-full-staging-") } : {};
      const rt = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: dir, ...sealing }, { wrap: ["unshare", "-m", "--propagation", "private", "sh", "-c", `mount -t tmpfs -o size=1m tmpfs ${dir} && exec "$@"`, "runtime"] });
      try {
        await rt.client.register("default", "big", { contextSize: 2048 });
        await rt.client.submit("default", "big", "y".repeat(1500), { max_tokens: 2 });
        // Sealed in the addon, the error names the cause; node-llama-cpp's own save only says it failed.
        await assert.rejects(rt.client.hibernate("default", "big"), (e: RuntimeApiError) => e.status === 507 && e.code === "storage_failed" && (!sealed || /No space left/.test(e.message)));
        const st = await rt.client.status("default", "big");
        assert.equal(st.residency, "InMemory");
        assert.equal(st.lastError?.code, "storage_failed");
        const r = await rt.client.submit("default", "big", "still usable?", { max_tokens: 2 });
        assert.equal(r.torpor.rehydrated, false);
        const files = await rt.client.request<{ entries?: string[] }>("GET", "/v1/hibernation-files");
        assert.deepEqual(files, { files: [] });
        summary.survived++;
      } finally { await rt.stop(); }
    });
  }

  it("fuzzed request bodies always get a 4xx JSON error or a 200, never a 5xx", async () => {
    const rt = await startRuntime({ TORPOR_MODEL: await smallModel(), TORPOR_HIBERNATION_DIR: await tmp("torpor-fuzz-"), TORPOR_DEFAULT_MAX_TOKENS: "2" });
    try {
      await rt.client.register("default", "fuzz", { contextSize: 1024 });
      const anyJson = fc.jsonValue({ maxDepth: 3 });
      const message = fc.record({ role: fc.oneof(fc.constantFrom("user", "system", "assistant", "developer"), fc.string()), content: fc.oneof(fc.string({ maxLength: 40 }), anyJson) }, { requiredKeys: [] });
      const chatBody = fc.record({
        messages: fc.oneof(fc.array(message, { maxLength: 4 }), anyJson),
        max_tokens: fc.oneof(fc.integer({ min: -5, max: 3 }), anyJson),
        temperature: fc.oneof(fc.double({ min: -1, max: 3, noNaN: true }), anyJson),
        stream: fc.oneof(fc.boolean(), anyJson),
        seed: fc.oneof(fc.integer(), anyJson),
      }, { requiredKeys: [] });
      const raw = fc.oneof(chatBody.map((b) => JSON.stringify(b)), fc.string({ maxLength: 60 }), anyJson.map((j) => JSON.stringify(j)));
      const route = fc.constantFrom("/v1/sessions/default/fuzz/chat/completions", "/v1/sessions/default/fuzz/submit", "/v1/sessions/default/fuzz", "/v1/sessions/default/Bad..Name/submit");
      const method = fc.constantFrom("POST", "PUT");
      await fc.assert(fc.asyncProperty(route, method, raw, async (r, m, body) => {
        summary.tried++;
        const res = await rt.client.raw(m, r, body, { "content-type": "application/json" });
        const text = await res.text();
        assert.ok(res.status < 500, `${m} ${r} ${body.slice(0, 200)} -> ${res.status} ${text.slice(0, 200)}`);
        if (res.status >= 400) {
          const j = JSON.parse(text) as { error: { code: string; message: string } };
          assert.ok(j.error.code && j.error.message);
        }
        summary.survived++;
      }), { numRuns: 150 });
      const health = await fetch(`${rt.url}/healthz`);
      assert.equal(health.status, 200);
    } finally { await rt.stop(); }
  });
});
