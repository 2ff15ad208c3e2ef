// The TypeScript types and the CRD schema cannot drift: same field names, and the committed YAML
// is exactly what the generator writes.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { specSchema, statusSchema } from "../../contract/crd.js";
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
