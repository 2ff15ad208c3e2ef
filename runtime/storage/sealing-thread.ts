// A sealing thread's body (sealing-threads.ts starts it): one range at a time, answered as data.
import { parentPort } from "node:worker_threads";
import { runRange, type RangeJob } from "./sealed-chunks.js";
import { replyFor, type RangeReply } from "./sealing-threads.js";

parentPort!.on("message", (job: RangeJob) => {
  runRange(job).then(
    () => parentPort!.postMessage({ ok: true } satisfies RangeReply),
    (err: unknown) => parentPort!.postMessage(replyFor(err)),
  );
});
