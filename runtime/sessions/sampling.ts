// How the OpenAI sampling fields a request carries become node-llama-cpp's generation options.
import { TokenBias, type LLamaContextualRepeatPenalty, type Token } from "node-llama-cpp";
import { TorporError } from "../../contract/errors.js";
import type { GenerateOptions } from "../../contract/runtime-api.js";
import type { ModelHost } from "../model/model-host.js";

/** Tokens the OpenAI penalties look back on, as llama-server's `repeat_last_n`. */
const PENALTY_LAST_TOKENS = 64;

/**
 * OpenAI's penalties subtract from a token's logit, and neither is on unless asked (the greedy
 * answer is then the model's own, as from llama-server). `penalty: 1` because node-llama-cpp
 * documents a multiplicative 1.1 as its default once a repeat penalty is given.
 */
export function repeatPenalty(opts: GenerateOptions): false | LLamaContextualRepeatPenalty {
  if (!opts.frequencyPenalty && !opts.presencePenalty) return false;
  return {
    penalty: 1, lastTokens: PENALTY_LAST_TOKENS, penalizeNewLine: true,
    frequencyPenalty: opts.frequencyPenalty ?? 0, presencePenalty: opts.presencePenalty ?? 0,
  };
}

/** OpenAI's `logit_bias`: added to the token's logit; -100 bans it, as OpenAI documents. */
export function tokenBias(host: ModelHost, bias: Array<[number, number]>): TokenBias {
  checkVocabulary(host, bias);
  const out = new TokenBias(host.model.tokenizer);
  for (const [token, value] of bias) out.set(token as Token, value <= -100 ? "never" : { logit: value });
  return out;
}

/** Token ids are the model's own: one past its vocabulary is the caller's mistake, refused before any wake. */
export function checkVocabulary(host: Pick<ModelHost, "vocabularySize">, bias: Array<[number, number]> | undefined): void {
  const vocabulary = host.vocabularySize;
  const outside = vocabulary === undefined ? undefined : bias?.find(([token]) => token >= vocabulary);
  if (outside) {
    throw new TorporError("bad_request", `logit_bias: token ${outside[0]} is not in the model's vocabulary of ${vocabulary} tokens`, { field: "logit_bias" });
  }
}
