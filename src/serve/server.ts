/**
 * The server, wired: bind the port first, then load the model (so /health can answer 503 while
 * it loads), then serve; on shutdown stop accepting, let in-flight requests finish for at most the
 * drain timeout, cut what is left, and free the model. The parts live beside this file: app.ts
 * (routes), completions.ts, batcher.ts (the batch scheduler every generation runs in),
 * metrics.ts, load-model.ts (the model, imported by the caller's `load`, which keeps
 * TensorFlow.js out of the way until the port is bound).
 *
 * @example
 * const server = await startServer({ host: '127.0.0.1', port: 0, load: (bus) => loadServedModel(spec, bus, log) });
 * await server.ready;                       // the model is loaded
 * await server.shutdown();                  // drained (or cut after the drain timeout)
 */
import { once, setMaxListeners } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import { TelemetryBus } from '../offload/telemetry.js';
import { createApp } from './app.js';
import { ServeMetrics } from './metrics.js';
import { BatchScheduler, type ServingHooks } from './batcher.js';
import { MAX_CHOICES, requestSchemas, type RequestSchemas } from './schemas.js';
import type { ServedModel } from './served-model.js';

export interface ServeOptions {
  host: string;
  /** 0 picks a free port (see RunningServer.port). */
  port: number;
  /**
   * Loads the model; the bus is where its offload telemetry must go (the metrics listen there), and
   * `serving` is the batch scheduler's step-boundary hooks (the canaries run between its steps).
   */
  load: (telemetry: TelemetryBus, serving: ServingHooks) => Promise<ServedModel>;
  /** The admin API's bearer token; null or absent: the admin API is off. */
  adminToken?: string | null;
  /** Requests that may wait for room in the batch (default 8); beyond: 429. */
  maxQueue?: number;
  /** Sequences that decode together in one forward step at most (default 8). */
  maxBatch?: number;
  /** Prompt tokens per step at most (default 64); must fit in the model's context. */
  prefillChunk?: number;
  /** Largest request body accepted (default 1 MiB). */
  maxBodyBytes?: number;
  /** How long a shutdown waits for in-flight requests before cutting them (default 30 s). */
  drainTimeoutSeconds?: number;
  log?: (line: string) => void;
}

export interface ShutdownResult {
  /** Every in-flight request finished on its own. */
  drained: boolean;
  /** Requests cut when the drain timeout ran out. */
  cut: number;
}

export interface RunningServer {
  /** http://host:port of the bound socket. */
  readonly url: string;
  readonly port: number;
  /** Settles when loading does: the model, or the loading error. */
  readonly ready: Promise<ServedModel>;
  readonly metrics: ServeMetrics;
  /** Stops accepting, drains (bounded by the drain timeout, or `drainTimeoutSeconds` here), frees the model. */
  shutdown(opts?: { drainTimeoutSeconds?: number }): Promise<ShutdownResult>;
}

/** The package version, for build_info. */
function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Binds host:port, starts loading the model, and serves. Rejects only if the port cannot be bound. */
export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const maxBodyBytes = opts.maxBodyBytes ?? 1 << 20;
  const drainDefault = opts.drainTimeoutSeconds ?? 30;
  const metrics = new ServeMetrics();
  const telemetry = new TelemetryBus();
  telemetry.on((s) => metrics.observe(s));
  const batcher = new BatchScheduler({
    maxBatch: opts.maxBatch ?? 8,
    maxWaiting: opts.maxQueue ?? 8,
    prefillChunk: opts.prefillChunk ?? 64,
    onChange: (s) => {
      metrics.queueDepth.set(s.waiting);
      metrics.running.set(s.running);
    },
    onStep: (s) => metrics.batchSize.observe(s.sequences),
  });
  const shutdownController = new AbortController();
  // Every request in flight listens to it (one listener each): more than Node's default 10 is normal.
  setMaxListeners(Infinity, shutdownController.signal);
  const closing = new AbortController();

  let model: ServedModel | null = null;
  let schemas: RequestSchemas | null = null;
  let loadError: string | null = null;
  let loadedAt = 0;
  let draining = false;

  const app = createApp({
    model: () => model,
    schemas: () => schemas!,
    batcher,
    metrics,
    shutdownSignal: shutdownController.signal,
    maxBodyBytes,
    log,
    loadError: () => loadError,
    draining: () => draining,
    loadedAt: () => loadedAt,
    adminToken: opts.adminToken ?? null,
    closingSignal: closing.signal,
  });
  if (!opts.adminToken) log('ebserve serve: admin API off: no bearer token (set EBSERVE_ADMIN_TOKEN or --admin-token-file)');
  const server = http.createServer(app);
  server.listen(opts.port, opts.host);
  await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e as Error))]);
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;

  const serving: ServingHooks = { stepBoundary: () => batcher.stepBoundary(), serving: () => batcher.serving(), betweenSteps: (task) => batcher.betweenSteps(task), prefillChunk: batcher.prefillChunk };
  const ready = opts.load(telemetry, serving).then(
    (m) => {
      if (draining) {
        // Shut down while loading: nothing will be served.
        m.dispose();
        throw new Error('the server shut down while the model was loading');
      }
      try {
        batcher.attach(m); // checks --prefill-chunk against the context
      } catch (e) {
        m.dispose();
        loadError = e instanceof Error ? e.message : String(e);
        throw e;
      }
      schemas = requestSchemas({ contextTokens: m.contextTokens, maxChoices: Math.min(MAX_CHOICES, batcher.maxBatch) });
      model = m;
      loadedAt = Math.floor(Date.now() / 1000);
      metrics.ready({ version: packageVersion(), backend: m.backend.name, engine: m.engine, linkEmulated: m.linkEmulated, memory: m.memory });
      if (m.control) metrics.attachControl(m.control);
      if (m.routing) metrics.attachRouting(m.routing);
      return m;
    },
    (e: unknown) => {
      loadError = e instanceof Error ? e.message : String(e);
      throw e;
    },
  );
  ready.catch(() => {}); // the caller decides what a failed load means; never an unhandled rejection

  let shutting: Promise<ShutdownResult> | null = null;
  let stopWaiting = () => {};
  const shutdown = (o: { drainTimeoutSeconds?: number } = {}): Promise<ShutdownResult> => {
    // A second call cannot lengthen the drain, only end it now (a second SIGTERM).
    if (shutting) {
      if (o.drainTimeoutSeconds === 0) stopWaiting();
      return shutting;
    }
    shutting = (async () => {
      draining = true;
      closing.abort();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timeoutMs = (o.drainTimeoutSeconds ?? drainDefault) * 1000;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
        stopWaiting = () => resolve(false);
      });
      const drained = await Promise.race([batcher.idle().then(() => true as const), timedOut]);
      clearTimeout(timer);
      let cut = 0;
      if (!drained) {
        const s = batcher.state;
        cut = s.running + s.waiting;
        shutdownController.abort();
        await batcher.idle(); // the requests leave at once; the step under way finishes
      }
      // Responses are written; keep-alive sockets go idle one by one. Close them as they do, and
      // whatever still lingers after a moment.
      const sweep = setInterval(() => server.closeIdleConnections(), 20);
      const grace = setTimeout(() => server.closeAllConnections(), 1000);
      await closed;
      clearInterval(sweep);
      clearTimeout(grace);
      model?.dispose();
      model = null;
      return { drained, cut };
    })();
    return shutting;
  };

  return { url, port: address.port, ready, metrics, shutdown };
}
