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

  it("takes OpenAI's penalties and logit_bias, refusing what they cannot be; zero means none", () => {
    const p = parseSampling({ frequency_penalty: 0.5, presence_penalty: -1, logit_bias: { "15": -100, "2": 0, "28": 3.5 } }, 100);
    assert.equal(p.frequencyPenalty, 0.5);
    assert.equal(p.presencePenalty, -1);
    assert.deepEqual(p.logitBias, [[15, -100], [28, 3.5]]);
    const none = parseSampling({ frequency_penalty: 0, presence_penalty: 0, logit_bias: { "7": 0 } }, 100);
    assert.deepEqual([none.frequencyPenalty, none.presencePenalty, none.logitBias], [undefined, undefined, undefined]);
    for (const body of [{ frequency_penalty: 2.5 }, { frequency_penalty: "1" }]) assert.throws(() => parseSampling(body, 100), refused("frequency_penalty"), JSON.stringify(body));
    assert.throws(() => parseSampling({ presence_penalty: -3 }, 100), refused("presence_penalty"));
    const many = Object.fromEntries(Array.from({ length: 301 }, (_, i) => [String(i), 1]));
    for (const logit_bias of [[1], "x", { "-1": 1 }, { "01": 1 }, { "1.5": 1 }, { fox: 1 }, { "3": 101 }, { "3": "1" }, many]) {
      assert.throws(() => parseSampling({ logit_bias }, 100), refused("logit_bias"), JSON.stringify(logit_bias).slice(0, 40));
    }
  });

  it("takes stream_options.include_usage with a stream only", () => {
    assert.equal(parseSampling({ stream: true, stream_options: { include_usage: true } }, 100).streamUsage, true);
    assert.equal(parseSampling({ stream: true }, 100).streamUsage, false);
    assert.throws(() => parseSampling({ stream_options: { include_usage: true } }, 100), refused("stream_options"));
    assert.throws(() => parseSampling({ stream: true, stream_options: { include_usage: "yes" } }, 100), refused("stream_options.include_usage"));
    assert.throws(() => parseSampling({ stream: true, stream_options: [] }, 100), refused("stream_options"));
  });
});
