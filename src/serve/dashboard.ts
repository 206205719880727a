/**
 * The live dashboard ebserve serves itself: one self-contained page (dashboard-page.ts: inline CSS
 * and JS, nothing fetched from anywhere else) fed by a server-sent event stream of the serving
 * state. It is there so that a person watching one server sees, as it happens, what the
 * controller chose for every layer and why — without Prometheus or Grafana (deploy/ has those).
 *
 *   GET /dashboard          the page
 *   GET /dashboard/events   text/event-stream: the full DashboardState at once, then again after
 *                           every change (changes within one turn of the event loop are sent as one
 *                           event, the latest state), and a `: keep-alive` comment every 15 s so
 *                           proxies keep the connection open. A client that reads too slowly gets
 *                           the latest state once it has caught up, never a backlog.
 *
 * Each event carries the whole state (it is small: a few numbers per layer and the last 20
 * decisions), so a client that reconnects needs nothing but the next event. The router knows
 * nothing of the controller: the server hands it a DashboardSource.
 *
 * @example
 * app.use(dashboardRouter({ snapshot: () => state(), subscribe: (f) => changes.on(f) }));
 */
import express, { type Request, type Response, type Router } from 'express';

import { DASHBOARD_PAGE } from './dashboard-page.js';
import { ApiError, unavailable } from './errors.js';

/** What the dashboard shows; every event of /dashboard/events is one of these, as JSON. */
export interface DashboardState {
  /** When this state was taken, milliseconds since the epoch. */
  at: number;
  /** The served model's id. */
  model: string;
  /** on: plans go to the engine; dry-run: decided and logged only; frozen: held by an operator or the watchdog; off: a fixed level. */
  controller: 'on' | 'dry-run' | 'frozen' | 'off';
  planVersion: number;
  /** The current plan: levels[layer], 0 the loosest rung, the highest the tightest (or exact). */
  levels: number[];
  /** Each layer's drop rung past the loosest level (trim, skip-moe), where any layer drops. */
  drop?: string[];
  /** A label per level of the ladder, loosest first (e.g. "0.5σ", …, "exact"). */
  levelLabels: string[];
  /** The bound of each layer's level as a number, 0 for the exact bytes. */
  layerBounds: number[];
  /** The controller's link bandwidth estimate, or null before enough was moved to estimate it. */
  bandwidthBytesPerSecond: number | null;
  /** True when the link is emulated (a set bandwidth and latency): the page says EMULATED. */
  linkEmulated: boolean;
  /** Rolling p95 inter-token latency, or null before there were tokens. */
  p95Seconds: number | null;
  /** The p95 inter-token latency target, or null when there is none. */
  slaSeconds: number | null;
  /** The last canary run's scores (top-1 agreement and exact match are shares 0..1, KL in nats) and the top-1 floor. */
  canary: { top1: number; kl: number | null; exact: number | null; floor: number } | null;
  /** The most recent decisions, oldest first, newest last (at most 20); `at` in milliseconds since the epoch. */
  decisions: { at: number; action: string; reason: string }[];
  /** The batch now: sequences decoding together, the most that may (--max-batch), requests waiting for room; null when unknown. */
  batch: { sequences: number; maxBatch: number; waiting: number } | null;
  /**
   * The routing report over the last served tokens (see /admin/routing): per layer SRP, the
   * recommended cache (experts) and the LRU and segment-cache hit rates at that size; null before
   * there is one (absent: the source does not report routing).
   */
  routing?: {
    tokens: number;
    segment: number;
    target: number;
    layers: { layer: number; srp: number; recommendedCache: number; lruHitRate: number; segmentCacheHitRate: number }[];
  } | null;
}

export interface DashboardSource {
  /** The state now. */
  snapshot(): DashboardState;
  /** Calls `listener` whenever the state may have changed; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void;
}

export interface DashboardOptions {
  /** Interval of the keep-alive comment (default 15 000 ms). */
  keepAliveMs?: number;
  /** Aborting it ends every open event stream (the server's shutdown), so none holds the server open. */
  signal?: AbortSignal;
}

/** The page's sources: its own inline script and style, and the event stream of its own origin. Nothing else loads. */
const CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

const SSE_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  'Cache-Control': 'no-cache, no-transform',
  Connection: 'keep-alive',
  // nginx buffers responses unless told not to; a buffered stream is no stream.
  'X-Accel-Buffering': 'no',
};

const ALLOW = { '/dashboard': 'GET, HEAD', '/dashboard/events': 'GET, HEAD' } as const;

/** The dashboard's routes, to be mounted at the server's root. */
export function dashboardRouter(source: DashboardSource, opts: DashboardOptions = {}): Router {
  const keepAliveMs = opts.keepAliveMs ?? 15_000;
  const router = express.Router();

  router.get('/dashboard', (_req, res) => {
    res.status(200).set({
      'Content-Type': 'text/html; charset=utf-8',
      'Cache-Control': 'no-store',
      'Content-Security-Policy': CSP,
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
    }).send(DASHBOARD_PAGE);
  });

  router.get('/dashboard/events', (req, res) => {
    // The first state is taken before the stream opens: if there is none, the client gets a
    // proper 503 (and EventSource retries) rather than an empty stream.
    // Subscribing first means no change between the snapshot and the subscription goes unseen.
    const stream = new StateStream(res, source);
    let first: string;
    try {
      stream.unsubscribe = source.subscribe(() => stream.changed());
      first = JSON.stringify(source.snapshot());
    } catch (e) {
      stream.close();
      throw unavailable(`the dashboard state is not available: ${e instanceof Error ? e.message : String(e)}`);
    }
    stream.open(req, first, keepAliveMs, opts.signal);
  });

  for (const [path, allow] of Object.entries(ALLOW)) {
    router.all(path, (req) => {
      throw new ApiError(405, 'invalid_request_error', `${req.method} is not allowed on ${path}; use GET`, null, { Allow: allow });
    });
  }
  return router;
}

/** One client's event stream, from the first state until the client (or the server) goes away. */
class StateStream {
  unsubscribe: () => void = () => {};
  private closed = false;
  private opened = false;
  private scheduled: NodeJS.Immediate | undefined;
  /** The socket's buffer is full: wait for 'drain'. */
  private blocked = false;
  /** A change came while blocked: send the latest state on 'drain'. */
  private owed = false;
  private keepAlive: NodeJS.Timeout | undefined;
  private signal: AbortSignal | undefined;
  private readonly onDrain = () => {
    this.blocked = false;
    if (this.owed) {
      this.owed = false;
      this.sendLatest();
    }
  };
  private readonly end = () => {
    this.close();
    if (!this.res.writableEnded) this.res.end();
  };

  constructor(private readonly res: Response, private readonly source: DashboardSource) {}

  open(req: Request, first: string, keepAliveMs: number, signal?: AbortSignal): void {
    const res = this.res;
    res.status(200).set(SSE_HEADERS);
    res.flushHeaders();
    req.socket.setNoDelay(true);
    this.opened = true;
    res.on('drain', this.onDrain);
    // Only the response's 'close' means the client went away (the request's fires once its body is read).
    res.on('close', () => this.close());
    // EventSource reconnects after `retry` ms when the connection drops.
    this.write('retry: 3000\n\n');
    this.write(`data: ${first}\n\n`);
    this.keepAlive = setInterval(() => {
      if (!this.blocked) this.write(': keep-alive\n\n');
    }, keepAliveMs);
    this.signal = signal;
    if (signal?.aborted) this.end();
    else signal?.addEventListener('abort', this.end, { once: true });
  }

  /** The source says something changed: send the state once this turn of the event loop is over. */
  changed(): void {
    if (this.closed || this.scheduled) return;
    this.scheduled = setImmediate(() => {
      this.scheduled = undefined;
      if (this.closed || !this.opened) return;
      if (this.blocked) this.owed = true;
      else this.sendLatest();
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepAlive);
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    this.res.off('drain', this.onDrain);
    this.signal?.removeEventListener('abort', this.end);
    try {
      this.unsubscribe();
    } catch {
      // a source that fails to unsubscribe must not take the server down
    }
  }

  private write(chunk: string): void {
    if (this.closed || this.res.writableEnded || this.res.destroyed) return;
    if (!this.res.write(chunk)) this.blocked = true;
  }

  private sendLatest(): void {
    let json: string;
    try {
      json = JSON.stringify(this.source.snapshot());
    } catch (e) {
      // A source that fails once must not end the stream: say so; the next change tries again.
      this.write(`event: failure\ndata: ${JSON.stringify({ message: e instanceof Error ? e.message : String(e) })}\n\n`);
      return;
    }
    this.write(`data: ${json}\n\n`);
  }
}
