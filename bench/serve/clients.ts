/**
 * What the serving benchmarks share (bench/serve/run.ts, bench/scale/run.ts): a real
 * `bin/ebserve serve` child process (its port read from its log, "ready" awaited, SIGTERM at the
 * end), the server's resident memory and /metrics, and the load: `concurrency` streaming clients
 * in this process doing what an SDK does — POST one fixed body to /v1/completions, read the
 * server-sent events as they come, after a 429 wait the Retry-After it was given — for a fixed
 * number of seconds, summed up as rates and exact nearest-rank percentiles.
 *
 * @example
 * const server = new Server(['serve', '--port', '0'], { readyTimeoutS: 600 });
 * await server.ready();
 * const load = await runLoad(server, { body, concurrency: 8, seconds: 60, label: 'c=8', rss: () => rssOf(server.pid) });
 * const stats = summarize(load.outcomes, load.seconds);   // stats.tokens_per_s, stats.latency_p95_s, …
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const t0 = performance.now();
/** A progress line on stderr, stamped with the seconds since the benchmark started. */
export const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
/** Seconds since the benchmark started. */
export const elapsedSeconds = () => (performance.now() - t0) / 1000;

/** Seconds from environment variable `name` (default `fallback`); throws naming it when it is not a number ≥ 1. */
export function durationSeconds(name: string, env: string | undefined, fallback = 60): number {
  if (env === undefined || env.trim() === '') return fallback;
  const s = Number(env);
  if (!(Number.isFinite(s) && s >= 1)) throw new Error(`${name} must be a number of seconds ≥ 1, got '${env}'`);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The server process

export interface ServerOptions {
  /** Seconds to wait for the "ready" line (a first start may compress the experts: minutes). */
  readyTimeoutS: number;
  /** Seconds after SIGTERM before SIGKILL (the server's drain timeout is 30 s). */
  stopTimeoutS?: number;
}

/** `bin/ebserve ARGS` as a child process, its log forwarded to stderr and read for its URL and state. */
export class Server {
  readonly child: ChildProcess;
  url = '';
  backend = 'unknown';
  engine = 'unknown';
  /** The server's log lines that say a generation failed. */
  failures: string[] = [];
  /** The last lines of its log (for a failure's report). */
  tail: string[] = [];
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exited: Promise<void>;
  private onExitHooks: (() => void)[] = [];

  constructor(readonly args: string[], readonly opts: ServerOptions) {
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
    this.tail.push(line);
    if (this.tail.length > 20) this.tail.shift();
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
    const timeout = this.opts.readyTimeoutS;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server was not ready after ${timeout} s`)), timeout * 1000);
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

  /** SIGTERM, then waits for the exit (SIGKILL after stopTimeoutS, default 60). */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number; killed: boolean }> {
    const started = performance.now();
    if (!this.alive) return { ...this.exit!, seconds: 0, killed: false };
    const timeout = this.opts.stopTimeoutS ?? 60;
    this.child.kill('SIGTERM');
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      log(`the server did not exit ${timeout} s after SIGTERM: SIGKILL`);
      this.child.kill('SIGKILL');
    }, timeout * 1000);
    await this.exited;
    clearTimeout(timer);
    return { ...this.exit!, seconds: (performance.now() - started) / 1000, killed };
  }
}

/**
 * SIGTERM to `server` (logged, `what` naming it), waiting for its exit; `failure` says why the run
 * failed: `failure` as given, else an unclean exit (a code other than 0, a signal, SIGKILL after the timeout).
 */
export async function stopServer(server: Server, what: string, failure: string | null): Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number; failure: string | null }> {
  log(`${what}: stopping the server (SIGTERM)`);
  const stop = await server.stop();
  log(`${what}: server exited in ${stop.seconds.toFixed(1)} s: code ${stop.code}, signal ${stop.signal}${stop.killed ? ' (SIGKILL after the timeout)' : ''}`);
  const clean = stop.code === 0 && stop.signal === null && !stop.killed;
  return { code: stop.code, signal: stop.signal, seconds: stop.seconds, failure: failure ?? (clean ? null : `the ${what} server did not exit cleanly (code ${stop.code}, signal ${stop.signal})`) };
}

/**
 * On the first SIGINT or SIGTERM: aborts the load that runs, calls `also`, stops the server that
 * runs, and exits (130, 143). At exit, a server still alive (an uncaught throw) is killed: never
 * leave one behind. `now` says what runs at the moment of the signal.
 */
export function stopOnSignals(now: () => { server: Server | null; load: AbortController | null }, also?: () => void): void {
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping the load and the server`);
    const { server, load } = now();
    load?.abort();
    also?.();
    void (server ? server.stop() : Promise.resolve(null)).then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => {
    const { server } = now();
    if (server?.alive) server.child.kill('SIGKILL');
  });
}

/** VmRSS of a process in bytes, or NaN if it cannot be read (the process is gone). */
export function rssOf(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Every live process whose parent chain leads to `pid` (not `pid` itself), from /proc. */
export function descendantsOf(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const m = /^PPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${e}/status`, 'utf8'));
      if (!m) continue;
      const ppid = Number(m[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid)!.push(Number(e));
    } catch {
      // gone between the listing and the read
    }
  }
  const out: number[] = [];
  const todo = [...(children.get(pid) ?? [])];
  while (todo.length) {
    const p = todo.pop()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

/** VmRSS of `pid` plus its descendants' (child processes; threads are already in it), NaN when `pid` is gone. */
export function treeRssOf(pid: number): number {
  const own = rssOf(pid);
  if (!Number.isFinite(own)) return NaN;
  return descendantsOf(pid).reduce((sum, p) => sum + (Number.isFinite(rssOf(p)) ? rssOf(p) : 0), own);
}

/** Series `name` of a Prometheus text page: each label set (as written, '' for none) with its value. */
export function metricSeries(text: string, name: string): { labels: string; value: number }[] {
  return [...text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, 'gm'))].map((m) => ({ labels: m[1] ?? '', value: Number(m[2]) }));
}

/** The value of a metric without labels, or the sum over every series of a labelled one. */
export async function metric(url: string, name: string): Promise<number> {
  const series = metricSeries(await (await fetch(`${url}/metrics`)).text(), name);
  if (!series.length) throw new Error(`/metrics has no ${name}`);
  return series.reduce((sum, m) => sum + m.value, 0);
}

/** Waits until nothing runs and nothing waits (requests cut at the end of a phase drain away). */
export async function idle(url: string, timeoutS = 60): Promise<void> {
  const deadline = performance.now() + timeoutS * 1000;
  for (;;) {
    const [waiting, running] = await Promise.all([metric(url, 'ebserve_queue_depth'), metric(url, 'ebserve_requests_running')]);
    if (waiting === 0 && running === 0) return;
    if (performance.now() > deadline) throw new Error(`the server was still busy ${timeoutS} s after a phase (${running} running, ${waiting} waiting)`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A streaming completion request's body (stream: true; the warm-up sends it unstreamed). */
export type CompletionBody = Record<string, unknown>;

/** `requests` unstreamed requests of `body`, one after the other; throws on a non-200. */
export async function warmUp(url: string, body: CompletionBody, requests: number): Promise<void> {
  for (let i = 0; i < requests; i++) {
    const t = performance.now();
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: false, stream_options: undefined }) });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`warm-up request ${i + 1}: status ${res.status}: ${text}`);
    const out = JSON.parse(text) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };
    log(`warm-up ${i + 1}/${requests}: ${((performance.now() - t) / 1000).toFixed(3)} s, ${out.usage.completion_tokens} tokens (${out.choices[0].finish_reason}): ${JSON.stringify(out.choices[0].text)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// One phase of load

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** One streaming request as a client saw it. */
export interface Outcome {
  status: number;
  seconds: number;
  /** Seconds from the request to each chunk that carried text. */
  chunks: number[];
  tokens?: number;
  finish?: string;
  retryAfter?: number;
  error?: 'timeout' | string;
}

const CUT = 'cut at the end of the phase';

/** POSTs `body` and reads the server-sent events as they arrive. */
export async function request(url: string, body: CompletionBody, stop: AbortSignal, timeoutS: number): Promise<Outcome> {
  const t = performance.now();
  const since = () => (performance.now() - t) / 1000;
  const signal = AbortSignal.any([stop, AbortSignal.timeout(timeoutS * 1000)]);
  try {
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
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
    if (stop.aborted) return { status: 0, seconds: since(), chunks: [], error: CUT };
    const timedOut = e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError');
    return { status: 0, seconds: since(), chunks: [], error: timedOut ? 'timeout' : (e as NodeJS.ErrnoException).cause ? String(((e as { cause: NodeJS.ErrnoException }).cause).code ?? e) : String(e) };
  }
}

export interface LoadOptions {
  body: CompletionBody;
  concurrency: number;
  seconds: number;
  /** Names the phase in progress lines. */
  label: string;
  /** Seconds one request may take (a timeout is counted as an error). */
  requestTimeoutS: number;
  /** The server's resident memory now, sampled every rssIntervalMs (default 1000) over the phase. */
  rss: () => number;
  rssIntervalMs?: number;
  /** Aborting it ends the phase at once (a signal handler's way in). */
  stop?: AbortController;
}

export interface Load {
  outcomes: Outcome[];
  /** The phase's wall-clock seconds, the divisor of its rates. */
  seconds: number;
  /** RSS samples: at the start, every interval, at the end. */
  rss: number[];
  /** Seconds the clients waited as 429s' Retry-After told them. */
  retryWait: number;
}

/**
 * `concurrency` clients, each sending a request after the previous one ends (after a 429, after
 * the wait its Retry-After asked for), for `seconds`; requests in flight at the end are cut and
 * not counted. Logs progress six times. Throws if the server exits meanwhile.
 */
export async function runLoad(server: Server, o: LoadOptions): Promise<Load> {
  const outcomes: Outcome[] = [];
  let retryWait = 0;
  const rss: number[] = [o.rss()];
  const sampler = setInterval(() => rss.push(o.rss()), o.rssIntervalMs ?? 1000);
  const started = performance.now();
  const deadline = started + o.seconds * 1000;
  const stop = o.stop ?? new AbortController();
  const stopOnExit = () => stop.abort();
  server.onExit(stopOnExit);
  const cut = setTimeout(() => stop.abort(), o.seconds * 1000);
  const count = (f: (x: Outcome) => boolean) => outcomes.reduce((n, x) => n + (f(x) ? 1 : 0), 0);
  const ticker = setInterval(() => {
    log(`${o.label}: ${((performance.now() - started) / 1000).toFixed(0)} / ${o.seconds} s: ${count((x) => x.status === 200)} ok, ${count((x) => x.status === 429)} × 429, ${count((x) => x.status >= 500)} × 5xx, ${count((x) => x.status === 0)} errors; RSS ${(rss[rss.length - 1] / 2 ** 20).toFixed(0)} MiB`);
  }, Math.max(5, o.seconds / 6) * 1000);
  const client = async () => {
    while (performance.now() < deadline && !stop.signal.aborted) {
      const x = await request(server.url, o.body, stop.signal, o.requestTimeoutS);
      if (x.error === CUT) break;
      outcomes.push(x);
      if (x.status === 429 && x.retryAfter) {
        const wait = Math.min(x.retryAfter * 1000, deadline - performance.now());
        if (wait > 0) {
          retryWait += wait / 1000;
          await new Promise((r) => setTimeout(r, wait));
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: o.concurrency }, client));
  } finally {
    clearTimeout(cut);
    clearInterval(ticker);
    clearInterval(sampler);
  }
  const seconds = (performance.now() - started) / 1000;
  rss.push(o.rss());
  if (!server.alive) throw new Error(`the server exited during the ${o.label} phase (code ${server.exit?.code}, signal ${server.exit?.signal})`);
  return { outcomes, seconds, rss, retryWait };
}

/** What the clients saw in one phase: rates over `seconds`, latency percentiles of the 2xx, counts by kind. */
export interface LoadStats {
  requests_per_s: number;
  /** Completion tokens per second: the usage chunks' completion_tokens summed over the 2xx streams. */
  tokens_per_s: number;
  latency_p50_s: number;
  latency_p95_s: number;
  latency_p99_s: number;
  /** p95 of the gaps between a stream's consecutive token chunks, and median time to its first one (from the request). */
  inter_token_p95_s: number;
  ttft_p50_s: number;
  ok: number;
  status_429: number;
  status_5xx: number;
  /** Timeouts + connection errors + responses with any other status (see error_breakdown). */
  errors: number;
  error_breakdown: { timeouts: number; connection_errors: number; other_status: Record<string, number>; ok_without_usage: number };
  finish_reasons: Record<string, number>;
  /** Connection errors by what they said (logged, not in the JSON). */
  connectionErrorKinds: Map<string, number>;
}

/** Sums up a phase's outcomes (pure). */
export function summarize(outcomes: Outcome[], seconds: number): LoadStats {
  const count = (f: (o: Outcome) => boolean) => outcomes.reduce((n, o) => n + (f(o) ? 1 : 0), 0);
  const ok = outcomes.filter((o) => o.status === 200);
  const tokens = ok.reduce((n, o) => n + (o.tokens ?? 0), 0);
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
  return {
    requests_per_s: ok.length / seconds,
    tokens_per_s: tokens / seconds,
    latency_p50_s: percentile(latencies, 50),
    latency_p95_s: percentile(latencies, 95),
    latency_p99_s: percentile(latencies, 99),
    inter_token_p95_s: percentile(gaps, 95),
    ttft_p50_s: percentile(firsts, 50),
    ok: ok.length,
    status_429: count((o) => o.status === 429),
    status_5xx: count((o) => o.status >= 500),
    errors: timeouts + connectionErrors + Object.values(other).reduce((a, b) => a + b, 0),
    error_breakdown: { timeouts, connection_errors: connectionErrors, other_status: other, ok_without_usage: ok.filter((o) => o.tokens === undefined).length },
    finish_reasons: finish,
    connectionErrorKinds: kinds,
  };
}

/** Logs what a phase's summary says went wrong on the clients' side (connection errors, 2xx without usage). */
export function logClientProblems(label: string, s: LoadStats): void {
  if (s.connectionErrorKinds.size > 0) log(`${label}: connection errors: ${[...s.connectionErrorKinds].map(([k, n]) => `${k} × ${n}`).join(', ')}`);
  if (s.error_breakdown.ok_without_usage > 0) log(`${label}: ${s.error_breakdown.ok_without_usage} 2xx streams without a usage chunk (counted as 0 tokens)`);
}

export const mib = (b: number) => (Number.isFinite(b) ? (b / 2 ** 20).toFixed(1) : 'n/a');
export const sec = (s: number) => (Number.isFinite(s) ? s.toFixed(3) : 'n/a');
