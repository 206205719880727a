/**
 * `make bench-scale`: ebserve at real scale on this machine — the OLMoE-1B-7B shape (16 layers ×
 * 64 experts, 6.9 B parameters, 13.8 GB of bf16), served through a real `bin/ebserve serve`
 * process, the experts streamed from the store file on disk where the host budget is short.
 *
 * 1. Synthesizes the checkpoint with `bin/ebserve synth --shape olmoe-1b-7b` into a cache outside
 *    the repository (${EBSERVE_BENCH_CACHE:-~/.cache/ebserve}/bench-scale/olmoe-1b-7b; with
 *    BENCH_SCALE_LAYERS=N, `--layers N` into …/olmoe-1b-7b-lN), unless a complete one is there.
 * 2. Builds its expert store (store.ts, its own process; timed), unless a sound one is cached in
 *    the checkpoint's .ebserve-cache/ (then the first build's time, kept beside it, is reported
 *    with store_build_cached: true).
 * 3. For each case, one server (`--profile bench/scale/profile.yaml --max-queue 16`, or
 *    BENCH_SCALE_PROFILE): a (offload, --host-budget ≥ the whole store: no disk reads once the
 *    experts are in), b (offload, --host-budget = ¼ of the store: the disk link live, the
 *    controller on), c (--engine cpu --bound 1e-3: every expert compressed in the addon, skipped
 *    with the reason when it cannot fit in memory). After "ready" and 3 warm-up requests,
 *    streaming clients (bench/serve/clients.ts) at concurrency 1 then 8, each for DURATION
 *    seconds (60, or BENCH_SCALE_SECONDS), one fixed body (BODY). Per phase: tokens/s (what the
 *    server generated in the window, ebserve_generation_tokens_total: a 32-token request at
 *    concurrency 8 can outlast a phase) and the clients' latencies, the server's RSS (VmRSS with
 *    any child processes, every 250 ms, max), disk bytes read per second
 *    (ebserve_disk_read_bytes_total), the plan at the end of the phase
 *    (ebserve_layer_rung) and the device budget (/health).
 *
 * Writes bench/results/scale.json (or BENCH_SCALE_OUT), prints a table and the issue's checks as
 * PASS/MISS lines. BENCH_SCALE_CASES=a,b runs a subset. Progress (with ETAs) and the servers'
 * logs go to stderr. Fails (exit 1) when synth, the store or case a or b fails; a report, never an
 * assertion, otherwise.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadProfile } from '../../src/control/profile.js';
import { openCheckpoint } from '../../src/model/checkpoint.js';
import { expertName } from '../../src/model/names.js';
import { durationSeconds, elapsedSeconds, idle, log, logClientProblems, metricSeries, ROOT, runLoad, Server, stopOnSignals, stopServer, summarize, treeRssOf, warmUp } from '../serve/clients.js';
import { cacheRoot, checkpointBytes, checkpointProblem, layersFromEnv, modelDir } from './cache.js';
import { countParams, deviceBudgetFromHealth, GIB, measuredRow, memoryPlanFromHealth, planLevelsFromMetrics, RSS_OVERHEAD_BYTES, scaleChecks, scaleTable, skippedRow, type Budgets, type CaseName, type Counters, type ScaleFacts, type ScaleRow } from './result.js';
import type { StoreStep } from './store.js';

const SHAPE = 'olmoe-1b-7b';
const LAYERS = layersFromEnv(process.env.BENCH_SCALE_LAYERS);
const DURATION = durationSeconds('BENCH_SCALE_SECONDS', process.env.BENCH_SCALE_SECONDS);
const OUT = process.env.BENCH_SCALE_OUT ? path.resolve(process.env.BENCH_SCALE_OUT) : path.join(ROOT, 'bench', 'results', 'scale.json');
const PROFILE = path.resolve(process.env.BENCH_SCALE_PROFILE || path.join(ROOT, 'bench', 'scale', 'profile.yaml'));
const CASES = casesFromEnv(process.env.BENCH_SCALE_CASES);
const CONCURRENCIES = [1, 8];
const MAX_QUEUE = 16;
const BODY = { prompt: 'Call me Ishmael. Some years ago', max_tokens: 32, temperature: 0, stream: true, stream_options: { include_usage: true } };
const WARMUP_REQUESTS = 3;
/** A request's timeout: 8 concurrent 32-token generations from the disk tier take a while on 2 cores. */
const REQUEST_TIMEOUT_S = 600;
/** Case c compresses every expert at startup; a store not yet built would be built by the server. */
const READY_TIMEOUT_S = 3600;
const IDLE_TIMEOUT_S = 600;
const RSS_INTERVAL_MS = 250;
/** Case c's experts at --bound 1e-3 on σ = 0.02 weights: the codec needs 5.4–6.3 bits a value (DESIGN.md); 8 is the margin. */
const CPU_BOUND_BITS_PER_VALUE = 8;
/** Memory left to the rest of the machine (the benchmark's own process, the page cache's floor). */
const MEMORY_MARGIN_BYTES = 2 * GIB;

function casesFromEnv(env: string | undefined): CaseName[] {
  if (env === undefined || env.trim() === '') return ['a', 'b', 'c'];
  const cases = env.split(',').map((s) => s.trim());
  for (const c of cases) if (c !== 'a' && c !== 'b' && c !== 'c') throw new Error(`BENCH_SCALE_CASES: expected a comma-separated subset of a,b,c, got '${env}'`);
  return cases as CaseName[];
}

const gb = (b: number) => `${(b / 1e9).toFixed(2)} GB`;
const minutes = (s: number) => `${(s / 60).toFixed(1)} min`;

/** MemAvailable of /proc/meminfo, in bytes. */
function memAvailable(): number {
  const m = /^MemAvailable:\s+(\d+)\s+kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : os.freemem();
}

/** A child process to its end, its stdout collected (stderr: ours); rejects on a signal. */
function runChild(argv: string[], what: string): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(child.pid!);
    let stdout = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      process.stderr.write(s);
    });
    child.on('exit', (code, signal) => {
      children.delete(child.pid!);
      if (signal) reject(new Error(`${what} was stopped by ${signal}`));
      else resolve({ code: code ?? 1, stdout });
    });
  });
}
const children = new Set<number>();

// ---------------------------------------------------------------------------------------------
// 1–2: the checkpoint and its store

async function ensureCheckpoint(dir: string): Promise<{ synth_seconds: number | null; synth_cached: boolean }> {
  const record = `${dir}.bench-scale.json`;
  const problem = checkpointProblem(dir);
  if (problem === null) {
    log(`checkpoint: ${dir} is complete (cached; remove it to synthesize again)`);
    let seconds: number | null = null;
    try {
      seconds = (JSON.parse(fs.readFileSync(record, 'utf8')) as { synth_seconds: number }).synth_seconds;
    } catch {
      // synthesized before bench-scale kept its time
    }
    return { synth_seconds: seconds, synth_cached: true };
  }
  if (fs.existsSync(dir)) throw new Error(`${dir} is there but not a complete checkpoint (${problem}); remove it and run again`);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const args = ['synth', '--shape', SHAPE, '--out', dir, ...(LAYERS === undefined ? [] : ['--layers', String(LAYERS)])];
  log(`checkpoint: bin/ebserve ${args.join(' ')} (the full shape: ~4 min to write 13.8 GB and ~4.5 min to calibrate on 2 cores; its progress bars give ETAs)`);
  const t = performance.now();
  const r = await runChild([path.join(ROOT, 'bin', 'ebserve'), ...args], 'synth');
  const seconds = (performance.now() - t) / 1000;
  const after = checkpointProblem(dir);
  if (after !== null) throw new Error(`synth exited ${r.code} and left no complete checkpoint: ${after}`);
  if (r.code !== 0) log(`checkpoint: synth exited ${r.code} (a layer's load entropy below the floor: routing.json says which); measuring it anyway`);
  fs.writeFileSync(record, `${JSON.stringify({ synth_seconds: seconds, exit_code: r.code, built_at: new Date().toISOString() }, null, 2)}\n`);
  log(`checkpoint: synthesized in ${minutes(seconds)}`);
  return { synth_seconds: seconds, synth_cached: false };
}

function checkpointFacts(dir: string): ScaleFacts {
  const ckpt = openCheckpoint(dir);
  try {
    const c = ckpt.config;
    const experts = new Set<string>();
    for (let l = 0; l < c.numLayers; l++) for (let e = 0; e < c.numExperts; e++) for (const w of ['gate', 'up', 'down'] as const) experts.add(expertName(c, l, e, w));
    const counted = countParams(ckpt.tensorNames().map((n) => ({ shape: ckpt.tensorInfo(n).shape, expert: experts.has(n) })));
    return { shape: SHAPE, layers: c.numLayers, ...counted, checkpoint_bytes: checkpointBytes(dir) };
  } finally {
    ckpt.close();
  }
}

async function ensureStore(dir: string): Promise<StoreStep> {
  log('store: opening or building the expert store (bench/scale/store.ts; the full shape: ~3 min to build on 2 cores)');
  const r = await runChild(['--import', 'tsx', path.join(ROOT, 'bench', 'scale', 'store.ts'), dir], 'the store build');
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !last.startsWith('{')) throw new Error(`the store step exited ${r.code}${last ? `: ${last}` : ''}`);
  const s = JSON.parse(last) as StoreStep;
  for (const n of s.notes) log(`store: ${n}`);
  log(`store: ${s.store_file}, ${gb(s.store_bytes)}, ${s.store_build_cached ? 'cached' : 'built'}${s.store_build_seconds === null ? '' : ` (built in ${s.store_build_seconds.toFixed(1)} s)`}`);
  return s;
}

// ---------------------------------------------------------------------------------------------
// 3: the cases

interface CasePlan {
  name: CaseName;
  engine: 'offload' | 'cpu';
  args: string[];
  hostBudget: number | null;
  /** Why it does not run, when it cannot. */
  skip?: string;
  note?: string;
}

export interface CaseRun {
  case: CaseName;
  command: string;
  note?: string;
  ready_seconds?: number;
  rss_ready_bytes?: number;
  health_engine_details?: Record<string, unknown>;
  exit_code?: number | null;
  exit_signal?: NodeJS.Signals | null;
  exit_seconds?: number;
  generation_failures_logged?: number;
  failure?: string;
}

function planCases(dir: string, facts: ScaleFacts, storeBytes: number): CasePlan[] {
  const base = ['serve', '--model', dir, '--port', '0', '--max-queue', String(MAX_QUEUE), '--profile', PROFILE];
  const device = loadProfile(PROFILE).device.memory_budget_bytes ?? 0;
  const avail = memAvailable();
  const plans: CasePlan[] = [];
  for (const name of CASES) {
    if (name === 'a') {
      // At most what fits beside the dense weights and the device tier: a whole store larger than
      // this machine's memory is read from the disk again, and the row says so.
      const fits = Math.floor(avail - facts.dense_f32_bytes - device - RSS_OVERHEAD_BYTES - MEMORY_MARGIN_BYTES);
      const host = Math.min(storeBytes, fits);
      plans.push({
        name, engine: 'offload', args: [...base, '--host-budget', String(host)], hostBudget: host,
        note: host < storeBytes ? `host budget cut to ${gb(host)} (the store is ${gb(storeBytes)}; ${gb(avail)} available less the dense f32 weights, the device budget, 1.5 GiB overhead and a 2 GiB margin): the disk is read after warm-up` : undefined,
      });
    } else if (name === 'b') {
      const host = Math.floor(storeBytes / 4);
      plans.push({ name, engine: 'offload', args: [...base, '--host-budget', String(host)], hostBudget: host });
    } else {
      const need = facts.dense_f32_bytes + (facts.expert_params * CPU_BOUND_BITS_PER_VALUE) / 8 + RSS_OVERHEAD_BYTES;
      plans.push({
        name, engine: 'cpu', args: [...base, '--engine', 'cpu', '--bound', '1e-3'], hostBudget: null,
        ...(need > avail - MEMORY_MARGIN_BYTES ? { skip: `needs about ${gb(need)} (dense f32 + ${CPU_BOUND_BITS_PER_VALUE} bits per expert value + 1.5 GiB), ${gb(avail)} available` } : {}),
      });
    }
  }
  return plans;
}

/** Set while a phase runs (a signal stops its load), and the server while one runs. */
let current: AbortController | null = null;
let server: Server | null = null;

async function metricsText(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

/** The counters a row is a difference of, from a /metrics page; disk null when this engine has no disk series. */
function counters(text: string): Counters {
  const sum = (name: string) => metricSeries(text, name).reduce((s, x) => s + x.value, 0);
  const disk = metricSeries(text, 'ebserve_disk_read_bytes_total');
  return { tokens: sum('ebserve_generation_tokens_total'), disk: disk.length ? sum('ebserve_disk_read_bytes_total') : null, batchSum: sum('ebserve_batch_size_sum'), batchCount: sum('ebserve_batch_size_count') };
}

async function runCase(p: CasePlan, rows: ScaleRow[], etaAfter: () => string): Promise<CaseRun> {
  const run: CaseRun = { case: p.name, command: `bin/ebserve ${p.args.join(' ')}`, ...(p.note ? { note: p.note } : {}) };
  if (p.note) log(`case ${p.name}: ${p.note}`);
  if (p.skip) {
    log(`case ${p.name}: skipped: ${p.skip}`);
    for (const c of CONCURRENCIES) rows.push(skippedRow(p.name, p.engine, c, p.skip, { host: p.hostBudget, device: null, plan: null }));
    return { ...run, failure: `skipped: ${p.skip}` };
  }
  log(`case ${p.name}: starting ${run.command}`);
  const t = performance.now();
  const s = new Server(p.args, { readyTimeoutS: READY_TIMEOUT_S });
  server = s;
  let device: number | null = null;
  let plan: Budgets['plan'] = null;
  const done: ScaleRow[] = [];
  try {
    await s.ready();
    run.ready_seconds = (performance.now() - t) / 1000;
    run.rss_ready_bytes = treeRssOf(s.pid);
    const health = (await (await fetch(`${s.url}/health`)).json()) as { engine_details?: Record<string, unknown> };
    run.health_engine_details = health.engine_details;
    device = p.engine === 'offload' ? deviceBudgetFromHealth(health) : null;
    // A request's KV pages: its prompt (a few tokens) and its max_tokens, rounded up.
    plan = memoryPlanFromHealth(health, BODY.max_tokens + 16);
    log(`case ${p.name}: ready in ${run.ready_seconds.toFixed(1)} s, RSS ${gb(run.rss_ready_bytes)}; warming up (${WARMUP_REQUESTS} requests)`);
    await warmUp(s.url, BODY, WARMUP_REQUESTS);
    for (const c of CONCURRENCIES) {
      const label = `case ${p.name} c=${c}`;
      log(`${label}: ${DURATION} s; ${etaAfter()}`);
      await idle(s.url, IDLE_TIMEOUT_S);
      const before = counters(await metricsText(s.url));
      current = new AbortController();
      let load;
      try {
        load = await runLoad(s, { body: BODY, concurrency: c, seconds: DURATION, label, requestTimeoutS: REQUEST_TIMEOUT_S, rss: () => treeRssOf(s.pid), rssIntervalMs: RSS_INTERVAL_MS, stop: current });
      } finally {
        current = null;
      }
      // Tokens, disk bytes and the plan at the end of the window (an idle server's controller
      // moves on); the batch counters once the cut requests are gone.
      const endText = await metricsText(s.url);
      const end = counters(endText);
      await idle(s.url, IDLE_TIMEOUT_S);
      const text = await metricsText(s.url);
      const stats = summarize(load.outcomes, load.seconds);
      logClientProblems(label, stats);
      const row = measuredRow(p.name, p.engine, c, { host: p.hostBudget, device, plan }, {
        stats, seconds: load.seconds, rss: load.rss, before, after: { ...counters(text), tokens: end.tokens, disk: end.disk }, planLevels: planLevelsFromMetrics(endText),
      });
      done.push(row);
      rows.push(row);
      log(`${label}: ${row.tokens_per_s!.toFixed(2)} tokens/s generated (${row.ok} requests finished: ${row.completed_tokens_per_s?.toFixed(2)} tokens/s), p50 ${row.latency_p50_s?.toFixed(2)} s, mean batch ${row.mean_batch?.toFixed(2)}, RSS max ${gb(row.rss_max_bytes ?? NaN)}` +
        `${row.disk_read_bytes_per_s === null ? '' : `, disk ${(row.disk_read_bytes_per_s / 1e6).toFixed(1)} MB/s`}${row.plan_levels ? `, plan ${row.plan_levels.join(' ')}` : ''}; ${row.status_5xx} × 5xx, ${row.errors} errors`);
    }
  } catch (e) {
    run.failure = e instanceof Error ? e.message : String(e);
    log(`case ${p.name}: FAILED: ${run.failure}`);
  }
  const stop = await stopServer(s, `case ${p.name}`, run.failure ?? null);
  server = null;
  Object.assign(run, { exit_code: stop.code, exit_signal: stop.signal, exit_seconds: stop.seconds, generation_failures_logged: s.failures.length });
  if (stop.failure) run.failure = stop.failure;
  if (run.failure) {
    const reason = `${run.failure}${s.tail.length ? ` (server log: ${s.tail.slice(-3).join(' / ')})` : ''}`;
    for (const c of CONCURRENCIES) if (!done.some((r) => r.concurrency === c)) rows.push(skippedRow(p.name, p.engine, c, reason, { host: p.hostBudget, device, plan }));
  }
  return run;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  stopOnSignals(() => ({ server, load: current }), () => {
    for (const pid of children) process.kill(pid, 'SIGTERM');
  });

  const dir = modelDir(cacheRoot(), SHAPE, LAYERS);
  log(`bench-scale: ${SHAPE}${LAYERS === undefined ? '' : ` cut to ${LAYERS} layers`} in ${dir}; cases ${CASES.join(', ')} at concurrency ${CONCURRENCIES.join(' and ')}, ${DURATION} s each; results to ${OUT}`);
  const synth = await ensureCheckpoint(dir);
  const facts = checkpointFacts(dir);
  const routing = (JSON.parse(fs.readFileSync(path.join(dir, 'routing.json'), 'utf8')) as { summary: { load_entropy_min_bits: number; reuse_prev_mean: number } }).summary;
  log(`checkpoint: ${facts.layers} layers, ${(facts.params / 1e9).toFixed(2)} B parameters, ${gb(facts.checkpoint_bytes)}; dense weights ${gb(facts.dense_f32_bytes)} as f32; ` +
    `routing: load entropy ≥ ${routing.load_entropy_min_bits.toFixed(3)} bits, reuse ${routing.reuse_prev_mean.toFixed(3)}`);
  const store = await ensureStore(dir);

  const plans = planCases(dir, facts, store.store_bytes);
  const rows: ScaleRow[] = [];
  const cases: CaseRun[] = [];
  // Per case: start (measured on the first; 60 s until then), warm-up, and each phase plus its idle waits.
  let startSeconds = 60;
  const phaseSeconds = DURATION + 10;
  const left = (from: number) => plans.slice(from).filter((p) => !p.skip).length * (startSeconds + 30 + CONCURRENCIES.length * phaseSeconds);
  for (let i = 0; i < plans.length; i++) {
    const p = plans[i];
    log(`case ${p.name} (${i + 1}/${plans.length}): about ${minutes(left(i))} left in the bench`);
    let phasesDone = 0;
    const run = await runCase(p, rows, () => `about ${minutes(left(i + 1) + (CONCURRENCIES.length - phasesDone++) * phaseSeconds)} left in the bench`);
    if (run.ready_seconds !== undefined) startSeconds = Math.max(startSeconds, run.ready_seconds);
    cases.push(run);
  }

  const cpus = os.cpus();
  const checks = scaleChecks(rows, facts.dense_f32_bytes);
  const result = {
    shape: facts.shape,
    layers: facts.layers,
    params: facts.params,
    expert_params: facts.expert_params,
    checkpoint_bytes: facts.checkpoint_bytes,
    store_bytes: store.store_bytes,
    store_build_seconds: store.store_build_seconds,
    store_build_cached: store.store_build_cached,
    dense_f32_bytes: facts.dense_f32_bytes,
    routing_entropy_min_bits: routing.load_entropy_min_bits,
    reuse_prev_mean: routing.reuse_prev_mean,
    synth_seconds: synth.synth_seconds,
    synth_cached: synth.synth_cached,
    model_dir: dir,
    store_file: store.store_file,
    profile: path.relative(ROOT, PROFILE),
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version, mem_total_bytes: os.totalmem() },
    duration_seconds: DURATION,
    max_queue: MAX_QUEUE,
    request: { endpoint: '/v1/completions', body: BODY, timeout_seconds: REQUEST_TIMEOUT_S, warmup_requests: WARMUP_REQUESTS },
    cases,
    rows,
    checks,
  };
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);

  console.log(`\nbench-scale: ${facts.shape}, ${facts.layers} layers, ${(facts.params / 1e9).toFixed(2)} B parameters (${gb(facts.checkpoint_bytes)} bf16; dense ${gb(facts.dense_f32_bytes)} as f32); ` +
    `store ${gb(store.store_bytes)}, built in ${store.store_build_seconds === null ? '(unknown)' : `${store.store_build_seconds.toFixed(0)} s`}${store.store_build_cached ? ' (cached)' : ''}; ` +
    `routing entropy ≥ ${routing.load_entropy_min_bits.toFixed(3)} bits, reuse ${routing.reuse_prev_mean.toFixed(3)}; ${cpus.length} × ${result.machine.model}; ${DURATION} s per phase; profile ${result.profile}`);
  for (const line of scaleTable(rows)) console.log(line);
  const pass = (ok: boolean) => (ok ? 'PASS' : 'MISS');
  console.log(`${pass(checks.a_tokens_per_s_at_1_at_least_5)}: case a decodes ${checks.a_tokens_per_s_at_1.toFixed(2)} tokens/s at concurrency 1 (>= 5)`);
  console.log(`${pass(checks.a_batching_gain_at_8_at_least_3)}: case a at concurrency 8 runs ${checks.a_batching_gain_at_8.toFixed(2)}× concurrency 1's tokens/s (>= 3×)`);
  console.log(`${pass(checks.b_rss_within_bound)}: case b's RSS max ${gb(checks.b_rss_max_bytes)} <= dense f32 + host budget + device budget + 1.5 GiB = ${gb(checks.b_rss_bound_bytes)}`);
  console.log(`${pass(checks.b_disk_read_bytes_per_s.some((x) => x !== null && x > 0))}: case b's disk reads measured: ${checks.b_disk_read_bytes_per_s.map((x) => (x === null ? 'n/a' : `${(x / 1e6).toFixed(1)} MB/s`)).join(', ')}`);
  console.log(`${pass(Boolean(checks.b_plan_differs_from_a?.some(Boolean)))}: case b's plan differs from case a's (per concurrency: ${JSON.stringify(checks.b_plan_differs_from_a)}; a report: it should only when the disk is slower than the SLA needs)`);
  console.log(`wrote ${path.relative(ROOT, OUT).startsWith('..') ? OUT : path.relative(ROOT, OUT)} in ${minutes(elapsedSeconds())}`);
  return cases.some((c) => (c.case === 'a' || c.case === 'b') && c.failure) ? 1 : 0;
}

process.exitCode = await main();
