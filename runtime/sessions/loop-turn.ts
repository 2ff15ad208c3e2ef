// A greedy turn generated in the context's decode loop (runtime/model/decode-loop.ts) instead of
// node-llama-cpp's LlamaChat: the same prompt, the same tokens (greedy is the first highest logit
// either way), the same stop rules (the model's end-of-generation tokens and the chat wrapper's
// stop triggers, then the request's stop strings), and the sequence left holding the same tokens,
// so a turn after it reuses what LlamaChat's would.
//
// node-llama-cpp keeps a sequence's tokens in its own (internal) fields; the loop edits the KV
// cache natively, so this sets them as node-llama-cpp's own evaluation would, under the same
// sequence lock (sequence-state-files.ts does the same for state files).
import { acquireLock } from "lifecycle-utils";
import type { LlamaContextSequence, LlamaText } from "node-llama-cpp";
import type { GenerateOptions } from "../../contract/runtime-api.js";
import { DecodeLoop, type LoopJobEnd } from "../model/decode-loop.js";
import type { ModelHost } from "../model/model-host.js";
import { GeneratedText } from "./generated-text.js";
import { repeatPenalty } from "./sampling.js";

interface SequenceInternals {
  _sequenceId: number;
  _lock: object;
  _contextTokens: number[];
  _nextTokenIndex: number;
  _loadedTokenPredictions: unknown[];
  needsCheckpoints: boolean;
}

export interface LoopTurnResult {
  text: string;
  finishReason: "stop" | "length" | "aborted";
  completionTokens: number;
  cachedTokens: number;
}

/**
 * The sequence's internals when this turn can run in the loop: greedy with nothing else in the
 * chain, a model that needs no checkpoints (a sliding-window or recurrent cache cannot drop its
 * tail as the loop does), and node-llama-cpp's fields where they were.
 */
export function loopable(host: ModelHost, seq: LlamaContextSequence, opts: GenerateOptions): SequenceInternals | undefined {
  if (!host.decodeLoop.ok || opts.temperature !== 0 || opts.logitBias?.length || repeatPenalty(opts)) return undefined;
  const s = seq as unknown as Partial<SequenceInternals>;
  if (typeof s._sequenceId !== "number" || typeof s._lock !== "object" || !Array.isArray(s._contextTokens) || typeof s._nextTokenIndex !== "number"
    || !Array.isArray(s._loadedTokenPredictions) || s._loadedTokenPredictions.length > 0 || s.needsCheckpoints !== false) return undefined;
  if (!DecodeLoop.of(seq.context)) return undefined;
  return s as SequenceInternals;
}

/**
 * The chat wrapper's stop triggers split as the loop needs them: a trigger that is one token (the
 * model's EOS, `<|im_end|>` as a special token) ends the job natively; a trigger of plain text is
 * looked for in the text. A trigger of several special tokens is also one of text in every
 * wrapper node-llama-cpp ships, so nothing is lost.
 */
export function splitStopTriggers(host: ModelHost, triggers: readonly LlamaText[]): { tokens: number[]; texts: string[] } {
  const tokens: number[] = [], texts: string[] = [];
  for (const trigger of triggers) {
    if (trigger.values.every((v) => typeof v === "string")) {
      const text = trigger.values.join("");
      if (text.length > 0) texts.push(text);
      continue;
    }
    const asTokens = trigger.tokenize(host.model.tokenizer, "trimLeadingSpace");
    if (asTokens.length === 1) tokens.push(asTokens[0]!);
  }
  return { tokens, texts };
}

/**
 * Generates the answer to `prompt` (the whole conversation as tokens) on `seq`, reusing the
 * tokens it shares with what the sequence holds.
 */
export async function loopTurn(host: ModelHost, seq: LlamaContextSequence, s: SequenceInternals, prompt: readonly number[], stopTriggers: readonly LlamaText[],
  maxTokens: number, opts: GenerateOptions): Promise<LoopTurnResult> {
  const loop = DecodeLoop.of(seq.context)!;
  const lock = await acquireLock([s._lock, "evaluate"]);
  try {
    // At least the prompt's last token is decoded again: its logits give the first answer token.
    // The sequence's first `keep` tokens are the prompt's: what it holds is a prefix of prompt + answer.
    const keep = Math.min(seq.compareContextTokens(prompt as never).firstDifferentIndex, prompt.length - 1);
    const { tokens: stopTokens, texts } = splitStopTriggers(host, stopTriggers);
    const text = new GeneratedText((tokens, lastTokens) => host.model.detokenize(tokens as never, false, lastTokens as never), [...texts, ...(opts.stop ?? [])]);
    const generated: number[] = [];
    const kv = prompt.slice(0, keep);
    let answered = 0;
    const send = (chunk: string) => { if (chunk && opts.onText) opts.onText(chunk); };
    let cancel = () => {};
    const job = loop.start({
      sequenceId: s._sequenceId, keep, prompt: prompt.slice(keep), maxTokens, stopTokens,
      onTokens: (tokens) => {
        // Every token before the newest is in the KV cache now (status shows the count growing).
        if (kv.length === keep) kv.push(...prompt.slice(keep));
        kv.push(...generated.slice(kv.length - prompt.length), ...tokens.slice(0, -1));
        s._nextTokenIndex = kv.length;
        generated.push(...tokens);
        if (text.stopped) return;
        answered += tokens.length;
        send(text.push(tokens));
        if (text.stopped) cancel();
      },
    });
    cancel = job.cancel;
    // Joined (a job the loop refuses throws above and leaves the sequence as it was): its first
    // step drops what the sequence holds past `keep`.
    s._contextTokens = kv;
    s._nextTokenIndex = kv.length;
    const onAbort = () => job.cancel();
    opts.signal?.addEventListener("abort", onAbort);
    if (opts.signal?.aborted) job.cancel();
    let end: LoopJobEnd;
    try {
      end = await job.end;
    } catch (err) {
      // The loop could not run (the context went away): what the sequence holds is not known, so it is emptied.
      const held = [...prompt, ...generated];
      s._contextTokens = held;
      s._nextTokenIndex = held.length;
      await seq.clearHistory().catch(() => undefined);
      throw err;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
    }
    // What the KV cache holds, as node-llama-cpp's own evaluation would have recorded it.
    const held = [...prompt, ...generated].slice(0, end.kvTokens);
    s._contextTokens = held;
    s._nextTokenIndex = held.length;
    if (end.reason === "failed") throw new Error("the decode failed (llama_decode found no room in the context for the batch, or failed)");
    // Stopped before its first token, as LlamaChat does: the caller (session.ts) says who stopped it.
    if (end.reason === "cancelled" && generated.length === 0) throw abortError(opts.signal);
    if (!text.stopped) send(text.finish());
    const finishReason = text.stopped || end.reason === "stop" ? "stop" : opts.signal?.aborted ? "aborted" : end.reason === "length" ? "length" : "stop";
    return { text: text.response, finishReason, completionTokens: answered, cachedTokens: keep };
  } finally {
    lock.dispose();
  }
}

function abortError(signal: AbortSignal | undefined): unknown {
  return signal?.reason ?? new DOMException("the turn was stopped before its first token", "AbortError");
}
