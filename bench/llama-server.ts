// Figure 11: torpor against llama.cpp's own server, same machine, same llama.cpp (built from the
// source node-llama-cpp ships), same model (SmolLM2-135M-Instruct), same conversation, 2 threads.
// llama-server: slot save/restore to files (--slot-save-path) and the next turn on the restored slot.
// torpor: hibernate/rehydrate of a runtime process and the next turn. Interleaved runs.
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, open, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { RuntimeClient, sessionPath, type SubmitResponse } from "../contract/runtime-client.js";
import { freePort, startRuntime } from "../testbed/local-runtime.js";
import { realModel } from "../testbed/models.js";
import { REPO_ROOT } from "../testbed/paths.js";

const run = promisify(execFile);

export interface PeerResult {
  tokens: number;
  /** The first hibernated state's size (torpor's file); each run adds a turn. */
  stateBytes?: number;
  /** savedBytes: each run's state file. Both conversations grow by the same turn each run. */
  llamaServer: { saveMs: number[]; restoreMs: number[]; nextTurnMs: number[]; decodeTokPerSec: number[]; savedBytes: number[] };
  torpor: { hibernateMs: number[]; rehydrateMs: number[]; nextTurnMs: number[]; decodeTokPerSec: number[]; reused: number[]; savedBytes: number[] };
  /** The same conversation on a second runtime that seals its files (AES-256-GCM, staged in a node-local folder), same runs. */
  torporSealed?: { hibernateMs: number[]; rehydrateMs: number[]; reused: number[] };
  /** Writing the hibernated state's bytes to a new file on the same volume, with fsync: the durable floor. */
  fsyncFloorMs: number[];
  /** Aggregate decode of 4 concurrent streams: llama-server -np 4, torpor with a context per session, torpor with 4 sequences per context. */
  streams4?: { llamaServer: number[]; torporContextEach: number[]; torporShared: number[]; promptTokens: { llamaServer: number; torpor: number } };
}

/** The peer could not be run here: the figure is skipped with this reason, not failed. */
export class PeerUnavailable extends Error {}

/** The llama-server binary, built once and cached; undefined (with the reason printed) when it cannot be built. */
export async function llamaServerBinary(): Promise<string | undefined> {
  try {
    const { stdout } = await run(path.join(REPO_ROOT, "scripts", "build-llama-server.sh"), { maxBuffer: 64 << 20, timeout: 3600_000 });
    return stdout.trim().split("\n").at(-1);
  } catch (err) {
    console.log(`figure 11 skipped: llama-server could not be built (${String((err as { stderr?: string }).stderr ?? err).trim().split("\n").at(-1)})`);
    return undefined;
  }
}

export async function post(url: string, body: unknown): Promise<{ json: Record<string, unknown>; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const json = await res.json() as Record<string, unknown>;
  if (!res.ok) throw new Error(`${url}: ${res.status} ${JSON.stringify(json).slice(0, 300)}`);
  return { json, ms: performance.now() - t0 };
}

export interface PeerOptions {
  /** A GGUF path (default: the real model, SmolLM2). */
  model?: string;
  /** Also measure 4 concurrent streams (default true). */
  streams?: boolean;
  /** Also run a sealing runtime beside the unsealed one (default false). */
  sealed?: boolean;
  /**
   * Each run starts both conversations again from the history, so every run saves the same state
   * (by state size: at 40 tokens each turn added more than the history itself). Not with `sealed`.
   */
  fresh?: boolean;
}

export async function versusLlamaServer(binary: string, tokens: number, runs: number, opts: PeerOptions = {}): Promise<PeerResult> {
  const model = opts.model ?? await realModel();
  const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-peer-"));
  const ctx = Math.ceil(tokens * 1.5) + 1024;
  const rt = await startRuntime({ TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dir, TORPOR_THREADS: "2", TORPOR_MAX_CONTEXT_SIZE: String(ctx + 1024), TORPOR_LOG_LEVEL: "warn" });
  const sealedRt = opts.sealed ? await startRuntime({
    TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: path.join(dir, "sealed"), TORPOR_STAGING_DIR: path.join(dir, "staging"), TORPOR_THREADS: "2",
    TORPOR_MAX_CONTEXT_SIZE: String(ctx + 1024), TORPOR_LOG_LEVEL: "warn", TORPOR_SEALING_KEYS: `bench:${randomBytes(32).toString("base64")}`,
  }) : undefined;
  // The server picks its port after the runtime has bound its own (both ask for a free one).
  const port = await freePort();
  const server: ChildProcess = spawn(binary, ["-m", model, "--port", String(port), "--host", "127.0.0.1", "-c", String(ctx), "-np", "1", "-t", "2", "--slot-save-path", dir + "/", "--no-webui"], { stdio: ["ignore", "ignore", "pipe"] });
  let serverLog = "";
  server.stderr!.on("data", (d: Buffer) => { serverLog = (serverLog + d.toString()).slice(-4000); });
  server.once("exit", (code) => { if (code) console.log(`llama-server exited with ${code}: ${serverLog.slice(-1500)}`); });
  const base = `http://127.0.0.1:${port}`;
  const out: PeerResult = { tokens, fsyncFloorMs: [], llamaServer: { saveMs: [], restoreMs: [], nextTurnMs: [], decodeTokPerSec: [], savedBytes: [] }, torpor: { hibernateMs: [], rehydrateMs: [], nextTurnMs: [], decodeTokPerSec: [], reused: [], savedBytes: [] } };
  try {
    let up = false, exited: number | string | null = null;
    server.once("exit", (code, signal) => { exited = code ?? signal; });
    for (let i = 0; i < 600 && !up && exited === null; i++) {
      up = await fetch(`${base}/health`).then((r) => r.ok, () => false);
      if (!up) await new Promise((r) => setTimeout(r, 100));
    }
    if (!up) throw new PeerUnavailable(`llama-server did not come up${exited !== null ? ` (it exited: ${exited})` : ""}; its last words: ${serverLog.trim().split("\n").at(-1)}`);
    // A conversation of about `tokens` tokens (SmolLM2 makes about 14 of each note; the fixtures'
    // byte-level vocabulary one per character, about 40): the same text for both.
    const perNote = opts.model ? 40 : 14;
    const history = Array.from({ length: Math.ceil(tokens / perNote) }, (_, i) => `Note ${i}: the meeting moved to room ${i % 17}.`).join(" ");
    await rt.client.register("bench", "peer", { contextSize: ctx });
    const first = await rt.client.submit("bench", "peer", history, { max_tokens: 16, temperature: 0 });
    if (sealedRt) {
      out.torporSealed = { hibernateMs: [], rehydrateMs: [], reused: [] };
      await sealedRt.client.register("bench", "peer", { contextSize: ctx });
      await sealedRt.client.submit("bench", "peer", history, { max_tokens: 16, temperature: 0 });
    }
    out.tokens = first.usage.prompt_tokens;
    // Both save states of the same number of tokens: llama-server's conversation grows by each
    // turn like the session's, and is padded to the session's length (its chat template adds
    // tokens a raw prompt lacks). A slot that kept only the history and the last question restored
    // less than half the session's state at 40 tokens: 9 MiB rehydrates "took" 10 ms against 3 ms
    // restores of 4 MiB.
    let prompt = history, slotTokens = 0;
    const extend = async (text: string, nPredict: number) => {
      const res = await post(`${base}/completion`, { prompt: prompt + text, n_predict: nPredict, cache_prompt: true, id_slot: 0, temperature: 0 });
      prompt += text + String(res.json.content ?? "");
      slotTokens = Number(res.json.tokens_evaluated ?? 0) + Number(res.json.tokens_predicted ?? 0);
      return res;
    };
    const padTo = async (tokens: number) => {
      // " x" is one token or two (a byte-level vocabulary): halving the gap each time never overshoots.
      for (let i = 0; i < 8 && tokens - slotTokens > 1; i++) await extend(" x".repeat(Math.max(1, Math.floor((tokens - slotTokens - 1) / 2))), 1);
    };
    await extend("", 16);
    let session = "peer";
    for (let r = 0; r < runs; r++) {
      if (opts.fresh && r > 0) {
        await rt.client.delete("bench", session);
        session = `peer-${r}`;
        await rt.client.register("bench", session, { contextSize: ctx });
        await rt.client.submit("bench", session, history, { max_tokens: 16, temperature: 0 });
        await post(`${base}/slots/0?action=erase`, {});
        prompt = history;
        slotTokens = 0;
        await extend("", 16);
      }
      await padTo((await rt.client.status("bench", session)).tokenCount);
      // llama-server: save, erase, restore, next turn. Each timed write starts with nothing dirty in
      // the page cache: the server's save does not fsync, and its writeback must not land on the
      // fsync timed next (it did: a 99 MiB hibernate measured 209 ms in the run, 80 ms alone).
      settleWriteback();
      const save = await post(`${base}/slots/0?action=save`, { filename: "peer.bin" });
      out.llamaServer.saveMs.push(save.ms);
      out.llamaServer.savedBytes.push(Number(save.json.n_written ?? NaN));
      await post(`${base}/slots/0?action=erase`, {});
      const restore = await post(`${base}/slots/0?action=restore`, { filename: "peer.bin" });
      out.llamaServer.restoreMs.push(restore.ms);
      const turn = await extend(` Question ${r}: which room?`, 32);
      out.llamaServer.nextTurnMs.push(turn.ms);
      const t = turn.json.timings as { predicted_per_second?: number } | undefined;
      if (t?.predicted_per_second) out.llamaServer.decodeTokPerSec.push(t.predicted_per_second);
      // torpor: hibernate, rehydrate (inside the next turn), next turn.
      settleWriteback();
      const h = await rt.client.hibernate("bench", session);
      out.torpor.hibernateMs.push(h.record!.durationMs);
      out.torpor.savedBytes.push(h.record!.bytes);
      out.stateBytes ??= h.record!.bytes; // the first: later runs add a turn each, unless fresh
      settleWriteback();
      out.fsyncFloorMs.push(await writeWithFsync(path.join(dir, `floor-${r}.bin`), h.record!.bytes));
      const { result: next, ms, decodeMs } = await streamedTurn(rt.client, "bench", session, `Question ${r}: which room?`, 32);
      out.torpor.nextTurnMs.push(ms);
      out.torpor.rehydrateMs.push(next.torpor.rehydrate_ms ?? NaN);
      out.torpor.reused.push(next.usage.prompt_tokens_details.cached_tokens);
      // Like llama-server's own timing: from the first generated token to the last.
      if (next.usage.completion_tokens > 1) out.torpor.decodeTokPerSec.push((next.usage.completion_tokens - 1) / (decodeMs / 1000));
      if (sealedRt && out.torporSealed) {
        settleWriteback();
        out.torporSealed.hibernateMs.push((await sealedRt.client.hibernate("bench", "peer")).record!.durationMs);
        const sealedNext = await sealedRt.client.submit("bench", "peer", `Question ${r}: which room?`, { max_tokens: 32, temperature: 0 });
        out.torporSealed.rehydrateMs.push(sealedNext.torpor.rehydrate_ms ?? NaN);
        out.torporSealed.reused.push(sealedNext.usage.prompt_tokens_details.cached_tokens);
      }
    }
  } finally {
    server.kill("SIGTERM");
    await rt.stop();
    await sealedRt?.stop();
    await rm(dir, { recursive: true, force: true });
  }
  if (opts.streams !== false) out.streams4 = await fourStreams(binary, model, runs);
  return out;
}

/** Flushes every dirty page on the machine (sync(1)), so that a timed write pays for its own bytes only. */
function settleWriteback(): void {
  execFileSync("sync");
}

/** The time to write `bytes` to a new file and fsync it (what any durable save must at least pay). */
async function writeWithFsync(file: string, bytes: number): Promise<number> {
  const chunk = Buffer.alloc(1 << 20, 7);
  const t0 = performance.now();
  const fh = await open(file, "w", 0o600);
  try {
    for (let left = bytes; left > 0; left -= chunk.length) await fh.write(chunk, 0, Math.min(left, chunk.length));
    await fh.sync();
  } finally { await fh.close(); }
  const ms = performance.now() - t0;
  await rm(file, { force: true });
  return ms;
}

/**
 * A turn streamed from the runtime (its SSE route): the whole time, and the time from the first
 * piece of text to the last, which decoding alone fills (the prompt's evaluation comes before it).
 */
async function streamedTurn(client: RuntimeClient, ns: string, name: string, prompt: string, maxTokens: number): Promise<{ result: SubmitResponse; ms: number; decodeMs: number }> {
  const t0 = performance.now();
  const res = await client.send("POST", `${sessionPath(ns, name)}/submit`, { prompt, max_tokens: maxTokens, temperature: 0, stream: true });
  let buf = "", first = 0, last = 0, result: SubmitResponse | undefined;
  for await (const chunk of res) {
    buf += (chunk as Buffer).toString("utf8");
    for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
      const data = buf.slice(0, i).replace(/^data: /, "");
      buf = buf.slice(i + 2);
      if (data === "[DONE]") continue;
      const event = JSON.parse(data) as { text?: string; error?: { message: string } } & Partial<SubmitResponse>;
      if (event.error) throw new Error(`streamed turn failed: ${event.error.message}`);
      if (typeof event.text === "string") { last = performance.now(); first ||= last; }
      if (event.usage) result = event as SubmitResponse;
    }
  }
  if (!result) throw new Error(`streamed turn ended without a result (HTTP ${res.statusCode})`);
  return { result, ms: performance.now() - t0, decodeMs: last - first };
}

/** llama-server on a free local port, once /health answers. */
export async function startServer(binary: string, args: string[]): Promise<{ base: string; stop: () => void }> {
  const port = await freePort();
  const server = spawn(binary, ["--port", String(port), "--host", "127.0.0.1", "--no-webui", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  server.stderr!.on("data", (d: Buffer) => { log = (log + d.toString()).slice(-4000); });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (server.exitCode !== null) break;
    if (await fetch(`${base}/health`).then((r) => r.ok, () => false)) return { base, stop: () => server.kill("SIGTERM") };
    await new Promise((r) => setTimeout(r, 100));
  }
  server.kill("SIGKILL");
  throw new PeerUnavailable(`llama-server ${args.join(" ")} did not come up: ${log.trim().split("\n").at(-1)}`);
}

const STREAM_TOKENS = 48;
const streamPrompt = (i: number) => `Write a short story about a lighthouse keeper number ${i}.`;

/**
 * The tokens a torpor session evaluates for a first turn: the model's chat template around the
 * question, rendered as the runtime renders it. llama-server's raw /completion gets these token ids,
 * so both sides decode the same prompt (the raw question alone is 13 tokens against the template's
 * 22; its own chat route adds a default system prompt torpor's lacks: 42).
 */
async function chatPromptTokens(model: string, prompts: string[]): Promise<number[][]> {
  const { getLlama, resolveChatWrapper } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never" });
  const vocab = await llama.loadModel({ modelPath: model, vocabOnly: true });
  try {
    const wrapper = resolveChatWrapper(vocab);
    return prompts.map((text) => wrapper.generateContextState({ chatHistory: [{ type: "user", text }, { type: "model", response: [] }] })
      .contextText.tokenize(vocab.tokenizer).map(Number));
  } finally {
    await vocab.dispose();
    await llama.dispose();
  }
}

/**
 * Tokens per second over 4 first turns running at once (completion tokens / wall time), each side
 * given the same prompt tokens and asked for the same number of tokens: fresh sessions each round.
 */
export async function fourStreams(binary: string, model: string, runs: number): Promise<PeerResult["streams4"]> {
  const out = { llamaServer: [] as number[], torporContextEach: [] as number[], torporShared: [] as number[], promptTokens: { llamaServer: 0, torpor: 0 } };
  const prompts = await chatPromptTokens(model, Array.from({ length: 4 * (runs + 1) }, (_, i) => streamPrompt(i)));
  const server = await startServer(binary, ["-m", model, "-c", String(4 * 1024), "-np", "4", "-t", "2"]);
  const dirs = await Promise.all([0, 1].map(() => mkdtemp(path.join(os.tmpdir(), "torpor-streams-"))));
  const runtimes = await Promise.all(["1", "4"].map((seqs, i) => startRuntime({
    TORPOR_MODEL: model, TORPOR_HIBERNATION_DIR: dirs[i]!, TORPOR_THREADS: "2",
    TORPOR_SEQUENCES_PER_CONTEXT: seqs, TORPOR_LOG_LEVEL: "warn",
  })));
  try {
    // Round 0 warms up (torpor allocates its contexts on the first turn); it is not counted.
    for (let r = 0; r <= runs; r++) {
      const ids = [0, 1, 2, 3].map((s) => 4 * r + s);
      let t0 = performance.now();
      // ignore_eos: the server decodes all the tokens, as torpor's turns do here (they end at max_tokens).
      const peer = await Promise.all(ids.map((id, s) => post(`${server.base}/completion`, { prompt: prompts[id], n_predict: STREAM_TOKENS, id_slot: s, temperature: 0, cache_prompt: false, ignore_eos: true })));
      const peerTps = peer.reduce((n, p) => n + Number((p.json.timings as { predicted_n?: number }).predicted_n ?? 0), 0) / ((performance.now() - t0) / 1000);
      if (r > 0) out.llamaServer.push(peerTps);
      out.promptTokens.llamaServer = Number((peer[0]!.json.timings as { prompt_n?: number }).prompt_n ?? 0);
      for (const [i, rt] of runtimes.entries()) {
        for (let s = 0; s < 4; s++) {
          if (r > 0) await rt.client.delete("bench", `s${i}-${s}-${r - 1}`);
          await rt.client.register("bench", `s${i}-${s}-${r}`, { contextSize: 1024 });
        }
        t0 = performance.now();
        const done = await Promise.all(ids.map((id, s) => rt.client.submit("bench", `s${i}-${s}-${r}`, streamPrompt(id), { max_tokens: STREAM_TOKENS, temperature: 0 })));
        const tps = done.reduce((n, d) => n + d.usage.completion_tokens, 0) / ((performance.now() - t0) / 1000);
        if (r > 0) (i === 0 ? out.torporContextEach : out.torporShared).push(tps);
        out.promptTokens.torpor = done[0]!.usage.prompt_tokens;
      }
    }
  } finally {
    server.stop();
    await Promise.all(runtimes.map((rt) => rt.stop()));
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  }
  return out;
}
