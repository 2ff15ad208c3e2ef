// `npm run bench [-- --out FILE] [-- --quick]`: the figures of the benchmark issue that run on one
// machine. Every figure is a median of several runs with min and max; every comparison is a ratio
// measured in the same run. Benchmarks report against goals; they never fail.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DEFAULT_TEST_MODEL, ensureTestModel, type TestModelParams } from "../fixtures/gguf/test-model.js";
import { MODEL_DIR } from "../testbed/paths.js";
import { startTestbed } from "../testbed/testbed.js";
import { eventually, installTorpor, session as sessionManifest, startEntryPoint, TOKEN } from "../testbed/torpor-on-testbed.js";
import { freePort } from "../testbed/local-runtime.js";
import type { InferenceSession } from "../contract/inference-session.js";
import { bulkheadSwap } from "./bulkhead-swap.js";
import { checkpointCost } from "./checkpoints.js";
import { fourStreams, llamaServerBinary, PeerUnavailable, versusLlamaServer, type PeerResult } from "./llama-server.js";
import { sealingCost } from "./sealing.js";
import { benchManager, harness } from "./harness.js";
import { operatorScale } from "./operator-scale.js";

const { values: args } = parseArgs({ options: { out: { type: "string", default: "bench-results.json" }, quick: { type: "boolean", default: false }, runs: { type: "string" }, only: { type: "string" }, sessions: { type: "string" } } });
/** Figure 11b's model: 128 KiB of KV cache a token on a cheap model, so states of 10-500 MB take at most a few thousand tokens. */
const PEER_SIZES_MODEL: TestModelParams = { layers: 8, embedding: 256, feedForward: 256, heads: 8, kvHeads: 8, headDim: 512, contextLength: 16384, seed: 5 };

/** --only rebuild,io,testbed,gateway,density,swap,sealing,checkpoints,peer runs a subset (operator only when named). */
const want = (name: string) => !args.only || args.only.split(",").includes(name);
const RUNS = Number(args.runs ?? (args.quick ? 2 : 3));
/** Cold samples a state size in figure 1: the issue's goals are medians of at least 5 interleaved runs. */
const COLD_RUNS = args.quick ? 2 : Math.max(5, RUNS);

interface Stat { median: number; min: number; max: number; runs: number }
const stat = (xs: number[]): Stat => {
  const s = [...xs].sort((a, b) => a - b);
  return { median: s[Math.floor((s.length - 1) / 2)]!, min: s[0]!, max: s.at(-1)!, runs: s.length };
};
const fmt = (s: Stat, unit = "ms", digits = 1) => `${s.median.toFixed(digits)} ${unit} (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})`;
const MiB = 2 ** 20;

function table(title: string, head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => "| " + cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ") + " |";
  console.log(`\n${title}\n${line(head)}\n|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
  for (const r of rows) console.log(line(r));
}

/** Drops the file from the page cache (posix_fadvise DONTNEED through GNU dd). */
const dropCache = (file: string) => execFileSync("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);

const filler = (tokens: number) => Array.from({ length: tokens }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
const results: Record<string, unknown> = { machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version }, date: new Date().toISOString(), runs: RUNS };

// Figures 1, 3 and 4: state I/O against the disk, against the bare library, and memory freed.
async function stateIo(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-io-"));
  const WIDE: TestModelParams = { layers: 32, embedding: 256, feedForward: 256, heads: 4, headDim: 512, contextLength: 16384, seed: 5 };
  const { host, manager } = await harness(WIDE, dir);
  const sizesMiB = args.quick ? [10, 50] : [10, 50, 200, 550];
  const rows: string[][] = [];
  const floorRows: string[][] = [];
  const memRows: string[][] = [];
  const out: unknown[] = [];
  for (const target of sizesMiB) {
    const tokens = Math.max(8, Math.round((target * MiB) / (256 * 1024)) - 40);
    const s = await manager.register({ namespace: "bench", name: `io-${target}`, contextSize: Math.ceil((tokens + 300) / 256) * 256 });
    await s.submit(filler(tokens), { maxTokens: 1, temperature: 0 });
    // The same state on a runtime keeping a spare context of its size (TORPOR_SPARE_CONTEXTS=1).
    const sm = benchManager(host, dir, { defaultContextSize: s.spec.contextSize, spareContexts: 1 });
    const ss = await sm.register({ namespace: "bench", name: `io-spare-${target}` });
    await ss.submit(filler(tokens), { maxTokens: 1, temperature: 0 });
    // Each round measures a cold rehydrate, with and without a spare, right beside `dd` doing the
    // same on the same volume: this VM's disk changes speed from one minute to the next (a cold
    // 546 MiB read took 104 ms in one run and 313 ms in another), so baselines taken after all
    // the samples did not compare like with like.
    const hib: number[] = [], cold: number[] = [], spareCold: number[] = [], warm: number[] = [], freed: number[] = [];
    const writeMs: number[] = [], readMs: number[] = [];
    const f = path.join(dir, "baseline.bin");
    let bytes = 0;
    for (let i = 0; i < COLD_RUNS; i++) {
      const rssBefore = process.memoryUsage.rss();
      const h = await s.hibernate("bench");
      freed.push(rssBefore - process.memoryUsage.rss());
      bytes = h.record!.bytes;
      hib.push(h.record!.durationMs);
      let t = performance.now();
      execFileSync("dd", ["if=/dev/zero", `of=${f}`, "bs=4M", `count=${Math.ceil(bytes / (4 * MiB))}`, "conv=fsync", "status=none"]);
      writeMs.push(performance.now() - t);
      dropCache(f);
      t = performance.now();
      execFileSync("dd", [`if=${f}`, "of=/dev/null", "bs=4M", "status=none"]);
      readMs.push(performance.now() - t);
      dropCache(h.record!.stateFile);
      cold.push((await s.warm()).rehydrateMs!);
      const hs = await ss.hibernate("bench");
      dropCache(hs.record!.stateFile);
      await sm.replenishSpares(); // the spare is ready, as it is long before a session's next turn
      spareCold.push((await ss.warm()).rehydrateMs!);
      // The spare taken is refilled in the background: done before the next round measures.
      await sm.replenishSpares();
    }
    await sm.remove("bench", `io-spare-${target}`);
    await sm.close();
    for (let i = 0; i < RUNS; i++) {
      await s.hibernate("bench");
      warm.push((await s.warm()).rehydrateMs!);
    }
    await rm(f, { force: true });
    // Same-library floor: node-llama-cpp's bare calls doing the same job on this very state:
    // save and free the context; later allocate a context and load (no manifest, checksum, fsync).
    const bareSave: number[] = [], bareLoad: number[] = [];
    const bareFile = path.join(dir, "bare.state");
    const ctxSize = s.spec.contextSize;
    let ctx = await host.createContext(ctxSize);
    let seq = ctx.getSequence();
    await seq.loadStateFromFile((await s.hibernate("bench")).record!.stateFile, { acceptRisk: true });
    for (let i = 0; i < RUNS; i++) {
      let t = performance.now();
      await seq.saveStateToFile(bareFile);
      await ctx.dispose();
      bareSave.push(performance.now() - t);
      t = performance.now();
      ctx = await host.createContext(ctxSize);
      seq = ctx.getSequence();
      await seq.loadStateFromFile(bareFile, { acceptRisk: true });
      bareLoad.push(performance.now() - t);
    }
    await ctx.dispose();
    await rm(bareFile, { force: true });
    const H = stat(hib), C = stat(cold), CS = stat(spareCold), W = stat(warm), WR = stat(writeMs), RD = stat(readMs), BS = stat(bareSave), BL = stat(bareLoad), FR = stat(freed.map((x) => x / MiB));
    const sizeMiB = bytes / MiB;
    const hibRatio = WR.median / H.median, coldRatio = RD.median / C.median, spareRatio = RD.median / CS.median;
    rows.push([`${sizeMiB.toFixed(0)} MiB`, fmt(H), fmt(C), fmt(CS), fmt(W), fmt(WR), fmt(RD), `${hibRatio.toFixed(2)}x`, `${coldRatio.toFixed(2)}x`, `${spareRatio.toFixed(2)}x`]);
    const floor = (H.median + W.median) / (BS.median + BL.median);
    floorRows.push([`${sizeMiB.toFixed(0)} MiB`, fmt(H), fmt(BS), fmt(W), fmt(BL), `${floor.toFixed(2)}x`]);
    memRows.push([`${sizeMiB.toFixed(0)} MiB`, fmt(FR, "MiB"), `${((FR.median / sizeMiB) * 100).toFixed(0)}%`]);
    out.push({ stateBytes: bytes, hibernateMs: H, rehydrateColdMs: C, rehydrateWarmMs: W, baselineWriteFsyncMs: WR, baselineColdReadMs: RD,
      hibernateVsBaseline: hibRatio, coldRehydrateVsBaseline: coldRatio, rehydrateColdSpareMs: CS, coldSpareRehydrateVsBaseline: spareRatio, bareSaveMs: BS, bareLoadMs: BL, torporVsBare: floor, rssFreedMiB: FR });
    await manager.remove("bench", `io-${target}`);
  }
  table("Figure 1: state I/O vs the disk (goal: hibernate >= 0.8x and cold rehydrate >= 0.8x of baseline bandwidth)",
    ["state", "hibernate", "rehydrate cold", "cold, spare context", "rehydrate warm", "write+fsync (dd)", "cold read (dd)", "hib/base bw", "cold reh/base bw", "cold spare/base bw"], rows);
  table("Figure 3: same-library floor (goal: torpor hibernate+rehydrate <= 1.2x bare saveStateToFile+loadStateFromFile)",
    ["state", "torpor hibernate", "bare save + dispose", "torpor rehydrate (warm)", "bare create + load", "ratio"], floorRows);
  table("Figure 4: memory freed by hibernate, process RSS (goal: >= 90% of the state size)", ["state", "RSS freed", "of state"], memRows);
  results.stateIo = out;
  await manager.close();
  await host.dispose();
  await rm(dir, { recursive: true, force: true });
}

// Figure 2: time to first token after a rehydrate vs rebuilding the same history from scratch.
async function rehydrateVsRebuild(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-rr-"));
  const { host, manager } = await harness(DEFAULT_TEST_MODEL, dir);
  const rows: string[][] = [];
  const out: unknown[] = [];
  for (const n of args.quick ? [1024] : [1024, 4096, 8000]) {
    const contextSize = Math.ceil((n + 400) / 256) * 256;
    const history = [{ type: "user" as const, text: filler(n) }];
    const reh: number[] = [], reb: number[] = [];
    const s = await manager.register({ namespace: "bench", name: `rr-${n}`, contextSize });
    await s.complete(history, { maxTokens: 1, temperature: 0 });
    for (let i = 0; i < RUNS; i++) {
      await s.hibernate("bench");
      let t = performance.now();
      await s.complete(history, { maxTokens: 1, temperature: 0 });
      reh.push(performance.now() - t);
      const fresh = await manager.register({ namespace: "bench", name: `rb-${n}-${i}`, contextSize });
      t = performance.now();
      await fresh.complete(history, { maxTokens: 1, temperature: 0 });
      reb.push(performance.now() - t);
      await manager.remove("bench", `rb-${n}-${i}`);
    }
    const R = stat(reh), B = stat(reb);
    rows.push([String(n), fmt(R), fmt(B), `${(B.median / R.median).toFixed(1)}x`]);
    out.push({ tokens: n, rehydrateTtftMs: R, rebuildTtftMs: B, speedup: B.median / R.median });
    await manager.remove("bench", `rr-${n}`);
  }
  table("Figure 2: time to first token, rehydrate vs rebuild (goal: >= 1000x at 8k; the 4-layer test model is far cheaper to rebuild than a real one)",
    ["history tokens", "rehydrate TTFT", "rebuild TTFT", "speedup"], rows);
  results.rehydrateVsRebuild = out;
  await writeSvg(out as Array<{ tokens: number; rehydrateTtftMs: Stat; rebuildTtftMs: Stat }>);
  await manager.close();
  await host.dispose();
  await rm(dir, { recursive: true, force: true });
}

async function writeSvg(points: Array<{ tokens: number; rehydrateTtftMs: Stat; rebuildTtftMs: Stat }>): Promise<void> {
  const W = 560, H = 320, pad = 50;
  const maxX = Math.max(...points.map((p) => p.tokens));
  const maxY = Math.log10(Math.max(...points.map((p) => p.rebuildTtftMs.median)) * 2);
  const minY = Math.log10(Math.min(...points.map((p) => p.rehydrateTtftMs.median)) / 2);
  const x = (t: number) => pad + ((W - 2 * pad) * t) / maxX;
  const y = (ms: number) => H - pad - ((H - 2 * pad) * (Math.log10(ms) - minY)) / (maxY - minY);
  const line = (key: "rehydrateTtftMs" | "rebuildTtftMs", color: string) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((p) => `${x(p.tokens).toFixed(1)},${y(p[key].median).toFixed(1)}`).join(" ")}"/>` +
    points.map((p) => `<text x="${x(p.tokens) + 4}" y="${y(p[key].median) - 4}" font-size="11" fill="${color}">${p[key].median.toFixed(0)} ms</text>`).join("");
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${pad}" y="24" font-size="14">Time to first token: rehydrate vs rebuild (log scale)</text>
<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="black"/><line x1="${pad}" y1="${pad}" x2="${pad}" y2="${H - pad}" stroke="black"/>
${points.map((p) => `<text x="${x(p.tokens) - 10}" y="${H - pad + 16}" font-size="11">${p.tokens}</text>`).join("")}
<text x="${W / 2 - 40}" y="${H - 10}" font-size="12">history tokens</text>
${line("rebuildTtftMs", "#c0392b")}${line("rehydrateTtftMs", "#2874a6")}
<text x="${W - pad - 150}" y="${pad}" font-size="12" fill="#c0392b">rebuild (drop and replay)</text>
<text x="${W - pad - 150}" y="${pad + 16}" font-size="12" fill="#2874a6">rehydrate (torpor)</text>
<text x="${pad}" y="${H - 26}" font-size="10" fill="#555">${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}, generated 4-layer test model, ${new Date().toISOString().slice(0, 10)}</text>
</svg>\n`;
  await writeFile(path.join("docs", "rehydrate-vs-rebuild.svg"), svg);
}

// Testbed start-up (testbed issue): control plane + kubelet until every node is Ready.
async function testbedStartup(): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < Math.min(RUNS, 3); i++) {
    const t = performance.now();
    const tb = await startTestbed();
    await tb.kubectl(["wait", "--for=condition=Ready", "node", "--all", "--timeout=60s"]);
    times.push(performance.now() - t);
    await tb.stop();
  }
  const T = stat(times.map((x) => x / 1000));
  table("Testbed start-up with cached binaries (goal: under 20 s on 2 cores)", ["start-up", "goal met"], [[fmt(T, "s"), T.median < 20 ? "yes" : "no"]]);
  results.testbedStartupSeconds = T;
}

// Figure 6: what the gateway adds, against calling the runtime pod directly, in the same run.
async function gatewayOverhead(): Promise<void> {
  const tb = await startTestbed();
  const procs: Array<{ stop: () => Promise<void> }> = [];
  try {
    await installTorpor(tb, 1);
    await tb.kubectl(["create", "clusterrolebinding", "bench-chat", "--clusterrole=cluster-admin", "--serviceaccount=default:default"]);
    procs.push(await startEntryPoint("operator/main.js", tb, { TORPOR_OPERATOR_PORT: String(await freePort()), POD_NAME: "operator-0" }));
    const port = await freePort();
    procs.push(await startEntryPoint("gateway/main.js", tb, { TORPOR_GATEWAY_PORT: String(port) }));
    const gw = `http://127.0.0.1:${port}`;
    await tb.kubectl(["apply", "-f", "-"], sessionManifest("bench"));
    const s = await eventually("placement", async () => {
      const x = JSON.parse(await tb.kubectl(["get", "isess", "bench", "-o", "json"])) as InferenceSession;
      return x.status?.podIP && x.status.conditions?.some((c) => c.type === "Ready" && c.status === "True") ? x : undefined;
    }, 60_000);
    await eventually("gateway", async () => ((await fetch(`${gw}/healthz`)).ok ? true : undefined), 20_000);
    const token = (await tb.kubectl(["create", "token", "default", "--audience", "torpor"])).trim();
    const direct = `http://${s.status!.podIP}:8080/v1/sessions/default/bench/chat/completions`;
    const via = `${gw}/v1/sessions/default/bench/chat/completions`;
    const call = async (url: string, auth: string, body: unknown) => {
      const t = performance.now();
      const r = await fetch(url, { method: "POST", headers: { authorization: `Bearer ${auth}`, "content-type": "application/json" }, body: JSON.stringify(body) });
      await r.text();
      if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
      return performance.now() - t;
    };
    const small = { messages: [{ role: "user", content: "hi" }], max_tokens: 1 };
    for (let i = 0; i < 5; i++) { await call(direct, TOKEN, small); await call(via, token, small); }
    const d: number[] = [], g: number[] = [];
    const n = args.quick ? 60 : 200;
    for (let i = 0; i < n; i++) { d.push(await call(direct, TOKEN, small)); g.push(await call(via, token, small)); }
    const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;
    const stream = { messages: [{ role: "user", content: "tell me everything" }], max_tokens: 200, stream: true };
    const ds: number[] = [], gs: number[] = [];
    for (let i = 0; i < RUNS; i++) { ds.push(200 / ((await call(direct, TOKEN, stream)) / 1000)); gs.push(200 / ((await call(via, token, stream)) / 1000)); }
    const D = stat(ds), G = stat(gs);
    const added50 = pct(g, 0.5) - pct(d, 0.5), added99 = pct(g, 0.99) - pct(d, 0.99);
    table("Figure 6: gateway overhead (goal: < 2 ms p50 added; streaming >= 0.95x tokens/s)", ["measure", "direct", "via gateway", "added / ratio"], [
      ["non-streaming p50", `${pct(d, 0.5).toFixed(2)} ms`, `${pct(g, 0.5).toFixed(2)} ms`, `${added50.toFixed(2)} ms`],
      ["non-streaming p99", `${pct(d, 0.99).toFixed(2)} ms`, `${pct(g, 0.99).toFixed(2)} ms`, `${added99.toFixed(2)} ms`],
      ["streaming tokens/s", fmt(D, "tok/s", 0), fmt(G, "tok/s", 0), `${(G.median / D.median).toFixed(2)}x`],
    ]);
    results.gateway = { requests: n, directP50Ms: pct(d, 0.5), gatewayP50Ms: pct(g, 0.5), directP99Ms: pct(d, 0.99), gatewayP99Ms: pct(g, 0.99), addedP50Ms: added50, streamingDirect: D, streamingGateway: G };
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await tb.stop();
  }
}

// Figure 7: density. One runtime, resident cap 8, many sessions in a round-robin conversation:
// with hibernation, with everything resident, and with drop-and-rebuild, in the same run.
async function density(): Promise<void> {
  const sessions = args.quick ? 60 : 500, rounds = 2;
  const rows: string[][] = [];
  const out: Record<string, unknown> = {};
  let perContextBytes = 0;
  for (const mode of ["hibernate", "all-resident", "drop-and-rebuild"] as const) {
    if (mode === "all-resident" && perContextBytes * sessions > os.freemem() * 0.6) {
      const need = (perContextBytes * sessions) / 2 ** 30;
      rows.push([mode, "skipped", "-", "-", `needs ~${need.toFixed(1)} GiB`]);
      out[mode] = { skipped: true, estimatedGiB: need };
      continue;
    }
    const dir = await mkdtemp(path.join(os.tmpdir(), "torpor-bench-density-"));
    const { host, manager } = await harness(DEFAULT_TEST_MODEL, dir, mode === "all-resident" ? sessions : 8);
    const histories = Array.from({ length: sessions }, () => [] as import("node-llama-cpp").ChatHistoryItem[]);
    const ttft: number[] = [];
    const rss0 = process.memoryUsage.rss();
    let peakRss = rss0;
    const t0 = performance.now();
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < sessions; i++) {
        const prompt = `Round ${r}: here is what I think about topic ${i}, please comment briefly.`;
        let first = 0;
        const start = performance.now();
        const onText = () => { if (!first) first = performance.now() - start; };
        let reply: string;
        if (mode === "drop-and-rebuild") {
          // The session was dropped after its last turn: a fresh context replays the whole history.
          const fresh = await manager.register({ namespace: "bench", name: `d-${i}-${r}`, contextSize: 1024 });
          const history = [...histories[i]!, { type: "user" as const, text: prompt }];
          reply = (await fresh.complete(history, { maxTokens: 4, temperature: 0, onText })).text;
          await manager.remove("bench", `d-${i}-${r}`);
        } else {
          const sess = await manager.register({ namespace: "bench", name: `s-${i}`, contextSize: 1024 });
          reply = (await sess.submit(prompt, { maxTokens: 4, temperature: 0, onText })).text;
        }
        histories[i]!.push({ type: "user", text: prompt }, { type: "model", response: [reply] });
        ttft.push(first || performance.now() - start);
        peakRss = Math.max(peakRss, process.memoryUsage.rss());
      }
    }
    const minutes = (performance.now() - t0) / 60_000;
    if (mode === "hibernate") perContextBytes = (peakRss - rss0) / 8;
    const sorted = [...ttft].sort((a, b) => a - b);
    const p99 = sorted[Math.floor(sorted.length * 0.99)]!, p50 = sorted[Math.floor(sorted.length * 0.5)]!;
    const turnsPerMin = ttft.length / minutes;
    rows.push([mode, turnsPerMin.toFixed(0), `${p50.toFixed(1)} ms`, `${p99.toFixed(1)} ms`, `${((peakRss - rss0) / MiB).toFixed(0)} MiB`]);
    out[mode] = { sessions, rounds, turnsPerMinute: turnsPerMin, ttftP50Ms: p50, ttftP99Ms: p99, peakRssGrowthMiB: (peakRss - rss0) / MiB };
    for (const sess of manager.list()) await manager.remove(sess.ref.namespace, sess.ref.name);
    await manager.close();
    await host.dispose();
    await rm(dir, { recursive: true, force: true });
  }
  table(`Figure 7: density, one runtime, ${sessions} sessions round-robin x ${rounds} rounds (cap 8 unless all resident)`,
    ["mode", "turns/min", "TTFT p50", "TTFT p99", "RSS growth"], rows);
  results.density = out;
}

// A host disposed while its manager still kept contexts (the grace pool) never finished disposing,
// and with nothing else pending the process exited with status 0 in the middle of the run, without
// the rest or the JSON. Managers are closed first now (as the runtime does); this timer makes any
// such wait show as a hang instead of a silent exit.
const keepAlive = setInterval(() => undefined, 60_000);
if (want("rebuild")) await rehydrateVsRebuild();
if (want("io")) await stateIo();
if (want("testbed")) await testbedStartup();
if (want("gateway")) await gatewayOverhead();
if (want("density")) await density();
if (want("swap")) {
  const r = await bulkheadSwap(args.quick ? 2 : 4);
  const H = stat(r.handover.turnMs), F = stat(r.fresh.turnMs), HR = stat(r.handover.rehydrateMs), FR = stat(r.fresh.rehydrateMs);
  table(`Figure 8: full bulkhead, 3 sessions on 2 slots, ${r.stateMiB.toFixed(0)} MiB states in ${r.contextMiB.toFixed(0)} MiB contexts: every turn evicts one session and rehydrates another`,
    ["mode", "time to first token (evict + rehydrate + eval)", "rehydrate", "speedup"], [
      ["context handover (default)", fmt(H), fmt(HR), `${(F.median / H.median).toFixed(2)}x`],
      ["free + allocate", fmt(F), fmt(FR), "1.00x"],
    ]);
  results.bulkheadSwap = { ...r, handoverTurn: H, freshTurn: F, handoverRehydrate: HR, freshRehydrate: FR, speedup: F.median / H.median };
}
if (want("sealing")) {
  const r = await sealingCost({ layers: 8, embedding: 512, feedForward: 512, heads: 8, contextLength: 16384, seed: 3 }, args.quick ? 1500 : 3500, Math.max(9, RUNS));
  const SH = stat(r.sealed.hibernateMs), PH = stat(r.plain.hibernateMs), SR = stat(r.sealed.rehydrateMs), PR = stat(r.plain.rehydrateMs);
  const staged = r.staged.hibernateMs.length ? { h: stat(r.staged.hibernateMs), r: stat(r.staged.rehydrateMs) } : undefined;
  const aead = r.aead.map((a) => ({ threads: a.threads, seal: stat(a.sealMs), open: stat(a.openMs) }));
  const stagedIn = process.env.TORPOR_STAGING_DIR || os.tmpdir();
  const how = r.nativeStateIo === true ? "in the runtime addon as llama.cpp streams the state" : `through plaintext staged in ${stagedIn} (${r.nativeStateIo})`;
  table(`Figure 9: sealing (AES-256-GCM in 1 MiB chunks, ${how}) vs unsealed (xxHash64), ${r.stateMiB.toFixed(0)} MiB state, interleaved (goal: <= 1.3x)`,
    ["operation", "sealed", "unsealed", "sealed / unsealed"], [
      ["hibernate", fmt(SH), fmt(PH), `${(SH.median / PH.median).toFixed(2)}x`],
      ["rehydrate", fmt(SR), fmt(PR), `${(SR.median / PR.median).toFixed(2)}x`],
      ...(staged ? [
        [`hibernate, staged in ${stagedIn} (without the addon)`, fmt(staged.h), fmt(PH), `${(staged.h.median / PH.median).toFixed(2)}x`],
        ["rehydrate, staged (without the addon)", fmt(staged.r), fmt(PR), `${(staged.r.median / PR.median).toFixed(2)}x`],
      ] : []),
      ...aead.map((a) => [`AEAD pass alone over a staged file, ${a.threads} thread${a.threads > 1 ? "s" : ""}`, `seal+fsync ${fmt(a.seal)}`, `open ${fmt(a.open)}`, ""]),
    ]);
  results.sealing = { ...r, hibernate: { sealed: SH, plain: PH, ratio: SH.median / PH.median, ...(staged ? { staged: staged.h, stagedRatio: staged.h.median / PH.median } : {}) },
    rehydrate: { sealed: SR, plain: PR, ratio: SR.median / PR.median, ...(staged ? { staged: staged.r, stagedRatio: staged.r.median / PR.median } : {}) }, aead };
}
if (want("checkpoints")) {
  const r = await checkpointCost({ layers: 8, embedding: 512, feedForward: 512, heads: 8, contextLength: 16384, seed: 3 }, args.quick ? 1000 : 2500, args.quick ? 20 : 60);
  const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!;
  table(`Figure 10: time to first token with a checkpoint after every turn vs none, ${r.stateMiB.toFixed(0)} MiB state, turns back to back (worst case)`,
    ["mode", "TTFT p50", "TTFT p99"], [
      ["checkpoint every turn", `${pct(r.withMs, 0.5).toFixed(1)} ms`, `${pct(r.withMs, 0.99).toFixed(1)} ms`],
      ["no checkpoints", `${pct(r.withoutMs, 0.5).toFixed(1)} ms`, `${pct(r.withoutMs, 0.99).toFixed(1)} ms`],
    ]);
  results.checkpoints = { ...r, withP50: pct(r.withMs, 0.5), withP99: pct(r.withMs, 0.99), withoutP50: pct(r.withoutMs, 0.5), withoutP99: pct(r.withoutMs, 0.99) };
}
/** Whether `npm install` built the runtime addon here (the runtimes the benchmarks start then seal in it). */
function addonBuilt(): boolean {
  return existsSync(path.join(path.dirname(fileURLToPath(import.meta.resolve("node-llama-cpp"))), "..", "llama", "localBuilds", "linux-x64", "Release", "torpor-addon.digest"));
}

if (want("peer")) {
  const binary = await llamaServerBinary();
  if (binary) {
    const r = await versusLlamaServer(binary, args.quick ? 1500 : 3000, Math.max(5, RUNS), { sealed: true }).catch((err: unknown) => {
      if (!(err instanceof PeerUnavailable)) throw err;
      console.log(`figure 11 skipped: ${err.message}`);
      results.peer = { skipped: err.message };
      return undefined;
    });
    if (r) {
    const L = r.llamaServer, T = r.torpor;
    const row = (name: string, l: number[], t: number[], unit = "ms") => { const a = stat(l), b = stat(t); return [name, fmt(a, unit), fmt(b, unit), `${(b.median / a.median).toFixed(2)}x`]; };
    table(`Figure 11: vs llama-server (same llama.cpp, SmolLM2-135M-Instruct, ${r.tokens}-token conversation, 2 threads, interleaved)`,
      ["measure", "llama-server", "torpor", "torpor / llama-server"], [
        row("state saved (each run adds the same turn to both)", L.savedBytes.map((b) => b / 2 ** 20), T.savedBytes.map((b) => b / 2 ** 20), "MiB"),
        row("save (slot save, no fsync) vs hibernate (fsync)", L.saveMs, T.hibernateMs),
        row("restore (slot restore) vs rehydrate", L.restoreMs, T.rehydrateMs),
        row("next turn after the restore (32 tokens)", L.nextTurnMs, T.nextTurnMs),
        row("decode tokens/s of that turn, first token to last (llama-server: its own timings; torpor: streamed)", L.decodeTokPerSec, T.decodeTokPerSec, "tok/s"),
        row("durable floor (write the same bytes + fsync) vs hibernate (goal <= 1.2x)", r.fsyncFloorMs, T.hibernateMs),
        ...(r.torporSealed ? [
          row(`sealed: save vs hibernate (AES-256-GCM, ${addonBuilt() ? "in the runtime addon" : "staged node-locally"})`, L.saveMs, r.torporSealed.hibernateMs),
          row("sealed: durable floor vs hibernate", r.fsyncFloorMs, r.torporSealed.hibernateMs),
          row("sealed: restore vs rehydrate", L.restoreMs, r.torporSealed.rehydrateMs),
        ] : []),
        ...(r.streams4 ? [
          row("4 streams at once, tokens/s: -np 4 vs a context per session", r.streams4.llamaServer, r.streams4.torporContextEach, "tok/s"),
          row("4 streams at once, tokens/s: -np 4 vs 4 sequences per context", r.streams4.llamaServer, r.streams4.torporShared, "tok/s"),
        ] : []),
      ]);
    // Each run adds its turns to the conversation, so what is reused grows past the starting size.
    console.log(`torpor reused a median of ${stat(T.reused).median} restored tokens in the turn after each rehydrate (the conversation starts at about ${r.tokens} tokens; each run adds its turns)`);
    if (r.streams4) {
      // Both sides of a round ran within seconds of each other: the median of the rounds' own ratios
      // is what the shared 2-core machine's minute-to-minute drift (10-20% here) moves least.
      const s4 = r.streams4;
      const perRound = (t: number[]) => stat(t.map((v, i) => v / s4.llamaServer[i]!)).median.toFixed(2);
      console.log(`4 streams: each a first turn of 48 tokens; prompt tokens per stream: llama-server ${s4.promptTokens.llamaServer}, torpor ${s4.promptTokens.torpor}; median of the ${s4.llamaServer.length} rounds' own ratios (goal >= 0.95): a context per session ${perRound(s4.torporContextEach)}x, 4 sequences per context ${perRound(s4.torporShared)}x`);
    }
    results.peer = r;
    }
    // The same by state size, on a generated model whose KV cache is 128 KiB a token (8 layers of
    // 8 heads of 512): states of about 10, 100 and 500 MB from a few thousand tokens at most.
    const fixture = await ensureTestModel(MODEL_DIR, PEER_SIZES_MODEL);
    const sizes: PeerResult[] = [];
    for (const tokens of args.quick ? [40, 800] : [40, 800, 4000]) {
      const s = await versusLlamaServer(binary, tokens, Math.max(5, RUNS), { model: fixture, streams: false, fresh: true }).catch((err: unknown) => {
        if (!(err instanceof PeerUnavailable)) throw err;
        console.log(`figure 11b at ${tokens} tokens skipped: ${err.message}`);
        return undefined;
      });
      if (s) sizes.push(s);
    }
    const ratio = (a: number[], b: number[]) => `${(stat(b).median / stat(a).median).toFixed(2)}x`;
    table("Figure 11b: vs llama-server by state size (generated model, 128 KiB of KV a token, 2 threads, medians of interleaved runs)",
      ["state", "tokens", "slot restore", "rehydrate", "ratio (goal <= 1.5x)", "slot save (no fsync)", "hibernate (fsync)", "write+fsync floor", "hibernate / floor (goal <= 1.2x)", "restored tokens reused"],
      sizes.map((s) => [`${(stat(s.torpor.savedBytes).median / 2 ** 20).toFixed(0)} MiB (llama-server ${(stat(s.llamaServer.savedBytes).median / 2 ** 20).toFixed(0)})`, String(s.tokens), fmt(stat(s.llamaServer.restoreMs), "ms"), fmt(stat(s.torpor.rehydrateMs), "ms"), ratio(s.llamaServer.restoreMs, s.torpor.rehydrateMs),
        fmt(stat(s.llamaServer.saveMs), "ms"), fmt(stat(s.torpor.hibernateMs), "ms"), fmt(stat(s.fsyncFloorMs), "ms"), ratio(s.fsyncFloorMs, s.torpor.hibernateMs), String(stat(s.torpor.reused).median)]));
    results.peerSizes = sizes;
    // The same four streams on the 4-layer test fixture, whose decode computes in a fraction of a
    // millisecond: what is left is each side's fixed cost per step, the part a fast GPU exposes
    // (docs/benchmarks.md, twelfth session). A proxy to track on a CPU, not a goal of its own.
    const tiny = await fourStreams(binary, await ensureTestModel(MODEL_DIR, DEFAULT_TEST_MODEL), Math.max(5, RUNS)).catch((err: unknown) => {
      if (!(err instanceof PeerUnavailable)) throw err;
      console.log(`figure 11c skipped: ${err.message}`);
      return undefined;
    });
    if (tiny) {
      const perRound = (t: number[]) => `${stat(t.map((v, i) => v / tiny.llamaServer[i]!)).median.toFixed(2)}x`;
      const step = (t: number[]) => `${(4000 / stat(t).median).toFixed(2)} ms`; // 4 tokens a step
      table("Figure 11c: 4 streams where the decode costs almost nothing (4-layer fixture, 48 tokens each, 2 threads): the fixed cost per step",
        ["side", "tokens/s", "time per 4-token step", "ratio to -np 4 (median of the rounds' own)"], [
          ["llama-server -np 4", fmt(stat(tiny.llamaServer), "tok/s"), step(tiny.llamaServer), "1.00x"],
          ["torpor, 4 sequences per context", fmt(stat(tiny.torporShared), "tok/s"), step(tiny.torporShared), perRound(tiny.torporShared)],
          ["torpor, a context per session", fmt(stat(tiny.torporContextEach), "tok/s"), step(tiny.torporContextEach), perRound(tiny.torporContextEach)],
        ]);
      results.peerOverhead = tiny;
    }
  }
}
if (args.only?.split(",").includes("operator")) { // minutes and GiB of contexts: only when asked
  const r = await operatorScale(Number(args.sessions ?? (args.quick ? 100 : 1000)));
  table(`Figure 5: operator at ${r.sessions} sessions on the testbed (goal: all transitions within 60 s, <= 3 API writes per transition)`, ["measure", "value"], [
    ["create -> all placed", `${r.placeSeconds.toFixed(1)} s`],
    ["patch all -> all Hibernated", `${r.toHibernatedSeconds.toFixed(1)} s`],
    ["patch all back -> all InMemory", `${r.toInMemorySeconds.toFixed(1)} s`],
    ["reconcile latency p50 / p99 (histogram bucket bound)", `${r.reconcileP50Ms} / ${r.reconcileP99Ms} ms`],
    ["API writes on inferencesessions per transition (besides the user's patch)", r.writesPerTransition.toFixed(2)],
    ["reconciles per transition", r.reconcilesPerTransition.toFixed(2)],
    ["operator CPU during both transitions", `${r.operatorCpuSeconds.toFixed(1)} s`],
    ["operator RSS", `${r.operatorRssMiB.toFixed(0)} MiB`],
  ]);
  results.operatorScale = r;
}
await writeFile(args.out!, JSON.stringify(results, null, 2) + "\n");
console.log(`wrote ${args.out}`);
clearInterval(keepAlive);
