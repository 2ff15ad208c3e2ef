// Sessions that share a context decode in one batch only if each has queued its next token by the
// time the context composes the next batch. node-llama-cpp 3.22.1 composes it in the same microtask
// run in which the previous decode's results are handed out, so the sequence whose continuation is
// a few promise hops longer misses it, every step: 4 generating sequences decoded as batches of 3
// plus a batch of 1 (64 decodes for 48 steps), 16 as 15 plus 1. One turn of the event loop after
// each batch lets every continuation queue first: 48 decodes of 4 for the same 192 tokens. On a GPU,
// where a decode costs about the same for 1 token or 16, that raised 4 sessions' tok/s 1.13-1.26x
// (H200); on the 2-core CPU here a 4-token decode costs twice a 3-token one, and it lowered them.
// Hence the setting (TORPOR_BATCH_GATHERING, "auto": on where the model is on a GPU).
import type { LlamaContext } from "node-llama-cpp";

type AfterBatchAction = (sequenceStateLength: number) => void | Promise<void>;
interface QueuedDecodeOptions { afterBatchAction?: AfterBatchAction }
type DecodeTokens = (options: QueuedDecodeOptions, logitDataMapper: unknown) => Promise<unknown>;

/** Whether the context was given the hook (false: node-llama-cpp changed its internals, and keeps its own batching). */
export function gatherBatches(context: LlamaContext): boolean {
  // An internal of node-llama-cpp: the one place between a decode and the next batch's composition
  // that it awaits. The "with batch gathering" test in test/runtime/session.test.ts fails if it moves.
  const internals = context as unknown as { _decodeTokens?: DecodeTokens };
  const decode = internals._decodeTokens;
  if (typeof decode !== "function") return false;
  let turn: Promise<void> | undefined;
  // One pending turn at a time: the sequences of a batch that finish together wait for the same one.
  const nextTurn = (): Promise<void> => turn ??= new Promise((resolve) => setImmediate(() => { turn = undefined; resolve(); }));
  internals._decodeTokens = (options, logitDataMapper) => decode.call(context, {
    ...options,
    afterBatchAction: async (length: number) => {
      await options.afterBatchAction?.(length);
      await nextTurn();
    },
  }, logitDataMapper);
  return true;
}
