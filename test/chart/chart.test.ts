// The Helm chart: lint, render, server-side validation by the real API server, a real install on
// the testbed with every pod Ready, and the README quickstart run verbatim against it.
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import YAML from "yaml";
import { installChart, RELEASE_NAMESPACE } from "../../testbed/chart-install.js";
import { runQuickstart } from "../../testbed/quickstart.js";
import { MALLOC_TUNING_ENV } from "../../runtime/model/malloc-tuning.js";
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
      for (const [name, value] of Object.entries(MALLOC_TUNING_ENV)) {
        assert.equal(runtimeEnv.find((e) => e.name === name)?.value, value, `runtime pods lack ${name}=${value}`);
      }
      if (v.length) {
        const runtime = deployments.find((d) => JSON.stringify(d).includes("nvidia.com/gpu.present"))!;
        assert.equal(runtime.spec!.template!.spec.containers[0]!.resources!.limits!["nvidia.com/gpu"], 1);
      }
      for (const kind of ["NetworkPolicy", "PodDisruptionBudget", "Secret", "PersistentVolumeClaim", "Service"]) {
        assert.ok(docs.some((d) => d.kind === kind), `no ${kind} rendered`);
      }
    }
  });

  it("installs on the testbed and the README quickstart works verbatim", async () => {
    const gateway = await installChart(tb);
    for (const component of ["operator", "gateway", "runtime"]) {
      await tb.kubectl(["wait", "--for=condition=Ready", "pod", "-n", RELEASE_NAMESPACE, "-l", `app.kubernetes.io/component=${component}`, "--timeout=120s"]);
    }
    runQuickstart({ ...process.env, KUBECONFIG: tb.kubeconfig, TORPOR_GATEWAY: gateway, PATH: `${path.dirname(tb.tools.kubectl)}:${process.env.PATH}` }, false);
    // The operator learns of the request's rehydrate on its next poll of the runtime.
    await tb.kubectl(["wait", "--for=jsonpath={.status.residency}=InMemory", "isess/quickstart", "--timeout=30s"]);
    const s = JSON.parse(await tb.kubectl(["get", "isess", "quickstart", "-o", "json"])) as { status: { residency: string; node: string } };
    assert.equal(s.status.residency, "InMemory");
    assert.ok(s.status.node);
  });
});
