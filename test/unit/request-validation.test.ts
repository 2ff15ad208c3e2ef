// What the OpenAI-compatible routes accept, and what they refuse by name instead of ignoring.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TorporError } from "../../contract/errors.js";
import { parseSampling } from "../../contract/request-validation.js";

const refused = (field: string) => (err: unknown) => err instanceof TorporError && err.code === "bad_request" && err.message.startsWith(`${field}:`);

describe("OpenAI request fields", () => {
  it("takes stop as a string or up to four strings", () => {
    assert.deepEqual(parseSampling({ stop: "\n\n" }, 100).stop, ["\n\n"]);
    assert.deepEqual(parseSampling({ stop: ["User:", "###"] }, 100).stop, ["User:", "###"]);
    assert.equal(parseSampling({ stop: null }, 100).stop, undefined);
    assert.equal(parseSampling({ stop: [] }, 100).stop, undefined);
    for (const stop of [["a", "b", "c", "d", "e"], [""], [1], "x".repeat(257), { a: 1 }]) {
      assert.throws(() => parseSampling({ stop }, 100), refused("stop"), JSON.stringify(stop));
    }
  });

  it("refuses tools, function calls, log probabilities and JSON output by name; accepts their neutral values", () => {
    assert.throws(() => parseSampling({ tools: [{ type: "function", function: { name: "f" } }] }, 100), refused("tools"));
    assert.throws(() => parseSampling({ functions: [{ name: "f" }] }, 100), refused("functions"));
    assert.throws(() => parseSampling({ logprobs: true }, 100), refused("logprobs"));
    assert.throws(() => parseSampling({ response_format: { type: "json_object" } }, 100), refused("response_format"));
    assert.throws(() => parseSampling({ response_format: "json" }, 100), refused("response_format"));
    assert.doesNotThrow(() => parseSampling({ tools: [], logprobs: false, response_format: { type: "text" }, tool_choice: "none" }, 100));
  });
});
