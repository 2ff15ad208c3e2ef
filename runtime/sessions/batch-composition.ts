// How a shared context's batches are composed: which sequences' tokens go into one llama_decode,
// in which order. Two hooks on node-llama-cpp 3.22.1 internals; the "batch composition" test in
// test/runtime/session.test.ts fails if either stops working.
//
// Order. A context of several sequences keeps a KV stream per sequence (node-llama-cpp sets
// kv_unified=false), and llama.cpp then puts in one ubatch only sequences whose ids follow each
// other in batch order (llama_batch_allocr::split_equal, "sequential"): a batch queued as
// 0, 2, 1, 3 runs as two graph computes ({0, 1} and {2, 3}), and 0, 3, 2, 1 as three. node-llama-cpp
// queues in the order the sequences' tokens arrive, which varies from step to step. Sorted by
// sequence id, four generating sessions decoded every step in one compute: in process, 2 cores,
// 24-34 ms a step sorted, 22-42 ms as queued, the slow rounds mostly out of order (llama-server
// adds its slots in order).
//
// Gathering. The sequence whose continuation is a few promise hops longer misses the batch that
// node-llama-cpp composes in the same microtask run in which the previous decode's results are
// handed out: 4 generating sequences decoded as 3 + 1 every step (64 decodes for 48 steps). One
// turn of the event loop after each batch lets every continuation queue first: 48 decodes of 4.
// Greedy tokens read off the logits (greedy-sampling.ts) come back together and join anyway; the
// turn matters for every other sampling, whose tokens come back one pool job at a time.
import type { LlamaContext } from "node-llama-cpp";

type AfterBatchAction = (sequenceStateLength: number) => void | Promise<void>;
interface QueuedDecodeOptions { afterBatchAction?: AfterBatchAction }
type DecodeTokens = (options: QueuedDecodeOptions, logitDataMapper: unknown) => Promise<unknown>;
interface Internals { _decodeTokens?: DecodeTokens; _queuedDecodes?: Array<{ sequenceId: number }> }

/**
 * Makes the context queue its decodes in sequence order, and, with `gather`, wait one event-loop
 * turn after each batch. False where node-llama-cpp's internals changed (the context keeps its own
 * batching: correct, in more graph computes).
 */
export function composeBatches(context: LlamaContext, opts: { gather: boolean }): boolean {
  // The one place between a decode and the next batch's composition that node-llama-cpp awaits,
  // and its queue, which it reads when it composes the batch (after this turn of the event loop).
  const internals = context as unknown as Internals;
  const decode = internals._decodeTokens;
  if (typeof decode !== "function" || !Array.isArray(internals._queuedDecodes)) return false;
  let turn: Promise<void> | undefined;
  // One pending turn at a time: the sequences of a batch that finish together wait for the same one.
  const nextTurn = (): Promise<void> => turn ??= new Promise((resolve) => setImmediate(() => { turn = undefined; resolve(); }));
  internals._decodeTokens = (options, logitDataMapper) => {
    const queued = decode.call(context, opts.gather ? {
      ...options,
      afterBatchAction: async (length: number) => {
        await options.afterBatchAction?.(length);
        await nextTurn();
      },
    } : options, logitDataMapper);
    // Pushed synchronously by the call above; a stable sort keeps each sequence's own items in order.
    internals._queuedDecodes?.sort((a, b) => a.sequenceId - b.sequenceId);
    return queued;
  };
  return true;
}
