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
 * logs go to stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { EMBEDDED_MODEL_DIR } from '../../src/model/embedded.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
// BENCH_SERVE_MAX_TOKENS=N asks N tokens per request instead of 16 (how batching scales when
// decode, not the prompt, dominates a request); that run's results go to serve-max<N>.json.
const MAX_TOKENS = maxTokens(process.env.BENCH_SERVE_MAX_TOKENS);
const RESULTS = path.join(ROOT, 'bench', 'results', MAX_TOKENS === 16 ? 'serve.json' : `serve-max${MAX_TOKENS}.json`);
const CONCURRENCIES = [1, 8, 32];
const ENGINES = ['offload', 'cpu'] as const;
type Engine = (typeof ENGINES)[number];
const MAX_QUEUE = 16;
const DURATION = durationSeconds(process.env.BENCH_SERVE_SECONDS);
const BODY = { prompt: 'Call me Ishmael. Some years ago', max_tokens: MAX_TOKENS, temperature: 0, stream: true, stream_options: { include_usage: true } };
/** A request's timeout: far more than 24 turns (8 decoding + 16 waiting) of a 16-token generation. */
const REQUEST_TIMEOUT_S = 30;
const WARMUP_REQUESTS = 3;
const READY_TIMEOUT_S = 600; // a first start compresses the experts (minutes on 2 cores); later ones read the cache
const IDLE_TIMEOUT_S = 60;
const STOP_TIMEOUT_S = 60; // the server's drain timeout is 30 s
const RSS_INTERVAL_MS = 1000;

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

function maxTokens(env: string | undefined): number {
  if (env === undefined || env === '') return 16;
  const n = Number(env);
  if (!(Number.isInteger(n) && n >= 1 && n <= 200)) throw new Error(`BENCH_SERVE_MAX_TOKENS must be a whole number in 1..200, got ${JSON.stringify(env)}`);
  return n;
}

function durationSeconds(env: string | undefined): number {
  if (env === undefined || env.trim() === '') return 60;
  const s = Number(env);
  if (!(Number.isFinite(s) && s >= 1)) throw new Error(`BENCH_SERVE_SECONDS must be a number of seconds ≥ 1, got '${env}'`);
  return s;
}

interface Row {
  engine: Engine;
  concurrency: number;
  requests_per_s: number;
  tokens_per_s: number;
  latency_p50_s: number;
  latency_p95_s: number;
  latency_p99_s: number;
  /** p95 of the gaps between a stream's consecutive token chunks, and median time to its first one (from the request). */
  inter_token_p95_s: number;
  ttft_p50_s: number;
  /** Sequences per forward step, the server's mean over the phase. */
  mean_batch: number;
  /** Offload only: expert bytes over the link per generated token. */
  link_bytes_per_token?: number;
  ok: number;
  status_429: number;
  status_5xx: number;
  /** Timeouts + connection errors + responses with any other status (see error_breakdown). */
  errors: number;
  rss_start_bytes: number;
  rss_max_bytes: number;
  rss_end_bytes: number;
  error_breakdown: { timeouts: number; connection_errors: number; other_status: Record<string, number>; ok_without_usage: number };
  /** Seconds the clients waited as 429s' Retry-After told them. */
  retry_after_seconds: number;
  finish_reasons: Record<string, number>;
  measured_seconds: number;
}

// ---------------------------------------------------------------------------------------------
// The server process

class Server {
  readonly child: ChildProcess;
  url = '';
  backend = 'unknown';
  engine = 'unknown';
  /** The server's log lines that say a generation failed. */
  failures: string[] = [];
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exited: Promise<void>;
  private onExitHooks: (() => void)[] = [];

  constructor(readonly args: string[]) {
    this.child = spawn(process.execPath, [path.join(ROOT, 'bin', 'ebserve'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        for (const f of this.onExitHooks) f();
        resolve();
      });
    });
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const lines = (rest + chunk).split('\n');
        rest = lines.pop()!;
        for (const line of lines) this.line(line);
      });
    }
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.exit === null;
  }

  onExit(f: () => void): void {
    this.onExitHooks.push(f);
  }

  private readyWaiters: ((e?: Error) => void)[] = [];

  private line(line: string): void {
    process.stderr.write(`         server │ ${line}\n`);
    const listening = /listening on (http:\/\/[^\s;]+)/.exec(line);
    if (listening) this.url = listening[1];
    const backend = /TensorFlow\.js backend (\S+)/.exec(line);
    if (backend) this.backend = backend[1];
    const engine = /engine (\S+):/.exec(line);
    if (engine) this.engine = engine[1];
    if (/generation failed/.test(line)) this.failures.push(line);
    if (/ready in /.test(line)) for (const w of this.readyWaiters.splice(0)) w();
  }

  /** Resolves on the "ready" line; rejects if the process exits first or it takes too long. */
  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server was not ready after ${READY_TIMEOUT_S} s`)), READY_TIMEOUT_S * 1000);
      this.readyWaiters.push(() => {
        clearTimeout(timer);
        if (!this.url) reject(new Error('the server said ready without saying where it listens'));
        else resolve();
      });
      this.onExit(() => {
        clearTimeout(timer);
        reject(new Error(`the server exited before it was ready (code ${this.exit?.code}, signal ${this.exit?.signal})`));
      });
    });
  }

  /** SIGTERM, then waits for the exit (SIGKILL after STOP_TIMEOUT_S). */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number; killed: boolean }> {
    const started = performance.now();
    if (!this.alive) return { ...this.exit!, seconds: 0, killed: false };
    this.child.kill('SIGTERM');
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      log(`the server did not exit ${STOP_TIMEOUT_S} s after SIGTERM: SIGKILL`);
      this.child.kill('SIGKILL');
    }, STOP_TIMEOUT_S * 1000);
    await this.exited;
    clearTimeout(timer);
    return { ...this.exit!, seconds: (performance.now() - started) / 1000, killed };
  }
}

/** VmRSS of a process in bytes, or NaN if it cannot be read (the process is gone). */
function rssOf(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** The value of a metric without labels, or the sum over every series of a labelled one. */
async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const series = [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))];
  if (!series.length) throw new Error(`/metrics has no ${name}`);
  return series.reduce((sum, m) => sum + Number(m[1]), 0);
}

/** Waits until nothing runs and nothing waits (requests cut at the end of a phase drain away). */
async function idle(url: string): Promise<void> {
  const deadline = performance.now() + IDLE_TIMEOUT_S * 1000;
  for (;;) {
    const [waiting, running] = await Promise.all([metric(url, 'ebserve_queue_depth'), metric(url, 'ebserve_requests_running')]);
    if (waiting === 0 && running === 0) return;
    if (performance.now() > deadline) throw new Error(`the server was still busy ${IDLE_TIMEOUT_S} s after a phase (${running} running, ${waiting} waiting)`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function warmUp(url: string): Promise<void> {
  for (let i = 0; i < WARMUP_REQUESTS; i++) {
    const t = performance.now();
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...BODY, stream: false, stream_options: undefined }) });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`warm-up request ${i + 1}: status ${res.status}: ${text}`);
    const body = JSON.parse(text) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };
    log(`warm-up ${i + 1}/${WARMUP_REQUESTS}: ${((performance.now() - t) / 1000).toFixed(3)} s, ${body.usage.completion_tokens} tokens (${body.choices[0].finish_reason}): ${JSON.stringify(body.choices[0].text)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// One phase

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** One streaming request as a client saw it. */
interface Outcome {
  status: number;
  seconds: number;
  /** Seconds from the request to each chunk that carried text. */
  chunks: number[];
  tokens?: number;
  finish?: string;
  retryAfter?: number;
  error?: 'timeout' | string;
}

/** POSTs BODY and reads the server-sent events as they arrive. */
async function request(url: string, stop: AbortSignal): Promise<Outcome> {
  const t = performance.now();
  const since = () => (performance.now() - t) / 1000;
  const signal = AbortSignal.any([stop, AbortSignal.timeout(REQUEST_TIMEOUT_S * 1000)]);
  try {
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(BODY), signal });
    if (res.status !== 200) {
      await res.text();
      return { status: res.status, seconds: since(), chunks: [], retryAfter: Number(res.headers.get('retry-after') ?? 0) };
    }
    const out: Outcome = { status: 200, seconds: 0, chunks: [] };
    const decoder = new TextDecoder();
    let rest = '';
    for await (const part of res.body!) {
      const events = (rest + decoder.decode(part as Uint8Array, { stream: true })).split('\n\n');
      rest = events.pop()!;
      for (const e of events) {
        const data = e.startsWith('data: ') ? e.slice(6) : '';
        if (!data || data === '[DONE]') continue;
        const chunk = JSON.parse(data) as { choices: { text?: string; finish_reason?: string | null }[]; usage?: { completion_tokens: number } | null };
        if (chunk.choices[0]?.text) out.chunks.push(since());
        if (chunk.choices[0]?.finish_reason) out.finish = chunk.choices[0].finish_reason;
        if (chunk.usage) out.tokens = chunk.usage.completion_tokens;
      }
    }
    out.seconds = since();
    return out;
  } catch (e) {
    if (stop.aborted) return { status: 0, seconds: since(), chunks: [], error: 'cut at the end of the phase' };
    const timedOut = e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError');
    return { status: 0, seconds: since(), chunks: [], error: timedOut ? 'timeout' : (e as NodeJS.ErrnoException).cause ? String(((e as { cause: NodeJS.ErrnoException }).cause).code ?? e) : String(e) };
  }
}

/** Set while a phase runs, so that a signal can stop its load. */
let current: AbortController | null = null;

async function phase(server: Server, engine: Engine, concurrency: number): Promise<Row> {
  await idle(server.url);
  const before = await counters(server.url);
  const outcomes: Outcome[] = [];
  let retryWait = 0;
  const rss: number[] = [rssOf(server.pid)];
  const sampler = setInterval(() => rss.push(rssOf(server.pid)), RSS_INTERVAL_MS);
  const started = performance.now();
  const deadline = started + DURATION * 1000;
  const stop = new AbortController();
  current = stop;
  const stopOnExit = () => stop.abort();
  server.onExit(stopOnExit);
  const cut = setTimeout(() => stop.abort(), DURATION * 1000);
  const count = (f: (o: Outcome) => boolean) => outcomes.reduce((n, o) => n + (f(o) ? 1 : 0), 0);
  const ticker = setInterval(() => {
    log(`${engine} c=${concurrency}: ${((performance.now() - started) / 1000).toFixed(0)} / ${DURATION} s: ${count((o) => o.status === 200)} ok, ${count((o) => o.status === 429)} × 429, ${count((o) => o.status >= 500)} × 5xx, ${count((o) => o.status === 0)} errors; RSS ${(rss[rss.length - 1] / 2 ** 20).toFixed(0)} MiB`);
  }, Math.max(5, DURATION / 6) * 1000);
  // Each client: a request, then the next; after a 429, the wait its Retry-After asked for.
  const client = async () => {
    while (performance.now() < deadline && !stop.signal.aborted) {
      const o = await request(server.url, stop.signal);
      if (o.error === 'cut at the end of the phase') break;
      outcomes.push(o);
      if (o.status === 429 && o.retryAfter) {
        const wait = Math.min(o.retryAfter * 1000, deadline - performance.now());
        if (wait > 0) {
          retryWait += wait / 1000;
          await new Promise((r) => setTimeout(r, wait));
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, client));
  } finally {
    clearTimeout(cut);
    clearInterval(ticker);
    clearInterval(sampler);
    current = null;
  }
  const seconds = (performance.now() - started) / 1000;
  rss.push(rssOf(server.pid));
  if (!server.alive) throw new Error(`the server exited during the ${engine} c=${concurrency} phase (code ${server.exit?.code}, signal ${server.exit?.signal})`);
  await idle(server.url);
  const after = await counters(server.url);

  const ok = outcomes.filter((o) => o.status === 200);
  const tokens = ok.reduce((n, o) => n + (o.tokens ?? 0), 0);
  const okWithoutUsage = ok.filter((o) => o.tokens === undefined).length;
  const finish: Record<string, number> = {};
  for (const o of ok) finish[o.finish ?? 'none'] = (finish[o.finish ?? 'none'] ?? 0) + 1;
  const latencies = ok.map((o) => o.seconds).sort((a, b) => a - b);
  const gaps = ok.flatMap((o) => o.chunks.slice(1).map((c, i) => c - o.chunks[i])).sort((a, b) => a - b);
  const firsts = ok.filter((o) => o.chunks.length).map((o) => o.chunks[0]).sort((a, b) => a - b);
  const other: Record<string, number> = {};
  for (const o of outcomes) if (o.status !== 0 && o.status !== 200 && o.status !== 429 && o.status < 500) other[String(o.status)] = (other[String(o.status)] ?? 0) + 1;
  const timeouts = count((o) => o.error === 'timeout');
  const connectionErrors = count((o) => o.status === 0 && o.error !== 'timeout');
  const kinds = new Map<string, number>();
  for (const o of outcomes) if (o.status === 0 && o.error !== 'timeout') kinds.set(o.error!, (kinds.get(o.error!) ?? 0) + 1);
  if (kinds.size > 0) log(`${engine} c=${concurrency}: connection errors: ${[...kinds].map(([k, n]) => `${k} × ${n}`).join(', ')}`);
  if (okWithoutUsage > 0) log(`${engine} c=${concurrency}: ${okWithoutUsage} 2xx streams without a usage chunk (counted as 0 tokens)`);
  const valid = rss.filter(Number.isFinite);
  const generated = after.tokens - before.tokens;
  const row: Row = {
    engine,
    concurrency,
    requests_per_s: ok.length / seconds,
    tokens_per_s: tokens / seconds,
    latency_p50_s: percentile(latencies, 50),
    latency_p95_s: percentile(latencies, 95),
    latency_p99_s: percentile(latencies, 99),
    inter_token_p95_s: percentile(gaps, 95),
    ttft_p50_s: percentile(firsts, 50),
    mean_batch: (after.batchSum - before.batchSum) / Math.max(1, after.batchCount - before.batchCount),
    ...(engine === 'offload' ? { link_bytes_per_token: (after.linkBytes - before.linkBytes) / Math.max(1, generated) } : {}),
    ok: ok.length,
    status_429: count((o) => o.status === 429),
    status_5xx: count((o) => o.status >= 500),
    errors: timeouts + connectionErrors + Object.values(other).reduce((a, b) => a + b, 0),
    rss_start_bytes: rss[0],
    rss_max_bytes: Math.max(...valid),
    rss_end_bytes: rss[rss.length - 1],
    error_breakdown: { timeouts, connection_errors: connectionErrors, other_status: other, ok_without_usage: okWithoutUsage },
    retry_after_seconds: retryWait,
    finish_reasons: finish,
    measured_seconds: seconds,
  };
  log(`${engine} c=${concurrency}: ${ok.length} ok in ${seconds.toFixed(1)} s = ${row.requests_per_s.toFixed(2)} req/s, ${row.tokens_per_s.toFixed(1)} tokens/s; p50 ${row.latency_p50_s.toFixed(3)} s, inter-token p95 ${(1e3 * row.inter_token_p95_s).toFixed(2)} ms, TTFT p50 ${(1e3 * row.ttft_p50_s).toFixed(1)} ms, mean batch ${row.mean_batch.toFixed(2)}${row.link_bytes_per_token !== undefined ? `, ${(row.link_bytes_per_token / 1e3).toFixed(1)} kB/token over the link` : ''}; ${row.status_429} × 429, ${row.status_5xx} × 5xx, ${row.errors} errors`);
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

const mib = (b: number) => (Number.isFinite(b) ? (b / 2 ** 20).toFixed(1) : 'n/a');
const sec = (s: number) => (Number.isFinite(s) ? s.toFixed(3) : 'n/a');

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
  const server = new Server(args);
  onServer(server);
  let rssReady = NaN;
  let rssBeforeStop = NaN;
  let failure: unknown = null;
  try {
    await server.ready();
    rssReady = rssOf(server.pid);
    log(`server pid ${server.pid} ready at ${server.url} (backend ${server.backend}, engine ${server.engine}); RSS ${mib(rssReady)} MiB`);
    await warmUp(server.url);
    for (const c of CONCURRENCIES) {
      log(`${engine} c=${c}: ${DURATION} s`);
      rows.push(await phase(server, engine, c));
    }
    rssBeforeStop = rssOf(server.pid);
  } catch (e) {
    failure = e;
  }
  log('stopping the server (SIGTERM)');
  const stop = await server.stop();
  onServer(null);
  log(`server exited in ${stop.seconds.toFixed(1)} s: code ${stop.code}, signal ${stop.signal}${stop.killed ? ' (SIGKILL after the timeout)' : ''}`);
  if (!failure && !(stop.code === 0 && stop.signal === null && !stop.killed)) failure = new Error(`the ${engine} server did not exit cleanly (code ${stop.code}, signal ${stop.signal})`);
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
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping the load and the server`);
    current?.abort();
    void (server ? server.stop() : Promise.resolve(null)).then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Last resort (an uncaught throw past main's finally): never leave a server behind.
  process.on('exit', () => {
    if (server?.alive) server.child.kill('SIGKILL');
  });

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
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return 0;
}

process.exitCode = await main();
