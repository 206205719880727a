/**
 * `make bench-serve`: the OpenAI-compatible server under load, end to end, for the default path
 * (`bin/ebserve serve`: the offload engine with the controller, the native forward, continuous
 * batching) and for `--engine cpu` (every expert resident in the addon, no link, no controller),
 * in the same run. For each engine it starts a real `bin/ebserve serve --port 0 --max-queue 16`
 * on the embedded model (the port it picked read from its log), waits for "ready", warms it up,
 * then runs concurrency 1, 8 and 32 — each for DURATION seconds (60, or env BENCH_SERVE_SECONDS) —
 * of streaming POST /v1/completions with one fixed body (BODY below), from clients in this process
 * that do what an SDK does: read the server-sent events as they come, and after a 429 wait the
 * Retry-After it was given.
 *
 * Per engine and concurrency: requests/s and completion tokens/s (the usage chunk's
 * completion_tokens summed over the 2xx streams), p50/p95/p99 request latency, the p95 gap between
 * consecutive token chunks and the median time to the first one as the clients saw them, counts
 * of 2xx, 429 (at 32 connections, expected: 8 decoding + 16 waiting < 32), 5xx and other errors,
 * the server's mean batch (sequences per forward step, from its ebserve_batch_size histogram) and,
 * for the offload engine, link bytes per generated token (ebserve_expert_transfer_bytes_total over
 * ebserve_generation_tokens_total), and the server's RSS (VmRSS, sampled every second). Between
 * phases it waits until the server is idle (queue and running gauges of /metrics at 0).
 *
 * Each server is stopped with SIGTERM, failure or not, and must exit 0. Prints a table and PASS/MISS
 * lines, writes bench/results/serve.json. A report, never an assertion: a MISS does not fail the
 * run (a server that does not start, dies, or does not exit 0 does). Progress and the servers'
 * logs go to stderr. The server process, the clients and their summary are clients.ts's (shared
 * with bench/scale).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { EMBEDDED_MODEL_DIR } from '../../src/model/embedded.js';
import { durationSeconds, elapsedSeconds, idle, log, logClientProblems, metric, mib, ROOT, rssOf, runLoad, sec, Server, stopOnSignals, stopServer, summarize, warmUp, type LoadStats } from './clients.js';

// BENCH_SERVE_MAX_TOKENS=N asks N tokens per request instead of 16 (how batching scales when
// decode, not the prompt, dominates a request); that run's results go to serve-max<N>.json.
const MAX_TOKENS = maxTokens(process.env.BENCH_SERVE_MAX_TOKENS);
const RESULTS = path.join(ROOT, 'bench', 'results', MAX_TOKENS === 16 ? 'serve.json' : `serve-max${MAX_TOKENS}.json`);
const CONCURRENCIES = [1, 8, 32];
const ENGINES = ['offload', 'cpu'] as const;
type Engine = (typeof ENGINES)[number];
const MAX_QUEUE = 16;
const DURATION = durationSeconds('BENCH_SERVE_SECONDS', process.env.BENCH_SERVE_SECONDS);
const BODY = { prompt: 'Call me Ishmael. Some years ago', max_tokens: MAX_TOKENS, temperature: 0, stream: true, stream_options: { include_usage: true } };
/** A request's timeout: far more than 24 turns (8 decoding + 16 waiting) of a 16-token generation. */
const REQUEST_TIMEOUT_S = 30;
const WARMUP_REQUESTS = 3;
const READY_TIMEOUT_S = 600; // a first start compresses the experts (minutes on 2 cores); later ones read the cache
const IDLE_TIMEOUT_S = 60;
const STOP_TIMEOUT_S = 60; // the server's drain timeout is 30 s
const RSS_INTERVAL_MS = 1000;

function maxTokens(env: string | undefined): number {
  if (env === undefined || env === '') return 16;
  const n = Number(env);
  if (!(Number.isInteger(n) && n >= 1 && n <= 200)) throw new Error(`BENCH_SERVE_MAX_TOKENS must be a whole number in 1..200, got ${JSON.stringify(env)}`);
  return n;
}

/** A row of serve.json: what the clients saw (clients.ts's LoadStats), and what the server said over the phase. */
type Row = Omit<LoadStats, 'connectionErrorKinds'> & {
  engine: Engine;
  concurrency: number;
  /** Sequences per forward step, the server's mean over the phase. */
  mean_batch: number;
  /** Offload only: expert bytes over the link per generated token. */
  link_bytes_per_token?: number;
  rss_start_bytes: number;
  rss_max_bytes: number;
  rss_end_bytes: number;
  /** Seconds the clients waited as 429s' Retry-After told them. */
  retry_after_seconds: number;
  measured_seconds: number;
};


// ---------------------------------------------------------------------------------------------
// One phase

/** Set while a phase runs, so that a signal can stop its load. */
let current: AbortController | null = null;

async function phase(server: Server, engine: Engine, concurrency: number): Promise<Row> {
  await idle(server.url, IDLE_TIMEOUT_S);
  const before = await counters(server.url);
  const label = `${engine} c=${concurrency}`;
  current = new AbortController();
  let load;
  try {
    load = await runLoad(server, { body: BODY, concurrency, seconds: DURATION, label, requestTimeoutS: REQUEST_TIMEOUT_S, rss: () => rssOf(server.pid), rssIntervalMs: RSS_INTERVAL_MS, stop: current });
  } finally {
    current = null;
  }
  const { seconds, rss } = load;
  await idle(server.url, IDLE_TIMEOUT_S);
  const after = await counters(server.url);

  const s = summarize(load.outcomes, seconds);
  logClientProblems(label, s);
  const valid = rss.filter(Number.isFinite);
  const generated = after.tokens - before.tokens;
  const row: Row = {
    engine,
    concurrency,
    requests_per_s: s.requests_per_s,
    tokens_per_s: s.tokens_per_s,
    latency_p50_s: s.latency_p50_s,
    latency_p95_s: s.latency_p95_s,
    latency_p99_s: s.latency_p99_s,
    inter_token_p95_s: s.inter_token_p95_s,
    ttft_p50_s: s.ttft_p50_s,
    mean_batch: (after.batchSum - before.batchSum) / Math.max(1, after.batchCount - before.batchCount),
    ...(engine === 'offload' ? { link_bytes_per_token: (after.linkBytes - before.linkBytes) / Math.max(1, generated) } : {}),
    ok: s.ok,
    status_429: s.status_429,
    status_5xx: s.status_5xx,
    errors: s.errors,
    rss_start_bytes: rss[0],
    rss_max_bytes: Math.max(...valid),
    rss_end_bytes: rss[rss.length - 1],
    error_breakdown: s.error_breakdown,
    retry_after_seconds: load.retryWait,
    finish_reasons: s.finish_reasons,
    measured_seconds: seconds,
  };
  log(`${label}: ${row.ok} ok in ${seconds.toFixed(1)} s = ${row.requests_per_s.toFixed(2)} req/s, ${row.tokens_per_s.toFixed(1)} tokens/s; p50 ${row.latency_p50_s.toFixed(3)} s, inter-token p95 ${(1e3 * row.inter_token_p95_s).toFixed(2)} ms, TTFT p50 ${(1e3 * row.ttft_p50_s).toFixed(1)} ms, mean batch ${row.mean_batch.toFixed(2)}${row.link_bytes_per_token !== undefined ? `, ${(row.link_bytes_per_token / 1e3).toFixed(1)} kB/token over the link` : ''}; ${row.status_429} × 429, ${row.status_5xx} × 5xx, ${row.errors} errors`);
  return row;
}

/** The server's counters a phase's rows are differences of. */
async function counters(url: string) {
  const [batchSum, batchCount, linkBytes, tokens] = await Promise.all(
    ['ebserve_batch_size_sum', 'ebserve_batch_size_count', 'ebserve_expert_transfer_bytes_total', 'ebserve_generation_tokens_total'].map((n) => metric(url, n).catch(() => 0)),
  );
  return { batchSum, batchCount, linkBytes, tokens };
}

// ---------------------------------------------------------------------------------------------

interface EngineRun {
  engine: Engine;
  command: string;
  backend: string;
  rss_ready_bytes: number;
  rss_before_stop_bytes: number;
  exit_code: number | null;
  exit_signal: NodeJS.Signals | null;
  exit_seconds: number;
  generation_failures_logged: number;
}

/** One server, every concurrency; the rows go into `rows` as they come. */
async function runEngine(engine: Engine, rows: Row[], onServer: (s: Server | null) => void): Promise<{ run: EngineRun; failure: unknown }> {
  const args = ['serve', '--port', '0', '--max-queue', String(MAX_QUEUE), ...(engine === 'cpu' ? ['--engine', 'cpu'] : [])];
  log(`starting bin/ebserve ${args.join(' ')}; ${CONCURRENCIES.length} phases of ${DURATION} s`);
  const server = new Server(args, { readyTimeoutS: READY_TIMEOUT_S, stopTimeoutS: STOP_TIMEOUT_S });
  onServer(server);
  let rssReady = NaN;
  let rssBeforeStop = NaN;
  let failure: unknown = null;
  try {
    await server.ready();
    rssReady = rssOf(server.pid);
    log(`server pid ${server.pid} ready at ${server.url} (backend ${server.backend}, engine ${server.engine}); RSS ${mib(rssReady)} MiB`);
    await warmUp(server.url, BODY, WARMUP_REQUESTS);
    for (const c of CONCURRENCIES) {
      log(`${engine} c=${c}: ${DURATION} s`);
      rows.push(await phase(server, engine, c));
    }
    rssBeforeStop = rssOf(server.pid);
  } catch (e) {
    failure = e;
  }
  const stop = await stopServer(server, engine, failure ? 'failed' : null);
  onServer(null);
  if (!failure && stop.failure) failure = new Error(stop.failure);
  return {
    failure,
    run: {
      engine, command: `bin/ebserve ${args.join(' ')}`, backend: server.backend, rss_ready_bytes: rssReady, rss_before_stop_bytes: rssBeforeStop,
      exit_code: stop.code, exit_signal: stop.signal, exit_seconds: stop.seconds, generation_failures_logged: server.failures.length,
    },
  };
}

async function main(): Promise<number> {
  let server: Server | null = null;
  stopOnSignals(() => ({ server, load: current }));

  const rows: Row[] = [];
  const servers: EngineRun[] = [];
  for (const engine of ENGINES) {
    const r = await runEngine(engine, rows, (s) => (server = s));
    servers.push(r.run);
    if (r.failure) {
      log(`FAILED: ${r.failure instanceof Error ? r.failure.message : String(r.failure)}`);
      return 1;
    }
  }

  const cpus = os.cpus();
  const row = (e: Engine, c: number) => rows.find((r) => r.engine === e && r.concurrency === c);
  const no5xx = rows.every((r) => r.status_5xx === 0);
  const only429 = ENGINES.every((e) => {
    const r = row(e, 32);
    return r !== undefined && r.errors + r.status_5xx === 0;
  });
  const ratio = (a?: number, b?: number) => (a !== undefined && b ? a / b : NaN);
  const checks = {
    no_5xx: no5xx,
    non_2xx_at_32_all_429: only429,
    offload_over_cpu_at_1: ratio(row('offload', 1)?.tokens_per_s, row('cpu', 1)?.tokens_per_s),
    batching_gain_at_8: Object.fromEntries(ENGINES.map((e) => [e, ratio(row(e, 8)?.tokens_per_s, row(e, 1)?.tokens_per_s)])),
    link_bytes_per_token_8_over_1: ratio(row('offload', 8)?.link_bytes_per_token, row('offload', 1)?.link_bytes_per_token),
  };
  const result = {
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version },
    model: path.relative(ROOT, EMBEDDED_MODEL_DIR),
    duration_seconds: DURATION,
    servers,
    max_queue: MAX_QUEUE,
    request: { endpoint: '/v1/completions', body: BODY, timeout_seconds: REQUEST_TIMEOUT_S, warmup_requests: WARMUP_REQUESTS, retry_after: 'honoured' },
    rows,
    checks,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');

  console.log(`\nbin/ebserve serve --max-queue ${MAX_QUEUE} on the embedded model, ${cpus.length} × ${result.machine.model}, Node ${process.version}; ` +
    `${DURATION} s per concurrency; streaming body ${JSON.stringify(BODY)}`);
  console.log('| engine | concurrency | requests/s | tokens/s | p50 s | p95 s | p99 s | inter-token p95 ms | TTFT p50 ms | mean batch | link kB/token | 429 | 5xx | errors | RSS max MiB |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.engine} | ${r.concurrency} | ${r.requests_per_s.toFixed(2)} | ${r.tokens_per_s.toFixed(1)} | ${sec(r.latency_p50_s)} | ${sec(r.latency_p95_s)} | ${sec(r.latency_p99_s)} | ${(1e3 * r.inter_token_p95_s).toFixed(2)} | ${(1e3 * r.ttft_p50_s).toFixed(1)} | ${r.mean_batch.toFixed(2)} | ${r.link_bytes_per_token === undefined ? '—' : (r.link_bytes_per_token / 1e3).toFixed(1)} | ${r.status_429} | ${r.status_5xx} | ${r.errors} | ${mib(r.rss_max_bytes)} |`);
  }
  const pass = (ok: boolean) => (ok ? 'PASS' : 'MISS');
  console.log(`${pass(no5xx)}: zero 5xx at every concurrency`);
  console.log(`${pass(only429)}: every non-2xx at concurrency 32 is a 429`);
  console.log(`${pass(checks.offload_over_cpu_at_1 >= 0.5)}: the default path at concurrency 1 runs ${(100 * checks.offload_over_cpu_at_1).toFixed(0)} % of --engine cpu's tokens/s (>= 50 %)`);
  for (const e of ENGINES) console.log(`${pass(checks.batching_gain_at_8[e] >= 3)}: ${e}: concurrency 8 runs ${checks.batching_gain_at_8[e].toFixed(2)}× concurrency 1's tokens/s (>= 3×)`);
  console.log(`${pass(checks.link_bytes_per_token_8_over_1 <= 0.8)}: offload link bytes per token at concurrency 8 are ${checks.link_bytes_per_token_8_over_1.toFixed(2)}× concurrency 1's (<= 0.8×)`);
  for (const s of servers) console.log(`${s.engine} server: RSS ${mib(s.rss_ready_bytes)} MiB when ready, ${mib(s.rss_before_stop_bytes)} MiB before SIGTERM; exited code ${s.exit_code} ${s.exit_seconds.toFixed(1)} s after SIGTERM${s.generation_failures_logged ? `; ${s.generation_failures_logged} "generation failed" lines in its log` : ''}`);
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${elapsedSeconds().toFixed(0)} s`);
  return 0;
}

process.exitCode = await main();
