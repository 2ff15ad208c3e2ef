// The TypeScript types and the CRD schema cannot drift: same field names, and the committed YAML
// is exactly what the generator writes.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { inferenceSessionCrd, specSchema, statusSchema } from "../../contract/crd.js";
import { CRD_FILE, renderCrdYaml } from "../../contract/crd-yaml.js";
import { CHECKPOINT_FIELDS, HIBERNATION_FIELDS, LAST_HIBERNATION_FIELDS, SPEC_FIELDS, STATUS_FIELDS, parseDuration } from "../../contract/inference-session.js";
import { REPO_ROOT } from "../../testbed/paths.js";

const keys = (o: object) => Object.keys(o).sort();

describe("InferenceSession API", () => {
  it("schema and types list the same fields", () => {
    assert.deepEqual(keys(specSchema.properties), keys(SPEC_FIELDS));
    assert.deepEqual(keys(specSchema.properties.hibernation.properties), keys(HIBERNATION_FIELDS));
    assert.deepEqual(keys(specSchema.properties.hibernation.properties.checkpoint.properties), keys(CHECKPOINT_FIELDS));
    assert.deepEqual(keys(statusSchema.properties), keys(STATUS_FIELDS));
    assert.deepEqual(keys(statusSchema.properties.lastHibernation.properties), keys(LAST_HIBERNATION_FIELDS));
  });

  it("describes every field, so `kubectl explain` answers for each", () => {
    const undescribed: string[] = [];
    const walk = (schema: Record<string, unknown>, at: string): void => {
      // The API server refuses anything but `type` on metadata: kubectl explains it from its own.
      if (at && at !== ".metadata" && typeof schema.description !== "string") undescribed.push(at);
      for (const [k, child] of Object.entries((schema.properties ?? {}) as Record<string, Record<string, unknown>>)) walk(child, `${at}.${k}`);
      if (schema.items) walk(schema.items as Record<string, unknown>, `${at}[]`);
    };
    walk(inferenceSessionCrd().spec.versions[0]!.schema.openAPIV3Schema as Record<string, unknown>, "");
    assert.deepEqual(undescribed, []);
  });

  it("the committed CRD is the generated one (run `npm run generate` after changing crd.ts)", async () => {
    assert.equal(await readFile(path.join(REPO_ROOT, CRD_FILE), "utf8"), renderCrdYaml());
    assert.equal(await readFile(path.join(REPO_ROOT, "charts", "torpor", CRD_FILE), "utf8"), renderCrdYaml(), "the chart's copy is stale");
  });

  it("parses Go-style durations", () => {
    assert.equal(parseDuration("15m"), 900_000);
    assert.equal(parseDuration("1h30m"), 5_400_000);
    assert.equal(parseDuration("500ms"), 500);
    assert.equal(parseDuration("15 minutes"), undefined);
    assert.equal(parseDuration(""), undefined);
  });
});
