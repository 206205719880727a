/**
 * `make bench-serve`: the OpenAI-compatible server under load, end to end. Starts a real
 * `bin/ebserve serve --port 0 --max-queue 16` (the embedded model, the default policy and profile;
 * the port it picked is read from its log), waits for "ready", warms it up with a few requests,
 * then drives POST /v1/completions with autocannon at concurrency 1, 8 and 32 — each for
 * DURATION seconds (60, or env BENCH_SERVE_SECONDS) — with one fixed body (BODY below).
 *
 * Per concurrency: requests/s and completion tokens/s (usage.completion_tokens summed over the 2xx
 * response bodies), p50/p95/p99 latency of the 2xx requests (exact, from every response time),
 * counts of 2xx, 429 (the bounded queue refusing: expected at 32 connections, since 1 generating
 * + 16 waiting < 32), 5xx and other errors (timeouts, connection errors, any other status), and
 * the server's RSS (VmRSS of /proc/<pid>/status, sampled every second) at the start, max and end
 * of the phase. Between phases it waits until the server is idle (queue and running gauges of
 * /metrics at 0).
 *
 * The server is stopped with SIGTERM at the end, failure or not, and must exit 0. Prints a table
 * and two PASS/MISS lines (no 5xx anywhere; every non-2xx outcome at 32 a 429), writes
 * bench/results/serve.json. A report, never an assertion: a MISS does not fail the run (a server
 * that does not start, dies, or does not exit 0 does). Progress and the server's log go to stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import autocannon, { type Instance } from 'autocannon';

import { EMBEDDED_MODEL_DIR } from '../../src/model/embedded.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'serve.json');
const CONCURRENCIES = [1, 8, 32];
const MAX_QUEUE = 16;
const DURATION = durationSeconds(process.env.BENCH_SERVE_SECONDS);
const BODY = { prompt: 'Call me Ishmael. Some years ago', max_tokens: 16, temperature: 0 };
/** autocannon's per-request timeout. 17 turns (1 running + 16 waiting) of a 16-token generation fit well inside it. */
const REQUEST_TIMEOUT_S = 30;
const WARMUP_REQUESTS = 3;
const READY_TIMEOUT_S = 600; // a first start compresses the experts (minutes on 2 cores); later ones read the cache
const IDLE_TIMEOUT_S = 60;
const STOP_TIMEOUT_S = 60; // the server's drain timeout is 30 s
const RSS_INTERVAL_MS = 1000;

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

function durationSeconds(env: string | undefined): number {
  if (env === undefined || env.trim() === '') return 60;
  const s = Number(env);
  if (!(Number.isFinite(s) && s >= 1)) throw new Error(`BENCH_SERVE_SECONDS must be a number of seconds ≥ 1, got '${env}'`);
  return s;
}

interface Row {
  concurrency: number;
  requests_per_s: number;
  tokens_per_s: number;
  latency_p50_s: number;
  latency_p95_s: number;
  latency_p99_s: number;
  ok: number;
  status_429: number;
  status_5xx: number;
  /** Timeouts + connection errors + responses with any other status (see error_breakdown). */
  errors: number;
  rss_start_bytes: number;
  rss_max_bytes: number;
  rss_end_bytes: number;
  error_breakdown: { timeouts: number; connection_errors: number; other_status: Record<string, number>; ok_without_usage: number };
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

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  if (!m) throw new Error(`/metrics has no ${name}`);
  return Number(m[1]);
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
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(BODY) });
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

/** Set by run() so that a signal can stop the load mid-phase. */
let current: Instance | null = null;

async function phase(server: Server, concurrency: number): Promise<Row> {
  await idle(server.url);
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  const finish: Record<string, number> = {};
  let tokens = 0;
  let okWithoutUsage = 0;
  let timeouts = 0;
  let connectionErrors = 0;
  const connectionErrorKinds = new Map<string, number>();
  // autocannon calls a request's onResponse with the body, then (synchronously, on the same
  // connection) emits 'response' with the response time: the body waits here in between.
  let body: string | null = null;

  const rss: number[] = [rssOf(server.pid)];
  const sampler = setInterval(() => rss.push(rssOf(server.pid)), RSS_INTERVAL_MS);
  const started = performance.now();
  const instance = autocannon({
    url: `${server.url}/v1/completions`,
    connections: concurrency,
    duration: DURATION,
    timeout: REQUEST_TIMEOUT_S,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(BODY),
    requests: [{ onResponse: (_status, b) => { body = b; } }],
  });
  current = instance;
  const stopOnExit = () => instance.stop();
  server.onExit(stopOnExit);
  instance.on('response', (_client, status, _bytes, ms) => {
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
    const b = body;
    body = null;
    if (status < 200 || status >= 300) return;
    latencies.push(ms / 1000);
    try {
      const r = JSON.parse(b ?? '') as { usage?: { completion_tokens?: unknown }; choices?: { finish_reason?: unknown }[] };
      const n = r.usage?.completion_tokens;
      if (typeof n === 'number') tokens += n;
      else okWithoutUsage++;
      const f = String(r.choices?.[0]?.finish_reason ?? 'none');
      finish[f] = (finish[f] ?? 0) + 1;
    } catch {
      okWithoutUsage++;
    }
  });
  instance.on('reqError', (e) => {
    if (e.message === 'request timed out') timeouts++;
    else {
      connectionErrors++;
      const kind = (e as NodeJS.ErrnoException).code ?? e.message;
      connectionErrorKinds.set(kind, (connectionErrorKinds.get(kind) ?? 0) + 1);
    }
  });
  const count = (f: (s: number) => boolean) => [...statuses].reduce((n, [s, c]) => n + (f(s) ? c : 0), 0);
  const ticker = setInterval(() => {
    log(`c=${concurrency}: ${((performance.now() - started) / 1000).toFixed(0)} / ${DURATION} s: ${count((s) => s >= 200 && s < 300)} ok, ${count((s) => s === 429)} × 429, ${count((s) => s >= 500)} × 5xx, ${timeouts + connectionErrors} errors; RSS ${(rss[rss.length - 1] / 2 ** 20).toFixed(0)} MiB`);
  }, Math.max(5, DURATION / 6) * 1000);
  let result;
  try {
    result = await instance;
  } finally {
    clearInterval(ticker);
    clearInterval(sampler);
    current = null;
  }
  const seconds = (performance.now() - started) / 1000;
  rss.push(rssOf(server.pid));
  if (!server.alive) throw new Error(`the server exited during the c=${concurrency} phase (code ${server.exit?.code}, signal ${server.exit?.signal})`);

  // Cross-check with autocannon's own counts.
  for (const [s, c] of statuses) {
    const theirs = result.statusCodeStats[String(s)]?.count;
    if (theirs !== c) log(`note: autocannon counted ${theirs} responses with status ${s}, this script ${c}`);
  }
  if (result.errors !== timeouts + connectionErrors || result.timeouts !== timeouts) {
    log(`note: autocannon counted ${result.errors} errors (${result.timeouts} timeouts), this script ${timeouts + connectionErrors} (${timeouts})`);
  }
  if (connectionErrorKinds.size > 0) log(`c=${concurrency}: connection errors: ${[...connectionErrorKinds].map(([k, n]) => `${k} × ${n}`).join(', ')}`);
  if (okWithoutUsage > 0) log(`c=${concurrency}: ${okWithoutUsage} 2xx responses without usage.completion_tokens (counted as 0 tokens)`);

  const ok = count((s) => s >= 200 && s < 300);
  const other: Record<string, number> = {};
  for (const [s, c] of statuses) if (!(s >= 200 && s < 300) && s !== 429 && s < 500) other[String(s)] = c;
  latencies.sort((a, b) => a - b);
  const valid = rss.filter(Number.isFinite);
  const row: Row = {
    concurrency,
    requests_per_s: ok / seconds,
    tokens_per_s: tokens / seconds,
    latency_p50_s: percentile(latencies, 50),
    latency_p95_s: percentile(latencies, 95),
    latency_p99_s: percentile(latencies, 99),
    ok,
    status_429: count((s) => s === 429),
    status_5xx: count((s) => s >= 500),
    errors: timeouts + connectionErrors + Object.values(other).reduce((a, b) => a + b, 0),
    rss_start_bytes: rss[0],
    rss_max_bytes: Math.max(...valid),
    rss_end_bytes: rss[rss.length - 1],
    error_breakdown: { timeouts, connection_errors: connectionErrors, other_status: other, ok_without_usage: okWithoutUsage },
    finish_reasons: finish,
    measured_seconds: seconds,
  };
  log(`c=${concurrency}: ${ok} ok in ${seconds.toFixed(1)} s = ${row.requests_per_s.toFixed(2)} req/s, ${row.tokens_per_s.toFixed(1)} tokens/s; p50 ${row.latency_p50_s.toFixed(3)} s, p99 ${row.latency_p99_s.toFixed(3)} s; ${row.status_429} × 429, ${row.status_5xx} × 5xx, ${row.errors} errors; finish ${JSON.stringify(finish)}`);
  return row;
}

// ---------------------------------------------------------------------------------------------

const mib = (b: number) => (Number.isFinite(b) ? (b / 2 ** 20).toFixed(1) : 'n/a');
const sec = (s: number) => (Number.isFinite(s) ? s.toFixed(3) : 'n/a');

async function main(): Promise<number> {
  const args = ['serve', '--port', '0', '--max-queue', String(MAX_QUEUE)];
  log(`starting bin/ebserve ${args.join(' ')}; ${CONCURRENCIES.length} phases of ${DURATION} s`);
  const server = new Server(args);
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping the load and the server`);
    current?.stop();
    void server.stop().then((r) => {
      log(`server exited: code ${r.code}, signal ${r.signal}`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Last resort (an uncaught throw past main's finally): never leave the server behind.
  process.on('exit', () => {
    if (server.alive) server.child.kill('SIGKILL');
  });

  const rows: Row[] = [];
  let rssReady = NaN;
  let rssBeforeStop = NaN;
  let failure: unknown = null;
  try {
    await server.ready();
    rssReady = rssOf(server.pid);
    log(`server pid ${server.pid} ready at ${server.url} (backend ${server.backend}, engine ${server.engine}); RSS ${mib(rssReady)} MiB`);
    await warmUp(server.url);
    for (const c of CONCURRENCIES) {
      log(`c=${c}: ${DURATION} s`);
      rows.push(await phase(server, c));
    }
    rssBeforeStop = rssOf(server.pid);
  } catch (e) {
    failure = e;
  } finally {
    stopping = true;
    log('stopping the server (SIGTERM)');
  }
  const stop = await server.stop();
  const exitedClean = stop.code === 0 && stop.signal === null && !stop.killed;
  log(`server exited in ${stop.seconds.toFixed(1)} s: code ${stop.code}, signal ${stop.signal}${stop.killed ? ' (SIGKILL after the timeout)' : ''}`);
  if (failure) {
    log(`FAILED: ${failure instanceof Error ? failure.message : String(failure)}`);
    return 1;
  }

  const cpus = os.cpus();
  const at32 = rows.find((r) => r.concurrency === 32);
  const no5xx = rows.every((r) => r.status_5xx === 0);
  const notOk32 = at32 ? at32.status_429 + at32.status_5xx + at32.errors : 0;
  const only429 = at32 !== undefined && notOk32 === at32.status_429;
  const result = {
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version },
    model: path.relative(ROOT, EMBEDDED_MODEL_DIR),
    duration_seconds: DURATION,
    server: {
      command: `bin/ebserve ${args.join(' ')}`,
      backend: server.backend,
      engine: server.engine,
      max_queue: MAX_QUEUE,
      rss_ready_bytes: rssReady,
      rss_before_stop_bytes: rssBeforeStop,
      exit_code: stop.code,
      exit_signal: stop.signal,
      exit_seconds: stop.seconds,
      generation_failures_logged: server.failures.length,
    },
    request: { endpoint: '/v1/completions', body: BODY, timeout_seconds: REQUEST_TIMEOUT_S, warmup_requests: WARMUP_REQUESTS },
    rows,
    checks: { no_5xx: no5xx, non_2xx_at_32_all_429: only429 },
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');

  console.log(`\nbin/ebserve serve --max-queue ${MAX_QUEUE} on the embedded model (${server.engine} engine, ${server.backend} backend), ` +
    `${cpus.length} × ${result.machine.model}, Node ${process.version}; ${DURATION} s per concurrency; body ${JSON.stringify(BODY)}`);
  console.log('| concurrency | requests/s (2xx) | tokens/s | p50 s | p95 s | p99 s | 2xx | 429 | 5xx | errors | RSS start MiB | RSS max MiB | RSS end MiB |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.concurrency} | ${r.requests_per_s.toFixed(2)} | ${r.tokens_per_s.toFixed(1)} | ${sec(r.latency_p50_s)} | ${sec(r.latency_p95_s)} | ${sec(r.latency_p99_s)} | ${r.ok} | ${r.status_429} | ${r.status_5xx} | ${r.errors} | ${mib(r.rss_start_bytes)} | ${mib(r.rss_max_bytes)} | ${mib(r.rss_end_bytes)} |`);
  }
  console.log(`${no5xx ? 'PASS' : 'MISS'}: zero 5xx at every concurrency (${rows.map((r) => `c=${r.concurrency}: ${r.status_5xx}`).join(', ')})`);
  console.log(`${only429 ? 'PASS' : 'MISS'}: every non-2xx at concurrency 32 is a 429 (${at32 ? `${at32.status_429} of ${notOk32}; ${at32.status_5xx} × 5xx, ${at32.errors} errors/timeouts/other statuses` : 'no c=32 row'})`);
  console.log(`server: RSS ${mib(rssReady)} MiB when ready, ${mib(rssBeforeStop)} MiB before SIGTERM; exited ${exitedClean ? 'cleanly' : 'NOT cleanly'} (code ${stop.code}, signal ${stop.signal}) ${stop.seconds.toFixed(1)} s after SIGTERM` +
    (server.failures.length ? `; ${server.failures.length} "generation failed" lines in its log` : ''));
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return exitedClean ? 0 : 1;
}

process.exitCode = await main();
