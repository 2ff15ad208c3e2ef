// The torpor runtime itself on a GPU: node-llama-cpp's prebuilt CUDA binaries with a
// libggml-cuda.so built on the GPU machine from the same llama.cpp (bench/gpu/runtime.sh), the
// runtime's own SessionManager and hibernation store, the model the C++ probe writes.
//
//   node dist/bench/gpu/runtime-check.js MODEL.gguf OUT.json [--cpu]
//
// What it measures, each section on its own (a failure is recorded and the next one runs):
// - where node-llama-cpp put the model, VRAM before and after;
// - decode tok/s of 1, 4 and 16 sessions sharing one context, in the runtime's decode loop
//   (TORPOR_DECODE_LOOP, the default) and through node-llama-cpp's LlamaChat with batch gathering,
//   interleaved, and for the latter how many sequences each decode carried and where its time went;
// - hibernate and rehydrate of one long session: times, VRAM given back, greedy continuation
//   after the rehydrate equal to a twin's that never left memory;
// - sealed against unsealed hibernate and rehydrate (figure 9) on this state, and on the CPU
//   figure's generated model, where the machine's cores decide (the isolation issue's 1.3x goal).
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ModelHost } from "../../runtime/model/model-host.js";
import type { SessionManager } from "../../runtime/sessions/session-manager.js";
import { recordingDecodeBatches, type StepTimes } from "../../testbed/decode-batches.js";
import { post, startServer } from "../llama-server.js";
import { benchManager } from "../harness.js";
import { sealingCost } from "../sealing.js";

const [modelPath, outPath] = process.argv.slice(2);
const cpu = process.argv.includes("--cpu");
if (!modelPath || !outPath) { console.error("usage: runtime-check.js MODEL.gguf OUT.json [--cpu]"); process.exit(2); }
const out: Record<string, unknown> = { cores: os.cpus().length, cpu: os.cpus()[0]?.model };
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1] ?? NaN;
const mib = (b: number) => Math.round(b / 2 ** 20);
const say = (...a: unknown[]) => console.log(...a);
const ROUNDS = Number(process.env.ROUNDS ?? 5), TOKENS = Number(process.env.TOKENS ?? 64);

/** TORPOR_CHECK_SECTIONS=host,sealing-figure-9 runs a subset (runtime.sh does when CUDA did not build). */
const wanted = process.env.TORPOR_CHECK_SECTIONS?.split(",");

async function section(name: string, run: () => Promise<unknown>): Promise<void> {
  if (wanted && !wanted.includes(name)) return;
  const t0 = performance.now();
  say(`\n=== ${name}`);
  try {
    out[name] = await run();
  } catch (err) {
    out[name] = { error: (err as Error).stack ?? String(err) };
    say(`  FAILED: ${(err as Error).message}`);
  }
  say(`  (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  await writeFile(outPath!, JSON.stringify(out, null, 1));
}

const newTimes = (): StepTimes => ({ decodes: 0, decodeMs: 0, samples: 0, sampleMs: 0 });


const host = await ModelHost.load({ model: modelPath, modelCacheDir: "", gpu: cpu ? false : "auto", gpuLayers: cpu ? 0 : "auto", threads: 0 });
const scratch = await mkdtemp(path.join(os.tmpdir(), "torpor-gpu-check-"));
try {
  await section("host", async () => {
    const v = await host.vramState();
    const r = { gpu: host.llama.gpu, onGpu: host.onGpu, gpuLayers: host.model.gpuLayers, flashAttention: host.flashAttention, vramUsedMiB: mib(v.used), vramTotalMiB: mib(v.total), modelMiB: mib(host.model.size) };
    say(" ", JSON.stringify(r));
    return r;
  });

  await section("streams", async () => {
    const rows: Array<Record<string, unknown>> = [];
    for (const n of (process.env.STREAMS ?? "1,4,16").split(",").map(Number)) {
      const logs = { off: [] as number[], on: [] as number[] };
      const times = { off: newTimes(), on: newTimes() };
      // "off": node-llama-cpp's batches, recorded (recordingDecodeBatches leaves greedy turns to
      // LlamaChat); "on": the decode loop, whose decodes are native and not recorded.
      const mgrs = {
        off: benchManager(recordingDecodeBatches(host, logs.off, times.off), await mkdtemp(path.join(scratch, "s-")), { sequencesPerContext: n, gatherBatches: true }),
        on: benchManager(host, await mkdtemp(path.join(scratch, "s-")), { sequencesPerContext: n, gatherBatches: true }),
      };
      const sessions = { off: [] as Awaited<ReturnType<SessionManager["register"]>>[], on: [] as Awaited<ReturnType<SessionManager["register"]>>[] };
      for (const k of ["off", "on"] as const) for (let i = 0; i < n; i++) sessions[k].push(await mgrs[k].register({ namespace: "gpu", name: `s${i}`, contextSize: 1024 }));
      const tps = { off: [] as number[], on: [] as number[] };
      const steps = { off: [] as Array<StepTimes & { wallMs: number }>, on: [] as Array<StepTimes & { wallMs: number }> };
      for (let r = 0; r <= ROUNDS; r++) {
        for (const k of (r % 2 ? ["on", "off"] : ["off", "on"]) as Array<"off" | "on">) {
          logs[k].length = 0;
          Object.assign(times[k], newTimes());
          const t0 = performance.now();
          const done = await Promise.all(sessions[k].map((s, i) => s.submit(`Tell me a story about lighthouse number ${i + r * n}.`, { maxTokens: TOKENS, temperature: 0 })));
          const tokens = done.reduce((a, d) => a + d.completionTokens, 0);
          const wallMs = performance.now() - t0;
          if (r > 0) { tps[k].push(tokens / (wallMs / 1000)); steps[k].push({ wallMs, ...times[k] }); } // round 0 allocates the contexts
          if (process.env.VERBOSE) say(`    ${n} sessions, decode loop ${k}, round ${r}: ${tokens} tokens in ${(performance.now() - t0).toFixed(0)} ms`);
        }
      }
      for (const k of ["off", "on"] as const) {
        const hist: Record<number, number> = {};
        for (const x of logs[k]) hist[x] = (hist[x] ?? 0) + 1;
        // Per decode: wall time, time inside llama_decode, and sampling (summed over sequences:
        // the calls overlap on libuv's pool, so the sum can exceed the wall time).
        const last = steps[k].at(-1)!;
        const perDecode = last.decodes === 0 ? undefined : { wallMs: last.wallMs / last.decodes, decodeMs: last.decodeMs / last.decodes, sampleMsSummed: last.sampleMs / last.decodes, sampleMsEach: last.sampleMs / Math.max(1, last.samples) };
        const row = { sessions: n, decodeLoop: k === "on" && host.decodeLoop.ok, tokPerS: median(tps[k]), runs: tps[k].map((x) => Math.round(x)), decodesLastRound: logs[k].length, sequencesPerDecode: hist, perDecodeLastRound: perDecode };
        say(" ", JSON.stringify(row));
        rows.push(row);
      }
      for (const m of Object.values(mgrs)) await m.close();
    }
    return rows;
  });

  // The same decode through llama-server (built there from the same llama.cpp: runtime.sh sets
  // TORPOR_LLAMA_SERVER) with n slots: the peer the runtime's streams are measured against. Raw
  // prompts without a chat template, ignore_eos so that every slot decodes all its tokens, as the
  // CPU figure 11 does.
  if (process.env.TORPOR_LLAMA_SERVER) await section("peer-streams", async () => {
    const rows: Array<Record<string, unknown>> = [];
    for (const n of (process.env.STREAMS ?? "1,4,16").split(",").map(Number)) {
      const server = await startServer(process.env.TORPOR_LLAMA_SERVER!, ["-m", modelPath!, "-c", String(n * 1024), "-np", String(n), "-ngl", cpu ? "0" : "999"]);
      try {
        const tps: number[] = [];
        for (let r = 0; r <= ROUNDS; r++) {
          const t0 = performance.now();
          const done = await Promise.all(Array.from({ length: n }, (_, i) => post(`${server.base}/completion`, { prompt: `Tell me a story about lighthouse number ${i + r * n}.`, n_predict: TOKENS, id_slot: i, temperature: 0, cache_prompt: false, ignore_eos: true })));
          const tokens = done.reduce((a, d) => a + Number((d.json.timings as { predicted_n?: number }).predicted_n ?? 0), 0);
          if (r > 0) tps.push(tokens / ((performance.now() - t0) / 1000));
        }
        const row = { slots: n, tokPerS: median(tps), runs: tps.map((x) => Math.round(x)) };
        say(" ", JSON.stringify(row));
        rows.push(row);
      } finally { server.stop(); }
    }
    return rows;
  });

  await section("hibernate", async () => {
    const dir = await mkdtemp(path.join(scratch, "h-"));
    const m = benchManager(host, dir, { contextGraceMs: 0 });
    const twinM = benchManager(host, await mkdtemp(path.join(scratch, "t-")));
    // About a token a letter with this vocabulary: a state of about 4,000 tokens, as the C++ probe's.
    const prompt = Array.from({ length: 4000 }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
    const ctx = 8192;
    const s = await m.register({ namespace: "gpu", name: "long", contextSize: ctx });
    const twin = await twinM.register({ namespace: "gpu", name: "twin", contextSize: ctx });
    const v0 = await host.vramState();
    const first = await s.submit(prompt, { maxTokens: 1, temperature: 0 });
    await twin.submit(prompt, { maxTokens: 1, temperature: 0 });
    const v1 = await host.vramState();
    const runs: Array<{ hibernateMs: number; rehydrateMs: number; vramFreedMiB: number; stateMiB: number }> = [];
    for (let i = 0; i < 5; i++) {
      const before = await host.vramState();
      const h = await s.hibernate("gpu-check");
      const after = await host.vramState();
      const w = await s.warm();
      runs.push({ hibernateMs: h.record!.durationMs, rehydrateMs: w.rehydrateMs!, vramFreedMiB: mib(before.used - after.used), stateMiB: mib(h.record!.bytes) });
    }
    const next = await s.submit(" and then", { maxTokens: 32, temperature: 0 });
    const ref = await twin.submit(" and then", { maxTokens: 32, temperature: 0 });
    const r = {
      promptTokens: first.promptTokens, contextSize: ctx, contextVramMiB: mib(v1.used - v0.used) / 2, runs,
      hibernateMs: median(runs.map((x) => x.hibernateMs)), rehydrateMs: median(runs.map((x) => x.rehydrateMs)),
      continuationEqual: next.text === ref.text, cachedTokens: next.cachedTokens, promptTokensNext: next.promptTokens,
    };
    say(" ", JSON.stringify({ ...r, runs: undefined }));
    for (const x of runs) say("   ", JSON.stringify(x));
    await m.close();
    await twinM.close();
    return r;
  });

  await section("sealing-on-this-model", async () => {
    const r = await sealingCost(host, 3500, 7);
    const s = { stateMiB: Math.round(r.stateMiB), hibernate: { sealed: median(r.sealed.hibernateMs), plain: median(r.plain.hibernateMs) }, rehydrate: { sealed: median(r.sealed.rehydrateMs), plain: median(r.plain.rehydrateMs) }, aead: r.aead.map((a) => ({ threads: a.threads, sealMs: median(a.sealMs), openMs: median(a.openMs) })) };
    say(" ", JSON.stringify(s), `hibernate ${(s.hibernate.sealed / s.hibernate.plain).toFixed(2)}x, rehydrate ${(s.rehydrate.sealed / s.rehydrate.plain).toFixed(2)}x`);
    return { ...s, raw: r };
  });
} finally {
  await host.dispose();
}

// Figure 9 exactly as `npm run bench -- --only sealing` runs it on the 2-core VM: same generated
// model on the CPU, same 3,500 tokens, 9 interleaved runs. Only the machine differs.
await section("sealing-figure-9", async () => {
  const r = await sealingCost({ layers: 8, embedding: 512, feedForward: 512, heads: 8, contextLength: 16384, seed: 3 }, 3500, 9);
  const s = { stateMiB: Math.round(r.stateMiB), hibernate: { sealed: median(r.sealed.hibernateMs), plain: median(r.plain.hibernateMs) }, rehydrate: { sealed: median(r.sealed.rehydrateMs), plain: median(r.plain.rehydrateMs) }, aead: r.aead.map((a) => ({ threads: a.threads, sealMs: median(a.sealMs), openMs: median(a.openMs) })) };
  say(" ", JSON.stringify(s), `hibernate ${(s.hibernate.sealed / s.hibernate.plain).toFixed(2)}x, rehydrate ${(s.rehydrate.sealed / s.rehydrate.plain).toFixed(2)}x`);
  return { ...s, raw: r };
});
await rm(scratch, { recursive: true, force: true });
say(`\nJSON in ${outPath}`);
process.exit(0);
