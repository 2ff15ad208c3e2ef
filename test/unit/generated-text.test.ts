// The text of an answer generated a few tokens at a time (runtime/sessions/generated-text.ts): what
// may be streamed, where a stop string ends it, and characters split over tokens.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GeneratedText, type Detokenize } from "../../runtime/sessions/generated-text.js";

/** A vocabulary of whole strings, and of UTF-8 bytes as a byte-level one splits a character. */
const vocab = ["Hello", " world", ".", " The", " end", "<", "|", "im_end", "|>", "\xE2", "\x82", "\xAC", " stop"];
const detokenize: Detokenize = (tokens) => {
  const bytes: number[] = [];
  for (const t of tokens) for (const ch of vocab[t]!) bytes.push(ch.charCodeAt(0));
  return Buffer.from(bytes).toString("utf8");
};
const t = (...words: string[]) => words.map((w) => vocab.indexOf(w));

function stream(g: GeneratedText, steps: number[][]): string[] {
  const out = steps.map((s) => g.push(s));
  out.push(g.finish());
  return out;
}

describe("generated text", () => {
  it("sends each token's text as it comes, with no stop strings", () => {
    const g = new GeneratedText(detokenize, []);
    assert.deepEqual(stream(g, [t("Hello"), t(" world", ".")]), ["Hello", " world.", ""]);
    assert.equal(g.response, "Hello world.");
    assert.equal(g.stopped, false);
  });

  it("holds back what may start a stop string, and ends the answer before one", () => {
    const g = new GeneratedText(detokenize, ["<|im_end|>"]);
    assert.deepEqual(stream(g, [t("Hello"), t("<"), t("|"), t("im_end"), t("|>"), t(" world")]), ["Hello", "", "", "", "", "", ""]);
    assert.equal(g.response, "Hello");
    assert.equal(g.stopped, true);
  });

  it("sends held-back text once it turns out to be no stop string", () => {
    const g = new GeneratedText(detokenize, ["<|im_end|>"]);
    assert.deepEqual(stream(g, [t("Hello", "<"), t("|"), t(" world")]), ["Hello", "", "<| world", ""]);
    assert.equal(g.response, "Hello<| world");
  });

  it("sends held-back text at the end of an answer cut by its token limit", () => {
    const g = new GeneratedText(detokenize, ["<|im_end|>"]);
    assert.deepEqual(stream(g, [t("Hello"), t("<", "|")]), ["Hello", "", "<|"]);
    assert.equal(g.response, "Hello<|");
    assert.equal(g.stopped, false);
  });

  it("stops at the earliest of several stop strings, inside one token's text too", () => {
    const g = new GeneratedText(detokenize, [" end", "d."]);
    assert.deepEqual(stream(g, [t("Hello", " world"), t(".", " The", " end")]), ["Hello worl", "", ""]);
    assert.equal(g.response, "Hello worl");
  });

  it("ignores tokens after it stopped", () => {
    const g = new GeneratedText(detokenize, [" stop"]);
    assert.equal(g.push(t("Hello", " stop")), "Hello");
    assert.equal(g.push(t(" world")), "");
    assert.equal(g.finish(), "");
    assert.equal(g.response, "Hello");
  });

  it("waits for the rest of a character split over tokens", () => {
    const g = new GeneratedText(detokenize, []);
    assert.deepEqual(stream(g, [t("Hello"), t("\xE2"), t("\x82"), t("\xAC", ".")]), ["Hello", "", "", "\u20AC.", ""]);
    assert.equal(g.response, "Hello\u20AC.");
  });

  it("gives up waiting after four pieces (a token that is no character at all)", () => {
    const g = new GeneratedText(detokenize, []);
    const out = stream(g, [t("\xE2"), t("\xE2"), t("\xE2"), t("\xE2")]);
    assert.equal(out.join(""), g.response);
    assert.ok(g.response.length > 0);
  });

  it("refuses an empty stop string, which would stop every answer before it began", () => {
    assert.throws(() => new GeneratedText(detokenize, [""]), RangeError);
  });
});
