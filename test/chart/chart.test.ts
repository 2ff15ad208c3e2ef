// The Helm chart: lint, render, server-side validation by the real API server, a real install on
// the testbed with every pod Ready, and the README quickstart run verbatim against it.
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import YAML from "yaml";
import { RuntimeClient } from "../../contract/runtime-client.js";
import { installChart, RELEASE_NAMESPACE, testbedValues } from "../../testbed/chart-install.js";
import { eventually } from "../../testbed/eventually.js";
import { runQuickstart } from "../../testbed/quickstart.js";
import { forwardService } from "../../testbed/service-forward.js";
import { PROCESS_TUNING_ENV } from "../../runtime/model/process-tuning.js";
import { REPO_ROOT } from "../../testbed/paths.js";
import { startTestbed, type Testbed } from "../../testbed/testbed.js";

const CHART = path.join(REPO_ROOT, "charts", "torpor");
const values = (name: string) => path.join(CHART, name);

describe("helm chart", () => {
  let tb: Testbed;
  before(async () => { tb = await startTestbed(); });
  after(async () => { await tb?.stop(); });

  it("lints clean with --strict for default, GPU and kind values", async () => {
    for (const v of [[], ["-f", values("values-gpu.yaml")], ["-f", values("values-kind.yaml")]]) {
      const out = await tb.helm(["lint", "--strict", CHART, ...v]);
      assert.match(out, /0 chart\(s\) failed/);
    }
  });

  it("renders manifests the API server accepts (dry-run=server), non-root and read-only", async () => {
    await tb.kubectl(["apply", "-f", path.join(CHART, "crds")]);
    await tb.kubectl(["create", "namespace", "render"]);
    for (const v of [[], ["-f", values("values-gpu.yaml")]]) {
      const rendered = await tb.helm(["template", "torpor", CHART, "-n", "render", ...v]);
      const out = await tb.kubectl(["apply", "--dry-run=server", "-n", "render", "-f", "-"], rendered);
      assert.match(out, /deployment.apps\/torpor-operator created \(server dry run\)/);
      const docs = YAML.parseAllDocuments(rendered).map((d) => d.toJSON() as { kind: string; spec?: { template?: { spec: { containers: Array<{ securityContext: Record<string, unknown>; resources?: { limits?: Record<string, unknown> } }>; securityContext: Record<string, unknown> } } } }).filter(Boolean);
      const deployments = docs.filter((d) => d.kind === "Deployment");
      assert.equal(deployments.length, 3);
      for (const d of deployments) {
        const pod = d.spec!.template!.spec;
        assert.equal(pod.securityContext.runAsNonRoot, true);
        for (const c of pod.containers) {
          assert.equal(c.securityContext.readOnlyRootFilesystem, true);
          assert.deepEqual((c.securityContext.capabilities as { drop: string[] }).drop, ["ALL"]);
        }
      }
      const runtimeEnv = (deployments.find((d) => JSON.stringify(d).includes("TORPOR_MODEL"))!.spec!.template!.spec.containers[0] as unknown as { env: Array<{ name: string; value?: string }> }).env;
      // The grace covers a shutdown's hibernates: sessions x state / bandwidth + 1 + 30 s, and the 5 s
      // in which the runtime waits for the operator to collect them.
      const grace = (deployments.find((d) => JSON.stringify(d).includes("TORPOR_MODEL"))!.spec!.template!.spec as unknown as { terminationGracePeriodSeconds: number }).terminationGracePeriodSeconds;
      assert.equal(grace, v.length ? Math.floor(6 * 1024 / 100) + 36 : Math.floor(8 * 1024 / 100) + 36);
      for (const [name, value] of Object.entries(PROCESS_TUNING_ENV)) {
        assert.equal(runtimeEnv.find((e) => e.name === name)?.value, value, `runtime pods lack ${name}=${value}`);
      }
      if (v.length) {
        const runtime = deployments.find((d) => JSON.stringify(d).includes("TORPOR_MODEL"))! as unknown as { spec: { strategy: { rollingUpdate: { maxSurge: number } }; template: { spec: { nodeSelector?: Record<string, string>; containers: Array<{ image: string; resources: { limits: Record<string, unknown>; requests: Record<string, string> } }> } } } };
        const c = runtime.spec.template.spec.containers[0]!;
        assert.equal(c.resources.limits["nvidia.com/gpu"], 1);
        assert.equal(runtime.spec.strategy.rollingUpdate.maxSurge, 0, "a GPU pool never surges: the extra pod would wait for a spare GPU");
        assert.ok(!JSON.stringify(runtime.spec.template.spec.nodeSelector ?? {}).includes("gpu.present"), "no GPU Operator-only label");
        assert.match(c.image, /-cuda$/, "the runtime runs the CUDA image");
        const others = deployments.filter((d) => d !== (runtime as unknown)).map((d) => (d.spec!.template!.spec.containers[0] as unknown as { image: string }).image);
        assert.ok(others.every((i) => !i.endsWith("-cuda")), `operator and gateway keep the CPU image: ${others}`);
        assert.ok(parseInt(c.resources.requests.memory!) <= 12, "fits a 16 GiB GPU node");
      }
      for (const kind of ["NetworkPolicy", "PodDisruptionBudget", "Secret", "PersistentVolumeClaim", "Service"]) {
        assert.ok(docs.some((d) => d.kind === kind), `no ${kind} rendered`);
      }
    }
    // A pool's own env replaces a variable the chart sets: two entries of one name made helm 4's
    // upgrade fail ("duplicate entries for key") on cluster-up.
    const base = YAML.parse(await readFile(values("values.yaml"), "utf8")) as { models: Array<Record<string, unknown>> };
    base.models[0]!.env = [{ name: "UV_THREADPOOL_SIZE", value: "4" }, { name: "EXTRA", value: "x" }];
    const overridden = path.join(tb.dir, "values-env.yaml");
    await writeFile(overridden, YAML.stringify({ models: base.models }));
    const rendered = YAML.parseAllDocuments(await tb.helm(["template", "torpor", CHART, "-n", "render", "-f", overridden])).map((d) => d.toJSON() as { kind: string; spec?: { template?: { spec: { containers: Array<{ env?: Array<{ name: string; value?: string }> }> } } } }).filter(Boolean);
    const env = rendered.find((d) => d.kind === "Deployment" && JSON.stringify(d).includes("TORPOR_MODEL"))!.spec!.template!.spec.containers[0]!.env!;
    const names = env.map((e) => e.name);
    assert.deepEqual(names.filter((n, i) => names.indexOf(n) !== i), [], "no variable twice");
    assert.equal(env.find((e) => e.name === "UV_THREADPOOL_SIZE")?.value, "4");
    assert.equal(env.find((e) => e.name === "EXTRA")?.value, "x");
    for (const [name, value] of Object.entries(PROCESS_TUNING_ENV)) if (name !== "UV_THREADPOOL_SIZE") assert.equal(env.find((e) => e.name === name)?.value, value, `the chart sets ${name}`);
    assert.ok(names.includes("TORPOR_RUNTIME_TOKEN") && names.includes("TORPOR_SEALING_KEYS"));
  });

  it("installs on the testbed and the README quickstart works verbatim; the address cluster-up prints outlives the gateway pod", async () => {
    const podUrl = await installChart(tb);
    for (const component of ["operator", "gateway", "runtime"]) {
      await tb.kubectl(["wait", "--for=condition=Ready", "pod", "-n", RELEASE_NAMESPACE, "-l", `app.kubernetes.io/component=${component}`, "--timeout=120s"]);
    }
    // runQuickstart blocks this process while its commands run, so it cannot go through a
    // forwarder living here: it gets the pod's address, and the forwarder is checked on its own.
    runQuickstart({ ...process.env, KUBECONFIG: tb.kubeconfig, TORPOR_GATEWAY: podUrl, PATH: `${path.dirname(tb.tools.kubectl)}:${process.env.PATH}` }, false);
    // The operator learns of the request's rehydrate on its next poll of the runtime.
    await tb.kubectl(["wait", "--for=jsonpath={.status.residency}=InMemory", "isess/quickstart", "--timeout=30s"]);
    const s = JSON.parse(await tb.kubectl(["get", "isess", "quickstart", "-o", "json"])) as { status: { residency: string; node: string } };
    assert.equal(s.status.residency, "InMemory");
    assert.ok(s.status.node);
    // An OpenAI client sees one name for the model: the pool's, in the model list and in answers.
    const token = (await tb.kubectl(["create", "token", "default", "--audience", "torpor"])).trim();
    const call = async (route: string, body?: unknown) => (await fetch(`${podUrl}/v1/sessions/default/quickstart/${route}`, {
      method: body ? "POST" : "GET", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, ...(body ? { body: JSON.stringify(body) } : {}),
    })).json() as Promise<{ model: string; data: Array<{ id: string }> }>;
    const listed = (await call("models")).data.map((m) => m.id);
    const answer = await call("chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 2 });
    assert.deepEqual(listed, [answer.model]);
    // The address `make cluster-up` prints (scripts/cluster.ts).
    const gateway = await forwardService(tb.kc, RELEASE_NAMESPACE, "app.kubernetes.io/component=gateway", 8000);
    try {
      assert.equal((await fetch(`${gateway.url}/healthz`)).status, 200);
      const before = (await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "-o", "jsonpath={.items[0].metadata.name}"])).trim();
      await tb.kubectl(["delete", "pod", "-n", RELEASE_NAMESPACE, before, "--wait=true"]);
      await tb.kubectl(["wait", "--for=condition=Ready", "pod", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "--timeout=120s"]);
      const after = await eventually("the gateway through the printed address", async () => {
        const r = await fetch(`${gateway.url}/healthz`).catch(() => undefined);
        return r?.ok ? r : undefined;
      }, 30_000);
      assert.equal(after.status, 200);
    } finally {
      await gateway.close();
    }
  });

  it("helm upgrade rolls the runtime pods while 20 sessions chat: every turn answered, kept once and in order", async () => {
    const gateway = `http://${(await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "-o", "jsonpath={.items[0].status.podIP}"])).trim()}:8000`;
    const token = (await tb.kubectl(["create", "token", "default", "--audience", "torpor"])).trim(); // the quickstart's grant
    const names = Array.from({ length: 20 }, (_, i) => `roll-${i}`);
    await tb.kubectl(["apply", "-f", "-"], names.map((n) => `apiVersion: torpor.dev/v1alpha1\nkind: InferenceSession\nmetadata: {name: ${n}, namespace: default}\nspec: {model: smollm2, contextSize: 2048}\n`).join("---\n"));
    for (const n of names) await tb.kubectl(["wait", "--for=condition=Ready", `isess/${n}`, "--timeout=120s"]);
    const sent = new Map(names.map((n) => [n, [] as string[]]));
    const failures: string[] = [];
    let rolling = true;
    const chatter = async (name: string) => {
      for (let i = 0; rolling || i < 2; i++) {
        const prompt = `turn ${i}`;
        const res = await fetch(`${gateway}/v1/sessions/default/${name}/submit`, {
          method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ prompt, max_tokens: 2 }),
        });
        const body = await res.text();
        if (res.status !== 200) { failures.push(`${name} ${prompt}: ${res.status} ${body.slice(0, 200)}`); return; }
        sent.get(name)!.push(prompt);
        await new Promise((r) => setTimeout(r, 300)); // a person types; the contexts stay far from full
      }
    };
    const chatting = Promise.all(names.map(chatter));
    // A change to the runtime pods' template (threads) rolls the Deployment, as any upgrade does.
    const valueFiles = await testbedValues(tb);
    const current = YAML.parse(await readFile(valueFiles.at(-1)!, "utf8")) as { models: Array<Record<string, unknown>> };
    const upgraded = path.join(tb.dir, "values-upgrade.yaml");
    await writeFile(upgraded, YAML.stringify({ models: current.models.map((m) => ({ ...m, threads: 2 })) }));
    const before = (await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=runtime", "-o", "jsonpath={.items[*].metadata.name}"])).trim().split(" ");
    await tb.helm(["upgrade", "torpor", CHART, "-n", RELEASE_NAMESPACE, ...valueFiles, "-f", upgraded, "--wait", "--timeout", "300s"]);
    await tb.kubectl(["rollout", "status", "-n", RELEASE_NAMESPACE, "deployment/torpor-runtime-smollm2", "--timeout=300s"]);
    rolling = false;
    await chatting;
    // rollout status is done once the old ReplicaSet counts no pods, which happens when they start
    // terminating; each old pod still hands its sessions off before it exits, so wait for that.
    await tb.kubectl(["wait", "--for=delete", "-n", RELEASE_NAMESPACE, ...before.map((p) => `pod/${p}`), "--timeout=120s"]);
    const afterPods = (await tb.kubectl(["get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=runtime", "-o", "jsonpath={.items[*].metadata.name}"])).trim().split(" ");
    assert.ok(afterPods.every((p) => !before.includes(p)), `every runtime pod replaced: ${before} -> ${afterPods}`);
    assert.deepEqual(failures, []);
    // The moves spread over the new pods: placement counts the moves in flight, not only the
    // runtimes' last reports (20 sessions, 8 resident at most per pod).
    const placedOn = new Map<string, number>();
    await eventually("every session on a new pod", async () => {
      placedOn.clear();
      for (const n of names) {
        const st = (JSON.parse(await tb.kubectl(["get", "isess", n, "-o", "json"])) as { status: { pod?: string } }).status;
        if (!afterPods.includes(st.pod ?? "")) return undefined;
        placedOn.set(st.pod!, (placedOn.get(st.pod!) ?? 0) + 1);
      }
      return true;
    }, 60_000);
    assert.ok(afterPods.every((p) => (placedOn.get(p) ?? 0) >= 4), `sessions spread over the new pods: ${JSON.stringify([...placedOn])}`);
    // Each conversation, read from the runtime that holds it now: every turn once, in order.
    const runtimeToken = Buffer.from((await tb.kubectl(["get", "secret", "-n", RELEASE_NAMESPACE, "torpor-runtime-token", "-o", "jsonpath={.data.token}"])).trim(), "base64").toString();
    let turns = 0;
    for (const n of names) {
      const s = JSON.parse(await tb.kubectl(["get", "isess", n, "-o", "json"])) as { status: { podIP: string; liveStateLostAt?: string } };
      assert.equal(s.status.liveStateLostAt, undefined, `${n} lost its live state`);
      // Read from memory: a session the rollout left hibernated is woken first (a no-op otherwise).
      const rt = new RuntimeClient(`http://${s.status.podIP}:8080`, runtimeToken);
      await rt.rehydrate("default", n);
      const { history } = await rt.request<{ history: Array<{ type: string; text?: string }> }>("GET", `/v1/sessions/default/${n}?history=true`);
      assert.deepEqual(history.filter((m) => m.type === "user").map((m) => m.text), sent.get(n), `${n}: turns kept once, in order`);
      turns += sent.get(n)!.length;
    }
    console.log(`# helm upgrade rollout: ${before.length} runtime pods replaced while 20 sessions chatted; ${turns} turns, all kept once and in order; sessions per new pod ${[...placedOn.values()].join("/")}`);
  });
});
