// The operator on the testbed: real API server and controllers, runtime pods run by the test
// kubelet, the operator as a process with its kubeconfig, driven with kubectl as a user would.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { RuntimeClient } from "../../contract/runtime-client.js";
import type { InferenceSession } from "../../contract/inference-session.js";
import { inferenceSessionCrd } from "../../contract/crd.js";
import { freePort } from "../../testbed/local-runtime.js";
import { eventually, HIB_HOST_PATH, installTorpor, runtimeManifest, session, TOKEN } from "../../testbed/torpor-on-testbed.js";
import { smallModel } from "../../testbed/models.js";
import { DIST, REPO_ROOT } from "../../testbed/paths.js";
import { sharedFolder, startTestbed, type Testbed } from "../../testbed/testbed.js";

describe("operator on the testbed", () => {
  let tb: Testbed;
  let operator: ChildProcess;
  let operatorLog = "";
  const hibDir = () => path.join(sharedFolder(tb, HIB_HOST_PATH), "default");
  const get = async (name: string) => JSON.parse(await tb.kubectl(["get", "isess", name, "-o", "json"])) as InferenceSession;
  const waitPlaced = (name: string) => eventually(`placement of ${name}`, async () => { const s = await get(name); return s.status?.pod ? s : undefined; });
  const runtimeFor = (s: InferenceSession) => new RuntimeClient(`http://${s.status!.podIP}:8080`, TOKEN);
  /** What a user does: kubectl patch the desired residency (and kubectl wait for Hibernated). */
  const setResidency = (name: string, residency: "InMemory" | "Hibernated") =>
    tb.kubectl(["patch", "isess", name, "--type=merge", "-p", JSON.stringify({ spec: { residency } })]);
  const hibernateAndWait = async (name: string) => {
    await setResidency(name, "Hibernated");
    await tb.kubectl(["wait", "--for=condition=Hibernated", `isess/${name}`, "--timeout=60s"]);
  };
  /** A new session with one turn, once its status says InMemory; resolves with its placement. */
  const inMemorySession = async (name: string, prompt = "Hi") => {
    await tb.kubectl(["apply", "-f", "-"], session(name));
    const placed = await waitPlaced(name);
    await runtimeFor(placed).submit("default", name, prompt, { max_tokens: 4 });
    await eventually(`${name} InMemory`, async () => ((await get(name)).status?.residency === "InMemory" ? true : undefined), 20_000);
    return placed;
  };
  /**
   * A session that was in memory when its pod went is rehydrated on its new pod, unless that pod
   * has no room without evicting one of its own (then an Event says it stays hibernated): true
   * when it is back in memory.
   */
  const backInMemoryOrKept = (name: string) => eventually(`${name} back in memory, or kept hibernated`, async () => {
    // Status names the new pod (Hibernated) before the operator rehydrates there: wait for the outcome.
    if ((await get(name)).status?.residency === "InMemory") return true;
    return /KeptHibernated/.test(await tb.kubectl(["get", "events", "--field-selector", `involvedObject.name=${name}`, "-o", "jsonpath={.items[*].reason}"])) ? false : undefined;
  }, 30_000);
  /** SIGKILL, as the OOM killer or a crash does: no chance to hibernate on the way out. */
  const sigkillRuntime = (pod: string) => { for (const p of tb.kubelet.processes("default", pod)) process.kill(-p.pid!, "SIGKILL"); };

  const startOperator = async () => {
    const port = await freePort();
    const p = spawn(process.execPath, [path.join(DIST, "operator", "main.js")], {
      cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, KUBECONFIG: tb.kubeconfig, TORPOR_RUNTIME_TOKEN: TOKEN, TORPOR_OPERATOR_PORT: String(port), TORPOR_HOST: "127.0.0.1", POD_NAMESPACE: "default", POD_NAME: `op-${port}`, TORPOR_RESYNC_SECONDS: "5", TORPOR_SWEEP_SECONDS: "2", TORPOR_SWEEP_MIN_AGE_SECONDS: "1", TORPOR_HIBERNATION_CLAIM: "torpor-hibernation", TORPOR_CLEANUP_IMAGE: "torpor:dev" },
    });
    p.stdout!.on("data", (d: Buffer) => { operatorLog += d.toString(); });
    p.stderr!.on("data", (d: Buffer) => { operatorLog += d.toString(); });
    return p;
  };
  const stopOperator = async (p: ChildProcess, signal: NodeJS.Signals = "SIGTERM") => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill(signal);
    await exited;
  };

  before(async () => {
    tb = await startTestbed();
    await installTorpor(tb);
    operator = await startOperator();
  });
  after(async () => {
    if (operator) await stopOperator(operator);
    await tb?.stop();
  });

  it("refuses invalid manifests with the schema's message", async () => {
    const cases: Array<[string, RegExp]> = [
      [session("bad-residency").replace("contextSize: 1024", "contextSize: 1024\n  residency: Frozen"), /Unsupported value: "Frozen"/],
      [session("bad-context").replace("contextSize: 1024", "contextSize: 10"), /contextSize.*greater than or equal to 256/],
      [session("bad-path", "\n  hibernation: {path: ../other-tenant}"), /must not contain '\.\.'|should match/],
      [session("bad-idle", "\n  hibernation: {idleAfter: soon}"), /idleAfter/],
      [session("no-model").replace("model: tiny", ""), /spec.model: Required value/],
      // Valid for Kubernetes (253), too long for the file names made from it.
      [session("n".repeat(201)), /name must be at most 200 characters/],
    ];
    for (const [manifest, message] of cases) {
      await assert.rejects(tb.kubectl(["apply", "-f", "-"], manifest), (e: Error) => message.test(e.message), manifest);
    }
    await tb.kubectl(["apply", "-f", "-"], session("immutable"));
    await assert.rejects(tb.kubectl(["patch", "isess", "immutable", "--type=merge", "-p", '{"spec":{"model":"other"}}']), /model is immutable/);
    // Adding or removing the path would orphan files just as changing it would.
    await assert.rejects(tb.kubectl(["patch", "isess", "immutable", "--type=merge", "-p", '{"spec":{"hibernation":{"path":"tenant-a"}}}']), /hibernation.path is immutable/);
    await tb.kubectl(["apply", "-f", "-"], session("immutable-path", "\n  hibernation: {path: tenant-a}"));
    await assert.rejects(tb.kubectl(["patch", "isess", "immutable-path", "--type=json", "-p", '[{"op":"remove","path":"/spec/hibernation"}]']), /hibernation.path is immutable/);
    for (const name of ["immutable-path", "immutable"]) {
      await tb.kubectl(["delete", "isess", name, "--wait=true", "--timeout=60s"]).catch(async (err) => {
        const left = await tb.kubectl(["get", "isess", name, "-o", "json"]).catch(() => "gone");
        throw new Error(`${err}\n${left}\n${operatorLog.split("\n").filter((l) => l.includes(name)).slice(-20).join("\n")}`);
      });
    }
  });

  it("apply -> NotCreated; first request -> InMemory; patch -> Hibernated; back; delete", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("chat"));
    const placed = await waitPlaced("chat");
    assert.equal(placed.status!.residency, "NotCreated");
    assert.ok(placed.metadata.finalizers?.includes("torpor.dev/hibernation-files"));
    assert.equal(placed.status!.contextSize, 1024);
    // Without spec.contextSize, the pool's default (the runtime's TORPOR_DEFAULT_CONTEXT_SIZE, 4096 here).
    await tb.kubectl(["apply", "-f", "-"], session("pool-sized").replace("  contextSize: 1024\n", ""));
    assert.equal((await eventually("its context size in status", async () => (await get("pool-sized")).status?.contextSize, 20_000)), 4096);
    assert.equal((await get("pool-sized")).spec.contextSize, undefined, "no default written into the spec");
    // Asked to sleep before its first request: nothing is in memory, so the wait a user scripts returns.
    await setResidency("pool-sized", "Hibernated");
    await tb.kubectl(["wait", "--for=condition=Hibernated", "isess/pool-sized", "--timeout=30s"]);
    assert.equal((await get("pool-sized")).status!.residency, "NotCreated");
    await tb.kubectl(["delete", "isess", "pool-sized", "--wait=false"]);

    const rt = runtimeFor(placed);
    const first = await rt.submit("default", "chat", "Hello!", { max_tokens: 8 });
    assert.equal(first.torpor.created, true);
    const resident = await eventually("InMemory in status", async () => { const s = await get("chat"); return s.status?.residency === "InMemory" ? s : undefined; }, 20_000);
    assert.equal(resident.status!.node, placed.status!.node);

    await hibernateAndWait("chat");
    const hib = await get("chat");
    assert.equal(hib.status!.residency, "Hibernated");
    assert.ok(hib.status!.lastHibernation!.bytes > 0);
    assert.equal(hib.status!.observedGeneration, hib.metadata.generation);
    // Committed under the placement's epoch (the fence), next to its claim.
    assert.ok((await readdir(hibDir())).includes(`chat@e${hib.status!.epoch}.torpor.json`));
    const info = await rt.status("default", "chat");
    assert.equal(info.residency, "Hibernated");
    // The context is really gone from the runtime, not just marked.
    assert.equal((await rt.info()).capacity.resident, 0);

    await setResidency("chat", "InMemory");
    await tb.kubectl(["wait", "--for=condition=Hibernated=false", "isess/chat", "--timeout=60s"]);
    assert.equal((await get("chat")).status!.residency, "InMemory");
    assert.ok(!(await readdir(hibDir())).some((f) => /^chat(@e\d+)?\.torpor\.json$/.test(f)), "the manifest is gone once the session is resident");
    // The state file's blocks are freed just after the answer (runtime/storage/hibernation-store.ts remove).
    await eventually("the restored state file deleted", async () => ((await readdir(hibDir())).some((f) => f.startsWith("chat.")) ? undefined : true), 10_000);

    const events = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=chat", "-o", "jsonpath={.items[*].reason}"]);
    for (const r of ["Placed", "Hibernated", "Rehydrated"]) assert.match(events, new RegExp(r));

    await hibernateAndWait("chat");
    await tb.kubectl(["delete", "isess", "chat", "--wait=true", "--timeout=60s"]);
    assert.ok(!(await readdir(hibDir())).some((f) => f.startsWith("chat.")), "files should be gone after delete");
  });

  it("a spec change on a placed session reaches its runtime: a raised contextSize serves what it refused, a new idle policy hibernates it", async () => {
    const placed = await inMemorySession("respec");
    const rt = runtimeFor(placed);
    const long = "the quick brown fox jumps over the lazy dog ".repeat(30);
    await assert.rejects(rt.submit("default", "respec", long, { max_tokens: 2 }), /context_length_exceeded|holds 1024/);
    await tb.kubectl(["patch", "isess", "respec", "--type=merge", "-p", '{"spec":{"contextSize":4096}}']);
    await eventually("the runtime told the new settings", async () => ((await rt.status("default", "respec")).settings?.includes("4096") ? true : undefined), 20_000);
    const r = await rt.submit("default", "respec", long, { max_tokens: 2 });
    assert.ok(r.usage.prompt_tokens > 1024);
    assert.equal((await eventually("status.contextSize", async () => { const c = (await get("respec")).status?.contextSize; return c === 4096 ? c : undefined; }, 20_000)), 4096);
    assert.match(await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=respec", "-o", "jsonpath={.items[*].message}"]), /context now holds 4096 tokens \(was 1024\)/);
    // Past the pool's maximum (32768 here; the CRD allows 131072): refused in place, said so, served on.
    await tb.kubectl(["patch", "isess", "respec", "--type=merge", "-p", '{"spec":{"contextSize":65536}}']);
    const refused = await eventually("Degraded SpecRefused", async () => (await get("respec")).status?.conditions?.find((c) => c.type === "Degraded" && c.reason === "SpecRefused"), 20_000);
    assert.match(refused.message, /keeps its previous settings.*contextSize/);
    assert.ok((await rt.submit("default", "respec", "still there?", { max_tokens: 2 })).usage.completion_tokens > 0);
    await tb.kubectl(["patch", "isess", "respec", "--type=merge", "-p", '{"spec":{"contextSize":4096}}']);
    await eventually("Degraded cleared", async () => ((await get("respec")).status?.conditions?.find((c) => c.type === "Degraded")?.status === "False" ? true : undefined), 20_000);
    await tb.kubectl(["patch", "isess", "respec", "--type=merge", "-p", '{"spec":{"hibernation":{"idleAfter":"1s"}}}']);
    await tb.kubectl(["wait", "--for=condition=Hibernated", "isess/respec", "--timeout=60s"]);
    const after = await get("respec");
    assert.equal(after.status!.pod, placed.status!.pod, "told in place: not moved");
    assert.equal(after.status!.epoch, placed.status!.epoch, "the same placement: no new epoch");
    await tb.kubectl(["delete", "isess", "respec", "--wait=false"]);
  });

  it("a hibernated session whose pod is deleted rehydrates on another pod with its history", async () => {
    const placed = await inMemorySession("mover", "Remember the number 42.");
    await hibernateAndWait("mover");
    await tb.kubectl(["delete", "pod", placed.status!.pod!, "--wait=true", "--timeout=60s"]);
    const moved = await eventually("re-placement", async () => {
      const s = await get("mover");
      return s.status?.pod && s.status.pod !== placed.status!.pod ? s : undefined;
    }, 90_000);
    assert.equal(moved.status!.residency, "Hibernated");
    const r = await runtimeFor(moved).submit("default", "mover", "What was the number?", { max_tokens: 4 });
    assert.equal(r.torpor.rehydrated, true);
    const st = await runtimeFor(moved).request<{ history: unknown[] }>("GET", "/v1/sessions/default/mover?history=true");
    assert.equal(st.history.length, 5, "system, user, model, user, model");
  });

  it("converges after the operator is killed and restarted mid-transition", async () => {
    await inMemorySession("crashy", "Hi");
    await setResidency("crashy", "Hibernated");
    await stopOperator(operator, "SIGKILL");
    operator = await startOperator();
    await tb.kubectl(["wait", "--for=condition=Hibernated", "isess/crashy", "--timeout=60s"]);
    assert.equal((await get("crashy")).status!.residency, "Hibernated");
  });

  /** Hibernates the session and overwrites 8 bytes of its state file; returns the file's name. */
  const hibernatedAndCorrupted = async (name: string): Promise<string> => {
    await hibernateAndWait(name);
    const stateFile = (await readdir(hibDir())).find((f) => f.startsWith(`${name}.`) && f.endsWith(".state"))!;
    const { open } = await import("node:fs/promises");
    const fh = await open(path.join(hibDir(), stateFile), "r+");
    await fh.write(Buffer.from("garbage!"), 0, 8, 100);
    await fh.close();
    return stateFile;
  };

  it("a corrupted hibernation file: session Degraded with the reason and an Event, file kept, runtime serving", async () => {
    await inMemorySession("damaged", "precious words");
    const stateFile = await hibernatedAndCorrupted("damaged");
    await setResidency("damaged", "InMemory");
    await tb.kubectl(["wait", "--for=condition=Degraded", "isess/damaged", "--timeout=60s"]);
    const s = await get("damaged");
    const degraded = s.status!.conditions!.find((c) => c.type === "Degraded")!;
    assert.equal(degraded.reason, "SealInvalid", "the runtimes seal their files: a flipped byte fails its AEAD tag");
    assert.match(degraded.message, /kept for inspection/);
    assert.equal(s.status!.residency, "Hibernated");
    assert.ok((await readdir(hibDir())).includes(stateFile), "the refused file is kept");
    const events = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=damaged,type=Warning", "-o", "jsonpath={.items[*].reason}"]);
    assert.match(events, /SealInvalid/);
    // The retries back off and the status settles: each failed wake used to count as activity,
    // so every retry changed status and every status write set off the next retry at once.
    const rv = (await get("damaged")).metadata.resourceVersion;
    await new Promise((r) => setTimeout(r, 5000));
    const after = await get("damaged");
    assert.equal(after.metadata.resourceVersion, rv, `status rewritten while Degraded: ${JSON.stringify(after.status)}`);
    await tb.kubectl(["apply", "-f", "-"], session("neighbour"));
    const n = await waitPlaced("neighbour");
    assert.equal((await runtimeFor(n).submit("default", "neighbour", "hello", { max_tokens: 2 })).usage.completion_tokens, 2);
  });

  it("a refused file met by a request, not by the operator: Degraded and a Warning Event, once", async () => {
    const placed = await inMemorySession("damaged-by-request", "precious words");
    await hibernatedAndCorrupted("damaged-by-request");
    // Straight to the runtime, as a request through the gateway reaches it: the operator's own
    // rehydrate (which records its Event) never runs, since spec.residency stays Hibernated.
    await assert.rejects(runtimeFor(placed).submit("default", "damaged-by-request", "hello", { max_tokens: 2 }), /state_rejected|refused/);
    await tb.kubectl(["wait", "--for=condition=Degraded", "isess/damaged-by-request", "--timeout=60s"]);
    const warnings = async () => (await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=damaged-by-request,type=Warning", "-o", "jsonpath={.items[*].count}"])).split(/\s+/).filter(Boolean).map(Number);
    await eventually("a Warning Event", async () => ((await warnings()).length > 0 ? true : undefined), 30_000);
    await new Promise((r) => setTimeout(r, 3000));
    assert.deepEqual(await warnings(), [1], "one Warning Event, not one per reconcile");
  });

  it("a full disk during hibernate: session stays InMemory and serving, StorageFailed in status and an Event", async () => {
    // A second pool whose hibernation volume is a 1 MiB memory-backed emptyDir.
    const deployment = runtimeManifest(await smallModel()).split("---").at(-1)!
      .replaceAll("runtime-tiny", "runtime-full").replaceAll("torpor.dev/model: tiny", "torpor.dev/model: full")
      .replace("replicas: 2", "replicas: 1")
      .replace("{name: hibernation, persistentVolumeClaim: {claimName: torpor-hibernation}}", "{name: hibernation, emptyDir: {medium: Memory, sizeLimit: 1Mi}}");
    await tb.kubectl(["apply", "-f", "-"], deployment);
    await tb.kubectl(["rollout", "status", "deployment/runtime-full", "--timeout=120s"]);
    await tb.kubectl(["apply", "-f", "-"], session("cramped").replace("model: tiny", "model: full").replace("contextSize: 1024", "contextSize: 2048"));
    const placed = await waitPlaced("cramped");
    await runtimeFor(placed).submit("default", "cramped", "z".repeat(1500), { max_tokens: 2 });
    await setResidency("cramped", "Hibernated");
    await tb.kubectl(["wait", "--for=condition=Degraded", "isess/cramped", "--timeout=60s"]);
    const s = await get("cramped");
    const c = Object.fromEntries(s.status!.conditions!.map((x) => [x.type, x]));
    assert.equal(c.Degraded!.reason, "StorageFailed");
    assert.match(c.Degraded!.message, /hibernate write failed/);
    assert.equal(c.Ready!.status, "True", "the session still serves from memory");
    assert.equal(s.status!.residency, "InMemory");
    const events = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=cramped,type=Warning", "-o", "jsonpath={.items[*].reason}"]);
    assert.match(events, /StorageFailed/);
    assert.equal((await runtimeFor(s).submit("default", "cramped", "still here?", { max_tokens: 2 })).usage.completion_tokens, 2);
    await tb.kubectl(["delete", "isess", "cramped", "--wait=true", "--timeout=60s"]);
    await tb.kubectl(["delete", "deployment", "runtime-full"]);
  });

  it("with a CRD older than the operator (helm never upgrades CRDs) it says so and does not write the same status again", async () => {
    const crd = inferenceSessionCrd();
    const old = structuredClone(crd) as unknown as { spec: { versions: Array<{ schema: { openAPIV3Schema: { properties: { status: { properties: Record<string, unknown> } } } } }> } };
    delete old.spec.versions[0]!.schema.openAPIV3Schema.properties.status.properties.contextSize;
    // From here: the probe session below may be the first whose status loses the field.
    const logBefore = operatorLog.length;
    await tb.kubectl(["apply", "-f", "-"], JSON.stringify(old));
    try {
      // The API server swaps a CRD's schema in asynchronously: wait until it refuses the field.
      await tb.kubectl(["apply", "-f", "-"], session("crd-probe"));
      await eventually("the API server to use the older schema", async () => {
        const probe = JSON.parse(await tb.kubectl(["get", "isess", "crd-probe", "-o", "json"])) as InferenceSession;
        probe.status = { contextSize: 1024 };
        try { await tb.kubectl(["replace", "--subresource=status", "--dry-run=server", "-f", "-"], JSON.stringify(probe)); return undefined; } catch (err) {
          return /unknown field "status.contextSize"/.test(String(err)) ? true : undefined;
        }
      }, 20_000);
      await tb.kubectl(["delete", "isess", "crd-probe", "--timeout=60s"]);
      await tb.kubectl(["apply", "-f", "-"], session("old-crd"));
      const placed = await waitPlaced("old-crd");
      assert.equal(placed.status!.contextSize, undefined, "pruned by the API server");
      const warning = () => operatorLog.slice(logBefore).split("\n").filter((l) => l.includes("dropped status fields"));
      const [line] = await eventually("the operator's warning", async () => (warning().length ? warning() : undefined), 20_000);
      assert.match(line!, /"fields":\["contextSize"\]/);
      assert.match(line!, /kubectl apply -f charts\/torpor\/crds/);
      // Still served: a turn, and status follows it.
      await runtimeFor(placed).submit("default", "old-crd", "hello", { max_tokens: 2 });
      await eventually("InMemory in status", async () => ((await get("old-crd")).status?.residency === "InMemory" ? true : undefined), 20_000);
      assert.equal(warning().length, 1, "said once");
      // Nothing changes now: resyncs (every 5 s here) must not write the same status again.
      const statusWrites = async () => (await tb.kubectl(["get", "--raw", "/metrics"])).split("\n")
        .filter((l) => l.startsWith("apiserver_request_total{") && l.includes('resource="inferencesessions"') && l.includes('subresource="status"') && l.includes('verb="PUT"'))
        .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
      // Once the turn's own status updates have landed (the status unchanged for 6 s).
      await eventually("the status to settle", async () => {
        const before = (await get("old-crd")).metadata.resourceVersion;
        await new Promise((r) => setTimeout(r, 6000));
        return (await get("old-crd")).metadata.resourceVersion === before ? true : undefined;
      }, 60_000);
      const writesBefore = await statusWrites();
      await new Promise((r) => setTimeout(r, 12_000));
      assert.ok(await statusWrites() - writesBefore < 2, "no status write per resync");
    } finally {
      await tb.kubectl(["apply", "-f", "-"], JSON.stringify(crd));
    }
    // With the CRD applied, the next status write keeps the field again.
    await runtimeFor(await get("old-crd")).submit("default", "old-crd", "again", { max_tokens: 2 });
    await eventually("contextSize back in status", async () => ((await get("old-crd")).status?.contextSize === 1024 ? true : undefined), 30_000);
    await tb.kubectl(["delete", "isess", "old-crd", "--wait=false"]);
  });

  it("sweeps hibernation files that belong to no session", async () => {
    const pods = JSON.parse(await tb.kubectl(["get", "pods", "-l", "torpor.dev/model=tiny", "-o", "json"])) as { items: Array<{ status: { podIP: string } }> };
    const rt = new RuntimeClient(`http://${pods.items[0]!.status.podIP}:8080`, TOKEN);
    await rt.register("default", "orphan");
    await rt.submit("default", "orphan", "nobody owns me", { max_tokens: 2 });
    await rt.hibernate("default", "orphan");
    assert.ok((await readdir(hibDir())).some((f) => /^orphan(@e\d+)?\.torpor\.json$/.test(f)));
    await eventually("the sweeper", async () => ((await readdir(hibDir())).some((f) => f.startsWith("orphan.")) ? undefined : true), 30_000);
  });

  it("recovers its watches when the API server restarts", async () => {
    await tb.controlPlane.restartApiserver();
    await tb.kubectl(["apply", "-f", "-"], session("after-restart"));
    const placed = await eventually("placement after the restart", async () => { const s = await get("after-restart"); return s.status?.pod ? s : undefined; }, 60_000);
    assert.equal(placed.status!.residency, "NotCreated");
  });

  it("with two replicas only the lease holder acts, and the other takes over when it dies", async () => {
    const waitingBefore = (operatorLog.match(/waiting for leadership/g) ?? []).length;
    const standby = await startOperator();
    try {
      await eventually("the standby to wait for leadership", async () => ((operatorLog.match(/waiting for leadership/g) ?? []).length > waitingBefore ? true : undefined), 20_000);
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal((operatorLog.match(/controller started/g) ?? []).length, (operatorLog.match(/became leader/g) ?? []).length, "a replica started its controller without the lease");
      const lease = JSON.parse(await tb.kubectl(["get", "lease", "torpor-operator", "-o", "json"])) as { spec: { holderIdentity: string } };
      const leaderPid = operator.pid;
      assert.ok(lease.spec.holderIdentity.startsWith("op-"));
      const startedBefore = (operatorLog.match(/controller started/g) ?? []).length;
      await stopOperator(operator, "SIGKILL");
      assert.notEqual(standby.pid, leaderPid);
      operator = standby;
      await eventually("the standby to take over", async () => ((operatorLog.match(/controller started/g) ?? []).length > startedBefore ? true : undefined), 45_000);
      await tb.kubectl(["apply", "-f", "-"], session("after-failover"));
      await eventually("placement by the new leader", async () => ((await get("after-failover")).status?.pod ? true : undefined), 30_000);
      const now = JSON.parse(await tb.kubectl(["get", "lease", "torpor-operator", "-o", "json"])) as { spec: { holderIdentity: string; leaseTransitions: number } };
      assert.notEqual(now.spec.holderIdentity, lease.spec.holderIdentity);
      assert.ok(now.spec.leaseTransitions >= 1);
    } finally {
      if (operator !== standby) await stopOperator(standby);
    }
  });

  it("a leader stopped by SIGTERM (a rolling update) gives the lease up on its way out, and the standby leads", async () => {
    const startedBefore = (operatorLog.match(/controller started/g) ?? []).length;
    const standby = await startOperator();
    try {
      const leader = (JSON.parse(await tb.kubectl(["get", "lease", "torpor-operator", "-o", "json"])) as { spec: { holderIdentity: string } }).spec.holderIdentity;
      await stopOperator(operator, "SIGTERM");
      // Read the moment it exited: a lease left to expire would still name it for up to 15 s.
      const after = JSON.parse(await tb.kubectl(["get", "lease", "torpor-operator", "-o", "json"])) as { spec: { holderIdentity?: string } };
      assert.notEqual(after.spec.holderIdentity, leader, "the stopped leader released the lease");
      assert.match(operatorLog, /released leadership/);
      operator = standby;
      await eventually("the standby to take over", async () => ((operatorLog.match(/controller started/g) ?? []).length > startedBefore ? true : undefined), 45_000);
      await tb.kubectl(["apply", "-f", "-"], session("after-handover"));
      await eventually("placement by the new leader", async () => ((await get("after-handover")).status?.pod ? true : undefined), 30_000);
    } finally {
      if (operator !== standby) await stopOperator(standby);
    }
  });

  it("reports live state lost when the pod holding an in-memory session goes away", async () => {
    const placed = await inMemorySession("fragile");
    sigkillRuntime(placed.status!.pod!);
    await tb.kubectl(["delete", "pod", placed.status!.pod!, "--wait=false"]);
    const lost = await eventually("LiveStateLost", async () => {
      const s = await get("fragile");
      return s.status?.liveStateLostAt ? s : undefined;
    }, 90_000);
    const degraded = lost.status!.conditions!.find((c) => c.type === "Degraded")!;
    assert.equal(degraded.status, "True");
    assert.equal(degraded.reason, "LiveStateLost");
    assert.equal(lost.status!.residency, "NotCreated");
  });

  it("reports live state lost when the runtime container restarts in the same pod (an OOM kill)", async () => {
    const placed = await inMemorySession("oom");
    // The kubelet restarts the container in the same pod (the operator may meanwhile move the
    // session to another Ready pod: either way the loss is reported).
    sigkillRuntime(placed.status!.pod!);
    const lost = await eventually("LiveStateLost after the restart", async () => {
      const s = await get("oom");
      return s.status?.liveStateLostAt ? s : undefined;
    }, 60_000);
    assert.equal(lost.status!.conditions!.find((c) => c.type === "Degraded")?.reason, "LiveStateLost");
    assert.equal(lost.status!.residency, "NotCreated");
  });

  it("with checkpoints, an OOM-style kill costs at most the turns since the last checkpoint, and says how much", async () => {
    await tb.kubectl(["apply", "-f", "-"], session("ckpt", "\n  hibernation: {checkpoint: {afterTurns: 2}}"));
    const placed = await waitPlaced("ckpt");
    const rt = runtimeFor(placed);
    for (const p of ["one", "two", "three"]) await rt.submit("default", "ckpt", p, { max_tokens: 4 });
    const tokens = (await rt.status("default", "ckpt")).tokenCount;
    await eventually("status to see the third turn", async () => ((await get("ckpt")).status?.tokenCount === tokens ? true : undefined), 20_000);
    sigkillRuntime(placed.status!.pod!);
    const back = await eventually("restored from the checkpoint", async () => { const s = await get("ckpt"); return s.status?.lastLoss ? s : undefined; }, 60_000)
      .catch(async (err) => { throw new Error(`${err}: ${JSON.stringify((await get("ckpt")).status)}\n${operatorLog.split("\n").filter((l) => l.includes("ckpt")).join("\n")}`); });
    assert.ok(back.status!.lastLoss!.tokensLost > 0 && back.status!.lastLoss!.tokensLost < tokens, JSON.stringify(back.status!.lastLoss));
    assert.equal(back.status!.liveStateLostAt, undefined, "not lost: restored from the checkpoint");
    // It was in memory when the runtime died: the operator put it back there from the checkpoint.
    const prewarmed = await backInMemoryOrKept("ckpt");
    const r = await runtimeFor(back).submit("default", "ckpt", "four", { max_tokens: 2 });
    assert.equal(r.torpor.rehydrated, !prewarmed);
    const h = await runtimeFor(back).request<{ history: Array<{ type: string; text?: string }> }>("GET", "/v1/sessions/default/ckpt?history=true");
    assert.deepEqual(h.history.filter((m) => m.type === "user").map((m) => m.text), ["one", "two", "four"], "the two checkpointed turns kept, the third lost");
    const events = await tb.kubectl(["get", "events", "--field-selector", "involvedObject.name=ckpt", "-o", "jsonpath={.items[*].reason}"]);
    assert.match(events, /RestoredFromCheckpoint/);
  });

  it("a runtime that turns NotReady but keeps running hands its session off: one history survives, nothing forked or lost", async () => {
    const placed = await inMemorySession("split", "My locker code is 2931.");
    const rt = runtimeFor(placed);
    await rt.submit("default", "split", "And my bike is green.", { max_tokens: 4 });
    const lastUsed = Date.parse((await rt.status("default", "split")).lastActivity);
    tb.kubelet.failReadiness("default", placed.status!.pod!);
    try {
      const moved = await eventually("the move off the NotReady pod", async () => {
        const s = await get("split");
        return s.status?.pod && s.status.pod !== placed.status!.pod && s.status.conditions?.some((c) => c.type === "Ready" && c.status === "True") ? s : undefined;
      }, 60_000);
      // The old pod is alive and reachable: it must refuse the session now, not serve a fork.
      await assert.rejects(rt.submit("default", "split", "Fork?", { max_tokens: 2 }), (e: Error & { code?: string }) => e.code === "stale_epoch" || e.code === "session_not_found");
      // It was in memory on the old pod, so it is in memory on the new one before anyone asks.
      const prewarmed = await backInMemoryOrKept("split");
      // The move was not the user's activity: the new pod's idle clock goes on from the last turn.
      const onNewPod = Date.parse((await runtimeFor(moved).status("default", "split")).lastActivity);
      assert.ok(onNewPod <= lastUsed, `idle clock kept across the move: ${new Date(onNewPod).toISOString()} <= ${new Date(lastUsed).toISOString()}`);
      const r = await runtimeFor(moved).submit("default", "split", "What were they?", { max_tokens: 4 });
      assert.equal(r.torpor.rehydrated, !prewarmed);
      assert.ok(r.usage.prompt_tokens_details!.cached_tokens! > 0, `the restored conversation was reused: ${JSON.stringify(r.usage)}`);
      const h = await runtimeFor(moved).request<{ history: Array<{ type: string; text?: string }> }>("GET", "/v1/sessions/default/split?history=true");
      assert.deepEqual(h.history.filter((m) => m.type === "user").map((m) => m.text), ["My locker code is 2931.", "And my bike is green.", "What were they?"]);
      // Healed: the old pod is Ready again and holds no copy that could be served or saved.
      tb.kubelet.failReadiness("default", placed.status!.pod!, false);
      await eventually("the old pod forgets its copy", async () => {
        const { sessions } = await rt.list();
        const copy = sessions.find((x) => x.name === "split");
        return !copy || copy.residency !== "InMemory" ? true : undefined;
      }, 20_000);
    } finally {
      // Healed even when an assertion failed: a pod left NotReady stalls every later rollout.
      tb.kubelet.failReadiness("default", placed.status!.pod!, false);
    }
    assert.equal((await get("split")).status!.liveStateLostAt, undefined);
  });

  it("an in-memory session moved by an operator that died before writing where (a drain evicting both) is found there, not lost", async () => {
    const placed = await inMemorySession("evicted", "My locker code is 2931.");
    await stopOperator(operator, "SIGKILL");
    try {
      // What the dying operator had done: the session's pod deleted (its SIGTERM saved it), the
      // next epoch written, the session registered on another pod and rehydrated there (consuming
      // its file); status still names the deleted pod and says InMemory.
      await tb.kubectl(["delete", "pod", placed.status!.pod!, "--wait=true", "--timeout=60s"]);
      await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
      const epoch = (placed.status!.epoch ?? 0) + 1;
      await tb.kubectl(["patch", "isess", "evicted", "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { epoch } })]);
      const pods = (JSON.parse(await tb.kubectl(["get", "pods", "-l", "torpor.dev/model=tiny", "-o", "json"])) as { items: Array<{ metadata: { name: string; deletionTimestamp?: string }; status: { podIP: string } }> })
        .items.filter((p) => !p.metadata.deletionTimestamp).map((p) => [p.metadata.name, p.status.podIP] as const);
      const [holderName, holderIp] = pods.find(([n]) => n !== placed.status!.pod)!;
      const holder = new RuntimeClient(`http://${holderIp}:8080`, TOKEN);
      assert.equal((await holder.register("default", "evicted", { contextSize: 1024, epoch })).residency, "Hibernated");
      assert.equal((await holder.rehydrate("default", "evicted")).rehydrated, true);
      // The holder looks the busiest, so a fresh placement would go elsewhere and find no file.
      const [, otherIp] = pods.find(([n]) => n !== holderName)!;
      const others = (await new RuntimeClient(`http://${otherIp}:8080`, TOKEN).list()).sessions.length;
      for (let i = 0; i < others + 4; i++) await holder.register("default", `ballast-${i}`, { contextSize: 256 });
      operator = await startOperator();
      const back = await eventually("evicted placed where it is", async () => { const s = await get("evicted"); return s.status?.pod !== placed.status!.pod && s.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ? s : undefined; }, 60_000);
      assert.equal(back.status!.pod, holderName, JSON.stringify(back.status));
      assert.equal(back.status!.residency, "InMemory");
      assert.equal(back.status!.liveStateLostAt, undefined, "nothing lost");
      await holder.submit("default", "evicted", "What was it?", { max_tokens: 2 });
      const h = await holder.request<{ history: Array<{ type: string; text?: string }> }>("GET", "/v1/sessions/default/evicted?history=true");
      assert.deepEqual(h.history.filter((m) => m.type === "user").map((m) => m.text), ["My locker code is 2931.", "What was it?"]);
    } finally {
      if (operator.exitCode !== null || operator.signalCode !== null) operator = await startOperator();
    }
  });

  it("a look-alike runtime pod (bare, or in another namespace) is never used", async () => {
    const lookAlike = (ns: string) => `apiVersion: v1
kind: Pod
metadata: {name: runtime-tiny-lookalike, namespace: ${ns}, labels: {app.kubernetes.io/component: runtime, app.kubernetes.io/part-of: torpor, torpor.dev/model: tiny}}
spec:
  containers: [{name: x, image: evil, command: [node, -e, "require('http').createServer((q, r) => r.end('{\\"sessions\\":[]}')).listen(8080, process.env.POD_IP)"], env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}], ports: [{name: http, containerPort: 8080}], readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}}]
`;
    await tb.kubectl(["create", "namespace", "evil"]);
    for (const ns of ["default", "evil"]) await tb.kubectl(["apply", "-f", "-"], lookAlike(ns));
    for (const ns of ["default", "evil"]) await tb.kubectl(["wait", "--for=condition=Ready", "-n", ns, "pod/runtime-tiny-lookalike", "--timeout=60s"]);
    for (let i = 0; i < 4; i++) await tb.kubectl(["apply", "-f", "-"], session(`target-${i}`));
    for (let i = 0; i < 4; i++) {
      const s = await waitPlaced(`target-${i}`);
      assert.notEqual(s.status!.pod, "runtime-tiny-lookalike", "placed on a look-alike: it would get the runtime token and the session");
    }
    for (const ns of ["default", "evil"]) await tb.kubectl(["delete", "pod", "-n", ns, "runtime-tiny-lookalike", "--wait=false"]);
  });

  it("SIGKILL of the runtime during a hibernate ends as Hibernated with the whole history or as LiveStateLost, never half", async () => {
    const outcomes = { hibernated: 0, lost: 0 };
    // The operator calls the runtime some ms after the patch and the write takes some ms more:
    // the kills land before, during and after the commit point.
    for (const delay of [0, 20, 40, 80, 160]) {
      const name = `killed-${delay}`;
      const placed = await inMemorySession(name, "z".repeat(800));
      await setResidency(name, "Hibernated");
      await new Promise((r) => setTimeout(r, delay));
      sigkillRuntime(placed.status!.pod!);
      await tb.kubectl(["delete", "pod", placed.status!.pod!, "--wait=false"]);
      const outcome = await eventually(`${name} to settle`, async () => {
        const s = await get(name);
        if (s.status?.liveStateLostAt) return "lost" as const;
        return s.status?.conditions?.some((c) => c.type === "Hibernated" && c.status === "True") ? "hibernated" as const : undefined;
      }, 90_000);
      outcomes[outcome]++;
      const settled = await get(name);
      if (outcome === "lost") {
        assert.equal(settled.status!.residency, "NotCreated");
        assert.equal(settled.status!.conditions!.find((c) => c.type === "Degraded")?.reason, "LiveStateLost");
        continue;
      }
      // Committed before the kill: it comes back elsewhere with the whole conversation.
      await setResidency(name, "InMemory");
      const back = await eventually(`${name} back in memory on a live pod`, async () => {
        const s = await get(name);
        return s.status?.residency === "InMemory" && s.status.pod !== placed.status!.pod ? s : undefined;
      }, 90_000).catch(async (err) => { throw new Error(`${err}: ${JSON.stringify((await get(name)).status)}\n${operatorLog.split("\n").filter((l) => l.includes(name)).slice(-12).join("\n")}`); });
      const h = await runtimeFor(back).request<{ history: Array<{ type: string }> }>("GET", `/v1/sessions/default/${name}?history=true`);
      assert.deepEqual(h.history.map((m) => m.type), ["system", "user", "model"]);
    }
    console.log(`# runtime SIGKILLed during operator-driven hibernates: ${outcomes.hibernated} committed and restored, ${outcomes.lost} reported LiveStateLost`);
  });

  it("a hibernated session on a failed node rehydrates on another node with its history", async () => {
    const placed = await inMemorySession("survivor", "Keep this safe.");
    await hibernateAndWait("survivor");
    tb.kubelet.failNode(placed.status!.node!);
    const moved = await eventually("re-placement on a healthy node", async () => {
      const s = await get("survivor");
      return s.status?.node && s.status.node !== placed.status!.node ? s : undefined;
    }, 120_000);
    const r = await runtimeFor(moved).submit("default", "survivor", "Still there?", { max_tokens: 4 });
    assert.equal(r.torpor.rehydrated, true);
    const st = await runtimeFor(moved).request<{ history: unknown[] }>("GET", "/v1/sessions/default/survivor?history=true");
    assert.equal(st.history.length, 5);
  });

  it("a session deleted while no runtime pod runs: a cleanup pod deletes its files and the finalizer goes; one in memory when the pool went says Hibernated", async () => {
    const placed = await inMemorySession("orphaned", "Delete me later.");
    await hibernateAndWait("orphaned");
    assert.ok((await readdir(hibDir())).some((f) => f.startsWith("orphaned")));
    await inMemorySession("awake", "Keep me.");
    await tb.kubectl(["scale", "deployment/runtime-tiny", "--replicas=0"]);
    // (A pod on the node an earlier test failed never goes away, as on a real cluster: it is not Ready.)
    const readyRuntimes = async () => (JSON.parse(await tb.kubectl(["get", "pods", "-l", "app.kubernetes.io/component=runtime", "-o", "json"])) as { items: Array<{ status?: { conditions?: Array<{ type: string; status: string }> } }> })
      .items.filter((p) => p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")).length;
    await eventually("no Ready runtime pod", async () => ((await readyRuntimes()) === 0 ? true : undefined), 90_000);
    // Its pod saved it as it went (a hand-off), and nothing holds it now: status must not say
    // InMemory (found on cluster-up: the commit was lost when the placement on the other, also
    // terminating, pod failed).
    const asleep = await eventually("awake saved by its pod", async () => {
      const s = await get("awake");
      return s.status?.residency === "Hibernated" ? s : undefined;
    }, 30_000);
    assert.equal(asleep.status!.conditions!.find((c) => c.type === "Degraded")!.status, "False");
    await tb.kubectl(["delete", "isess", "orphaned", "--wait=true", "--timeout=90s"]);
    assert.deepEqual((await readdir(hibDir())).filter((f) => f.startsWith("orphaned")), [], "files removed, the claim included");
    assert.equal((await tb.kubectl(["get", "pods", "-l", "app.kubernetes.io/component=cleanup", "-o", "name"])).trim(), "", "the cleanup pod is gone");
    void placed;
    await tb.kubectl(["scale", "deployment/runtime-tiny", "--replicas=2"]);
    await tb.kubectl(["rollout", "status", "deployment/runtime-tiny", "--timeout=120s"]);
    await tb.kubectl(["delete", "isess", "awake", "--wait=true", "--timeout=90s"]);
  });
});
