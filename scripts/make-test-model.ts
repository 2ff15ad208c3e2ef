// CLI for the test-fixture model: node dist/scripts/make-test-model.js [--dir D] [--layers N] ...
// Prints the path of the generated (or cached) GGUF file.
import { parseArgs } from "node:util";
import { DEFAULT_TEST_MODEL, ensureTestModel } from "../fixtures/gguf/test-model.js";

const { values } = parseArgs({
  options: {
    dir: { type: "string", default: process.env.TORPOR_MODEL_CACHE_DIR ?? ".torpor/models" },
    layers: { type: "string" }, embedding: { type: "string" }, "feed-forward": { type: "string" },
    heads: { type: "string" }, "kv-heads": { type: "string" }, context: { type: "string" }, seed: { type: "string" },
  },
});
const num = (v: string | undefined, d: number) => (v === undefined ? d : Number(v));
const file = await ensureTestModel(values.dir!, {
  layers: num(values.layers, DEFAULT_TEST_MODEL.layers),
  embedding: num(values.embedding, DEFAULT_TEST_MODEL.embedding),
  feedForward: num(values["feed-forward"], DEFAULT_TEST_MODEL.feedForward),
  heads: num(values.heads, DEFAULT_TEST_MODEL.heads),
  ...(values["kv-heads"] ? { kvHeads: Number(values["kv-heads"]) } : {}),
  contextLength: num(values.context, DEFAULT_TEST_MODEL.contextLength),
  seed: num(values.seed, DEFAULT_TEST_MODEL.seed),
});
console.log(file);
