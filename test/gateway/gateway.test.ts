// The gateway on the testbed with the official openai client, real RBAC (TokenReview and
// SubjectAccessReview against the real API server), the operator and runtime pods.
import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import OpenAI from "openai";
import type { InferenceSession } from "../../contract/inference-session.js";
import { freePort } from "../../testbed/local-runtime.js";
import { eventually, HIB_HOST_PATH, installTorpor, session, startEntryPoint, type NodeProcess } from "../../testbed/torpor-on-testbed.js";
import { sharedFolder, startTestbed, type Testbed } from "../../testbed/testbed.js";

const RBAC = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: alice, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bob, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: torpor-chat, namespace: default}
rules:
- apiGroups: [torpor.dev]
  resources: [inferencesessions, inferencesessions/chat]
  verbs: [get, create]
- apiGroups: [torpor.dev]
  resources: [inferencesessions/messages]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-chat, namespace: default}
subjects: [{kind: ServiceAccount, name: alice, namespace: default}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: torpor-chat}
`;

describe("gateway on the testbed", () => {
  let tb: Testbed;
  let operator: NodeProcess;
  let gateway: NodeProcess;
  let gw: string;
  let alice: string;
  let bob: string;
  const get = async (name: string) => JSON.parse(await tb.kubectl(["get", "isess", name, "-o", "json"])) as InferenceSession;
  const client = (name: string, token = alice) => new OpenAI({ apiKey: token, baseURL: `${gw}/v1/sessions/default/${name}`, maxRetries: 0, timeout: 120_000 });
  const hibernate = async (name: string) => {
    await tb.kubectl(["patch", "isess", name, "--type=merge", "-p", '{"spec":{"residency":"Hibernated"}}']);
    await tb.kubectl(["wait", "--for=condition=Hibernated", `isess/${name}`, "--timeout=60s"]);
  };

  before(async () => {
    tb = await startTestbed();
    await installTorpor(tb);
    await tb.kubectl(["apply", "-f", "-"], RBAC);
    operator = await startEntryPoint("operator/main.js", tb, { TORPOR_OPERATOR_PORT: String(await freePort()), POD_NAME: "operator-0", TORPOR_RESYNC_SECONDS: "5" });
    const port = await freePort();
    gateway = await startEntryPoint("gateway/main.js", tb, { TORPOR_GATEWAY_PORT: String(port), TORPOR_GATEWAY_WAKE_TIMEOUT_SECONDS: "60" });
    gw = `http://127.0.0.1:${port}`;
    await eventually("gateway", async () => ((await fetch(`${gw}/healthz`)).ok ? true : undefined), 20_000);
    alice = (await tb.kubectl(["create", "token", "alice", "--audience", "torpor"])).trim();
    bob = (await tb.kubectl(["create", "token", "bob", "--audience", "torpor"])).trim();
  });
  after(async () => {
    await gateway?.stop();
    await operator?.stop();
    await tb?.stop();
  });

  it("streams with the openai client, and the same call wakes a hibernated session", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("oa"));
    const oa = client("oa");
    const stream = await oa.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello!" }], stream: true, max_tokens: 8 });
    let text = "";
    let chunks = 0;
    for await (const chunk of stream) { text += chunk.choices[0]?.delta?.content ?? ""; chunks++; }
    assert.ok(chunks >= 8, `expected streamed chunks, got ${chunks}`);
    assert.ok(text.length > 0);
    // What else an OpenAI client does at its base URL: list the model, ask for the usage last.
    assert.deepEqual((await oa.models.list()).data.map((m) => m.id), ["tiny"]);
    assert.equal((await oa.models.retrieve("tiny")).owned_by, "torpor");
    const counted = await oa.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello!" }], stream: true, stream_options: { include_usage: true }, max_tokens: 4 });
    const all = [];
    for await (const chunk of counted) all.push(chunk);
    assert.deepEqual(all.at(-1)!.choices, [], "the usage chunk has no choices");
    assert.equal(all.at(-1)!.usage!.completion_tokens, 4);
    assert.ok(all.slice(0, -1).every((c) => !c.usage), "only the last chunk carries the usage");

    await hibernate("oa");
    const { data, response } = await oa.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello!" }, { role: "assistant", content: text }, { role: "user", content: "More?" }], max_tokens: 8 }).withResponse();
    assert.equal(response.headers.get("x-torpor-rehydrated"), "true");
    assert.ok(Number(response.headers.get("x-torpor-rehydrate-ms")) >= 0);
    assert.ok(data.choices[0]!.message.content!.length > 0);
    assert.ok(data.usage!.prompt_tokens > 0);

    const s = await get("oa");
    assert.equal(s.spec.residency, "InMemory", "the wake is visible in the spec");
    const managers = JSON.parse(await tb.kubectl(["get", "isess", "oa", "-o", "json", "--show-managed-fields"])) as { metadata: { managedFields: Array<{ manager: string }> } };
    assert.ok(managers.metadata.managedFields.some((f) => f.manager === "torpor-gateway"));
    const events = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=oa", "-o", "jsonpath={.items[*].reason}"]);
    assert.match(events, /Woken/);
    // And a later patch to Hibernated works again.
    await hibernate("oa");
  });

  it("20 concurrent requests to a hibernated session cause one rehydrate and 20 answers", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("crowd"));
    await client("crowd").chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "warm up" }], max_tokens: 2 });
    await hibernate("crowd");
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      client("crowd").chat.completions.create({ model: "tiny", messages: [{ role: "user", content: `question ${i}` }], max_tokens: 2 }).withResponse()));
    assert.equal(results.length, 20);
    assert.ok(results.every((r) => r.data.choices.length === 1));
    assert.equal(results.filter((r) => r.response.headers.get("x-torpor-rehydrated") === "true").length, 1);
  });

  it("a refused state is answered 422 on every request, not held, and serves again once its file is repaired", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("mended"));
    const c = client("mended");
    const ask = (content: string) => c.chat.completions.create({ model: "tiny", messages: [{ role: "user", content }], max_tokens: 4 }).withResponse();
    await ask("remember this");
    await hibernate("mended");
    const dir = path.join(sharedFolder(tb, HIB_HOST_PATH), "default");
    const state = path.join(dir, (await readdir(dir)).find((f) => f.startsWith("mended.") && f.endsWith(".state"))!);
    const original = await readFile(state);
    const damaged = Buffer.from(original);
    damaged[damaged.length >> 1] = damaged[damaged.length >> 1]! ^ 0x01;
    await writeFile(state, damaged);
    // The first request wakes the session and is refused; the next ones must reach the runtime
    // too (they were held for the wake bound and answered 503 "retry shortly", for good).
    for (const attempt of ["first", "second", "third"]) {
      await assert.rejects(ask(`${attempt} try`), (e: { status?: number; error?: unknown }) => {
        assert.equal(e.status, 422, `${attempt} request: ${JSON.stringify(e.error)}`);
        assert.match(JSON.stringify(e.error), /state_rejected/);
        return true;
      });
    }
    assert.deepEqual(await readFile(state), damaged, "the refused file is kept as it was");
    await writeFile(state, original);
    const { response } = await ask("and now?");
    assert.equal(response.headers.get("x-torpor-rehydrated"), "true");
  });

  it("refuses callers without the grant (403), unknown tokens (401), unknown sessions (404), bad bodies (400)", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("guarded"));
    const post = (path: string, token: string | undefined, body: unknown) => fetch(`${gw}/v1/sessions/default/${path}`, {
      method: "POST", headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: typeof body === "string" ? body : JSON.stringify(body),
    });
    const ok = { messages: [{ role: "user", content: "hi" }], max_tokens: 2 };
    const expect = async (r: Response, status: number, code: string, message?: RegExp) => {
      assert.equal(r.status, status);
      const j = (await r.json()) as { error: { code: string; message: string } };
      assert.equal(j.error.code, code);
      if (message) assert.match(j.error.message, message);
    };
    await expect(await post("guarded/chat/completions", bob, ok), 403, "forbidden", /bob.*may not create inferencesessions\/chat/);
    await expect(await post("guarded/chat/completions", "not-a-token", ok), 401, "unauthorized");
    await expect(await post("guarded/chat/completions", undefined, ok), 401, "unauthorized");
    await expect(await post("nope/chat/completions", alice, ok), 404, "session_not_found");
    // A model no pool serves (a typo): told at once, not after the wake timeout.
    await tb.kubectl(["apply", "-f", "-"], session("unserved").replace("model: tiny", "model: tiny-typo").replace("spec:", "spec:\n  residency: Hibernated"));
    await eventually("Ready says NoRuntimePool", async () => (await get("unserved")).status?.conditions?.find((c) => c.type === "Ready")?.reason === "NoRuntimePool" ? true : undefined, 30_000);
    await expect(await post("unserved/chat/completions", alice, ok), 404, "model_not_found", /no runtime pool serves model "tiny-typo" \(the pools here serve: "tiny"\)/);
    assert.equal((await get("unserved")).spec.residency, "Hibernated", "a request refused anyway wakes nothing");
    // A spec its pool refuses (past the pool's maxContextSize, 32768 here; the CRD allows 131072): also at once.
    await tb.kubectl(["apply", "-f", "-"], session("oversized").replace("contextSize: 1024", "contextSize: 65536"));
    const refused = await eventually("Ready says SpecInvalid", async () => (await get("oversized")).status?.conditions?.find((c) => c.type === "Ready" && c.reason === "SpecInvalid"), 30_000);
    assert.match(refused.message, /refused the session: contextSize.*change the InferenceSession's spec/);
    // Not asked again while nothing changed (every ask took a new placement epoch and a Warning); the operator resyncs every 5 s here.
    const epoch = (await get("oversized")).status?.epoch;
    await new Promise((r) => setTimeout(r, 7000));
    assert.equal((await get("oversized")).status?.epoch, epoch, "the same spec is not sent to the same pod again");
    await expect(await post("oversized/submit", alice, { prompt: "hello", max_tokens: 2 }), 409, "session_invalid", /oversized cannot be served: .*contextSize/);
    await tb.kubectl(["patch", "isess", "oversized", "--type=merge", "-p", '{"spec":{"contextSize":1024}}']);
    await eventually("placed once fixed", async () => (await get("oversized")).status?.conditions?.find((c) => c.type === "Ready")?.status === "True" ? true : undefined, 30_000);
    assert.equal((await post("oversized/submit", alice, { prompt: "hello", max_tokens: 2 })).status, 200);
    // Pending for good (no pool serves its model): gone, so later tests can wait for every session to be idle.
    await tb.kubectl(["delete", "isess", "unserved", "oversized", "--wait=true", "--timeout=60s"]);
    await expect(await post("guarded/chat/completions", alice, { messages: "hi" }), 400, "bad_request", /^messages/);
    await expect(await post("guarded/chat/completions", alice, "{oops"), 400, "bad_request", /not valid JSON/);
    await expect(await post("guarded/submit", alice, { prompt: 5 }), 400, "bad_request", /^prompt/);
    await expect(await post("guarded/chat/completions", alice, { ...ok, logit_bias: { "99999999": 1 } }), 400, "bad_request", /^logit_bias: token 99999999 is not in the model's vocabulary/);
    await expect(await fetch(`${gw}/v1/sessions/default/guarded/models`, { headers: { authorization: `Bearer ${bob}` } }), 403, "forbidden");
    await expect(await fetch(`${gw}/v1/sessions/default/guarded/models/gpt-4o`, { headers: { authorization: `Bearer ${alice}` } }), 404, "model_not_found", /serves the model "tiny"/);
    await expect(await post("guarded/chat/completions", alice, { ...ok, messages: [{ role: "user", content: "x".repeat(2 << 20) }] }), 413, "payload_too_large");
    const r = await post("guarded/submit", alice, { prompt: "hello", max_tokens: 2 });
    assert.equal(r.status, 200);
    const st = await fetch(`${gw}/v1/sessions/default/guarded`, { headers: { authorization: `Bearer ${alice}` } });
    assert.equal(st.status, 200);
    const body = (await st.json()) as { residency: string; model: string };
    assert.equal(body.model, "tiny");
    // A token for the Kubernetes API itself (no audience of ours) is refused.
    const apiToken = (await tb.kubectl(["create", "token", "alice"])).trim();
    await expect(await post("guarded/submit", apiToken, { prompt: "hello", max_tokens: 2 }), 401, "unauthorized", /audience torpor/);
  });

  it("a flood of junk tokens gets 429 and leaves other users' cached decisions alone; nothing is parsed before authentication", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("flooded"));
    const post = (token: string, body = JSON.stringify({ prompt: "hi", max_tokens: 1 })) => fetch(`${gw}/v1/sessions/default/flooded/submit`, {
      method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${token}` }, body,
    });
    assert.equal((await post(alice)).status, 200, "alice's decision is cached");
    const codes = new Map<number, number>();
    for (let i = 0; i < 60; i++) {
      const r = await post(`junk-${i}-${Math.random()}`, "{not even json");
      codes.set(r.status, (codes.get(r.status) ?? 0) + 1);
      if (r.status === 429) assert.ok(Number(r.headers.get("retry-after")) >= 1);
      await r.text();
    }
    assert.ok((codes.get(429) ?? 0) > 0, `rate limited: ${JSON.stringify([...codes])}`);
    assert.equal(codes.get(400), undefined, "junk bodies are never parsed for unauthenticated callers");
    assert.equal((await post(alice)).status, 200, "alice still served from her cached decision");
    // A session alice has not asked for yet is a new decision, but her token is known: the
    // flood's empty bucket is not hers to pay (authorised, then 404: no such session).
    const other = await fetch(`${gw}/v1/sessions/default/never-asked-before/submit`, {
      method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${alice}` }, body: JSON.stringify({ prompt: "hi" }),
    });
    assert.equal(other.status, 404, await other.text());
    // The address's bucket refills (5/s); valid tokens give back what they took, so it stays full.
    await new Promise((r) => setTimeout(r, 1500));
  });

  it("gives a session's conversation back to a caller granted inferencesessions/messages, without waking it, also after it moved asleep", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("transcript"));
    const auth = (token: string) => ({ authorization: `Bearer ${token}` });
    const res = await fetch(`${gw}/v1/sessions/default/transcript/submit`, { method: "POST", headers: { ...auth(alice), "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hello there!", max_tokens: 6 }) });
    const reply = ((await res.json()) as { reply: string }).reply;
    const read = async (token = alice) => fetch(`${gw}/v1/sessions/default/transcript/messages`, { headers: auth(token) });
    const expected = [{ role: "system", content: "You are a test." }, { role: "user", content: "Hello there!" }, { role: "assistant", content: reply }];
    assert.deepEqual(await (await read()).json(), { messages: expected, source: "memory" });
    const refused = await read(bob);
    assert.equal(refused.status, 403, "a caller without the grant is refused, and told which");
    assert.match(((await refused.json()) as { error: { message: string } }).error.message, /get inferencesessions\/messages/);
    // Asleep, then its pod goes: the session is registered on the other pod, which has not loaded it.
    await hibernate("transcript");
    const before = await get("transcript");
    await tb.kubectl(["delete", "pod", before.status!.pod!]);
    await eventually("transcript on another pod", async () => { const s = await get("transcript"); return s.status?.pod && s.status.pod !== before.status!.pod && s.status.conditions?.find((c) => c.type === "Ready")?.status === "True" ? s : undefined; }, 60_000);
    const moved = await read();
    assert.equal(moved.status, 200);
    assert.deepEqual(await moved.json(), { messages: expected, source: "volume" }, "read from its manifest on the volume");
    const after = await get("transcript");
    assert.equal(after.spec.residency, "Hibernated", "reading woke nothing");
    assert.equal(after.status?.residency, "Hibernated");
    await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
  });

  it("a graceful delete of the session's runtime pod keeps the conversation, on both routes, whenever the next turn comes", async () => {
    type Usage = { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } | null };
    const submit = async (name: string, prompt: string) => {
      const res = await fetch(`${gw}/v1/sessions/default/${name}/submit`, {
        method: "POST", headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
        body: JSON.stringify({ prompt, max_tokens: 8 }),
      });
      const body = await res.json() as { usage: Usage; error?: unknown };
      assert.equal(res.status, 200, JSON.stringify(body));
      return { usage: body.usage, rehydrated: res.headers.get("x-torpor-rehydrated") === "true" };
    };
    const chats = new Map<string, Array<{ role: "user" | "assistant"; content: string }>>();
    const chat = async (name: string, prompt: string) => {
      const messages = [...(chats.get(name) ?? []), { role: "user" as const, content: prompt }];
      const { data, response } = await client(name).chat.completions.create({ model: "tiny", messages, max_tokens: 8, temperature: 0 }).withResponse();
      chats.set(name, [...messages, { role: "assistant", content: data.choices[0]!.message.content ?? "" }]);
      return { usage: data.usage as Usage, rehydrated: response.headers.get("x-torpor-rehydrated") === "true" };
    };
    const moves: Array<{ route: string; delayMs: number; ms: number; cached: number; prompt: number }> = [];
    for (const [route, turn] of [["submit", submit], ["chat", chat]] as const) {
      // Ten rounds of each quick case (TORPOR_HANDOFF_ROUNDS changes it), one of the slow one.
      const rounds = Number(process.env.TORPOR_HANDOFF_ROUNDS ?? 10);
      for (const [delayMs, round] of [0, 1000].flatMap((d) => Array.from({ length: rounds }, (_, i) => [d, i] as const)).concat([[20_000, 0]])) {
        const name = `handoff-${route}-${delayMs}-${round}`;
        await tb.kubectl(["apply", "-f", "-"], session(name));
        let last = await turn(name, "Remember the number 4711.");
        for (const prompt of ["And the colour teal.", "And the city Lisbon."]) last = await turn(name, prompt);
        const before = await eventually(`${name} InMemory`, async () => { const s = await get(name); return s.status?.residency === "InMemory" ? s : undefined; }, 20_000);
        const deletedAt = Date.now();
        await tb.kubectl(["delete", "pod", before.status!.pod!, "--wait=false"]);
        await new Promise((r) => setTimeout(r, delayMs));
        const t0 = Date.now();
        const next = await turn(name, "What did I ask you to remember?");
        const ms = Date.now() - t0;
        moves.push({ route, delayMs, ms, cached: next.usage.prompt_tokens_details?.cached_tokens ?? 0, prompt: next.usage.prompt_tokens });
        // The turn may have been answered by the old pod before its SIGTERM (see below): the move follows.
        const after = await eventually(`${name} served by another pod`, async () => { const s = await get(name); return s.status?.pod && s.status.pod !== before.status!.pod ? s : undefined; }, 30_000);
        assert.ok((after.status!.epoch ?? 0) > (before.status!.epoch ?? 0), "a new placement epoch");
        assert.ok(next.usage.prompt_tokens > last.usage.prompt_tokens, `history kept: ${next.usage.prompt_tokens} prompt tokens after ${last.usage.prompt_tokens}`);
        assert.ok((next.usage.prompt_tokens_details?.cached_tokens ?? 0) >= last.usage.prompt_tokens, `restored tokens reused: ${JSON.stringify(next.usage)}`);
        // A turn sent the instant the pod is deleted may still be answered by it (before its
        // SIGTERM); then the following one is the first on the new pod. Either way one continues
        // from the committed state, reusing it: rehydrated by that turn, or before it by the
        // operator, which puts a session that moved while in memory back in memory.
        const then = await turn(name, "Thanks.");
        const rehydratedAt = Date.parse((await get(name)).status?.lastRehydrate?.time ?? "");
        assert.ok(next.rehydrated || then.rehydrated || rehydratedAt >= deletedAt, "a turn continued from the state the old pod saved");
        assert.ok(then.usage.prompt_tokens > next.usage.prompt_tokens && (then.usage.prompt_tokens_details?.cached_tokens ?? 0) >= next.usage.prompt_tokens, `history kept: ${JSON.stringify(then.usage)}`);
        assert.ok(ms < 30_000, `answered in ${ms} ms`);
        if (after.status!.liveStateLostAt) assert.fail(`live state lost; operator log:\n${operator.output().split("\n").filter((l) => l.includes(name)).join("\n")}`);
        await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
      }
    }
    const worst = Math.max(...moves.map((m) => m.ms));
    console.log(`# hand-offs: ${moves.length} conversations kept across ${moves.length} graceful runtime pod deletions (2 routes; next turn at 0 s, 1 s, 20 s); slowest answer ${worst} ms; ${moves.map((m) => `${m.cached}/${m.prompt}`).slice(0, 3).join(", ")}... prompt tokens reused`);
  });

  it("fuzzed bodies and headers get 4xx JSON errors or answers, never a 5xx", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("fuzzed"));
    const anyJson = fc.jsonValue({ maxDepth: 3 });
    const body = fc.oneof(
      fc.record({ messages: fc.oneof(fc.array(fc.record({ role: fc.oneof(fc.constantFrom("user", "system", "assistant"), fc.string()), content: fc.oneof(fc.string({ maxLength: 30 }), anyJson) }, { requiredKeys: [] }), { maxLength: 3 }), anyJson), max_tokens: fc.oneof(fc.integer({ min: -2, max: 2 }), anyJson), stream: fc.oneof(fc.boolean(), anyJson), prompt: fc.oneof(fc.string({ maxLength: 20 }), anyJson) }, { requiredKeys: [] }).map((b) => JSON.stringify(b)),
      fc.string({ maxLength: 40 }),
    );
    const auth = fc.oneof(fc.constant(`Bearer ${alice}`), fc.constant(`Bearer ${alice}`), fc.constant(undefined), fc.string({ maxLength: 30 }).map((x) => `Bearer ${x}`), fc.string({ maxLength: 30 }));
    const contentType = fc.constantFrom("application/json", "text/plain", "application/json; charset=utf-16", "application/x-www-form-urlencoded");
    const route = fc.constantFrom("fuzzed/chat/completions", "fuzzed/submit", "missing/submit", "fuzzed");
    await fc.assert(fc.asyncProperty(route, body, auth, contentType, async (r, b, a, ct) => {
      const headers: Record<string, string> = { "content-type": ct };
      if (a !== undefined && /^[\x20-\x7e]*$/.test(a)) headers.authorization = a;
      const res = await fetch(`${gw}/v1/sessions/default/${r}`, { method: r === "fuzzed" ? "GET" : "POST", headers, ...(r === "fuzzed" ? {} : { body: b }) });
      const text = await res.text();
      assert.ok(res.status < 500, `${r} ${ct} ${b.slice(0, 120)} -> ${res.status} ${text.slice(0, 200)}`);
      if (res.status >= 400) assert.ok((JSON.parse(text) as { error: { code: string } }).error.code);
    }), { numRuns: 120 });
  });
  it("a pool whose sessions all sleep scales to zero, and the next openai call brings it back and continues the conversation", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("sleeper"));
    const c = client("sleeper");
    const first = await c.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Remember the word lighthouse." }], max_tokens: 8 });
    const said = first.choices[0]!.message.content!;
    // Every session of the pool to sleep (the earlier tests left some in memory).
    for (const name of (await tb.kubectl(["get", "isess", "-o", "jsonpath={.items[*].metadata.name}"])).split(" ").filter(Boolean)) {
      await tb.kubectl(["patch", "isess", name, "--type=merge", "-p", '{"spec":{"residency":"Hibernated"}}']);
    }
    await eventually("every session out of memory", async () => {
      const all = JSON.parse(await tb.kubectl(["get", "isess", "-o", "json"])) as { items: InferenceSession[] };
      return all.items.every((x) => x.status?.residency !== "InMemory" && x.status?.phase === "Idle") ? true : undefined;
    }, 60_000);
    await tb.kubectl(["annotate", "deployment", "runtime-tiny", "torpor.dev/scale-to-zero-after-seconds=5", "--overwrite"]);
    try {
      await eventually("pool scaled to zero, its pods gone", async () => {
        const replicas = await tb.kubectl(["get", "deployment", "runtime-tiny", "-o", "jsonpath={.spec.replicas}"]);
        const pods = await tb.kubectl(["get", "pods", "-l", "torpor.dev/model=tiny", "-o", "name"]);
        return replicas === "0" && pods.trim() === "" ? true : undefined;
      }, 90_000);
      // Status follows the pods' removal by one reconcile, as `kubectl wait` would see it.
      let ready: { reason?: string } | undefined;
      const asleep = await eventually("Ready says ScaledToZero", async () => {
        const x = await get("sleeper");
        ready = x.status?.conditions?.find((c) => c.type === "Ready");
        return ready?.reason === "ScaledToZero" ? x : undefined;
      }, 20_000).catch((err: unknown) => { throw new Error(`${String(err)}; last Ready: ${JSON.stringify(ready)}`); });
      assert.equal(asleep.status!.residency, "Hibernated");
      // The next request wakes the pool and rehydrates the session on a new pod, within the wake bound.
      const t0 = Date.now();
      const { data, response } = await c.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Remember the word lighthouse." }, { role: "assistant", content: said }, { role: "user", content: "Which word?" }], max_tokens: 8 }).withResponse();
      console.log(`# wake from zero: answered in ${Date.now() - t0} ms, ${data.usage?.prompt_tokens_details?.cached_tokens}/${data.usage?.prompt_tokens} prompt tokens reused`);
      assert.equal(response.headers.get("x-torpor-rehydrated"), "true");
      assert.ok(data.choices[0]!.message.content!.length > 0);
      assert.ok((data.usage!.prompt_tokens_details?.cached_tokens ?? 0) > 0, `the restored conversation was reused: ${JSON.stringify(data.usage)}`);
      assert.equal(await tb.kubectl(["get", "deployment", "runtime-tiny", "-o", "jsonpath={.spec.replicas}"]), "2", "back with the replicas it had");
      const events = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=sleeper", "-o", "jsonpath={.items[*].reason}"]);
      assert.match(events, /PoolWoken/);
      // What the operator did, where `kubectl describe deployment` shows it.
      const poolEvents = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.kind=Deployment,involvedObject.name=runtime-tiny", "-o", "jsonpath={.items[*].reason}"]);
      assert.match(poolEvents, /ScaledToZero/);
      assert.match(poolEvents, /Woken/);
      await eventually("status InMemory again", async () => ((await get("sleeper")).status?.residency === "InMemory" ? true : undefined), 20_000);
    } catch (err) {
      console.log(operator.output().split("\n").filter((l) => /pool|sleeper/.test(l)).slice(-30).join("\n"));
      throw err;
    } finally {
      await tb.kubectl(["annotate", "deployment", "runtime-tiny", "torpor.dev/scale-to-zero-after-seconds-"]);
      await tb.kubectl(["scale", "deployment", "runtime-tiny", "--replicas=2"]);
      await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
    }
  });

  it("a pool scaled to zero by hand answers at once (503 pool_stopped, nothing woken); scaled back up, the same call continues the conversation", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("stopped"));
    const c = client("stopped");
    const messages: Array<{ role: "user" | "assistant"; content: string }> = [{ role: "user", content: "Remember the word harbour." }];
    messages.push({ role: "assistant", content: (await c.chat.completions.create({ model: "tiny", messages, max_tokens: 8 })).choices[0]!.message.content! });
    messages.push({ role: "user", content: "Which word?" });
    await hibernate("stopped");
    await tb.kubectl(["scale", "deployment", "runtime-tiny", "--replicas=0"]); // no scale-to-zero policy on this pool
    try {
      await eventually("its pods gone", async () => ((await tb.kubectl(["get", "pods", "-l", "torpor.dev/model=tiny", "-o", "name"])).trim() === "" ? true : undefined), 90_000);
      const ready = await eventually("Ready says PoolStopped", async () => {
        const r = (await get("stopped")).status?.conditions?.find((x) => x.type === "Ready");
        return r?.reason === "PoolStopped" ? r : undefined;
      }, 30_000);
      assert.equal(ready.status, "False");
      const t0 = Date.now();
      const res = await fetch(`${gw}/v1/sessions/default/stopped/chat/completions`, {
        method: "POST", headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" }, body: JSON.stringify({ messages, max_tokens: 8 }),
      });
      const body = await res.json() as { error: { code: string; message: string } };
      assert.equal(res.status, 503);
      assert.equal(body.error.code, "pool_stopped");
      assert.match(body.error.message, /runtime pool of model "tiny" was scaled to 0 replicas by hand and has no scale-to-zero policy.*scale its Deployment up/);
      assert.ok(Date.now() - t0 < 10_000, `answered at once, not after the 60 s wake bound (${Date.now() - t0} ms)`);
      const after = await get("stopped");
      assert.equal(after.spec.residency, "Hibernated", "a request nothing can serve wakes nothing");
      assert.equal(after.status?.residency, "Hibernated");
    } finally {
      await tb.kubectl(["scale", "deployment", "runtime-tiny", "--replicas=2"]);
      await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
    }
    await eventually("placed again", async () => ((await get("stopped")).status?.conditions?.find((x) => x.type === "Ready")?.status === "True" ? true : undefined), 60_000);
    const { data, response } = await c.chat.completions.create({ model: "tiny", messages, max_tokens: 8 }).withResponse();
    assert.equal(response.headers.get("x-torpor-rehydrated"), "true");
    assert.ok((data.usage!.prompt_tokens_details?.cached_tokens ?? 0) > 0, `the saved conversation was reused: ${JSON.stringify(data.usage)}`);
  });
});
