/**
 * The server's Prometheus metrics (GET /metrics), on a registry of its own. Conventions: prefix
 * `ebserve_`, base units (seconds, bytes), `_total` on counters, and labels that never name an
 * expert or a request (layer, tier, endpoint, status and phase have a handful of values each).
 *
 * Two sources feed them: the request path (latencies, counts, the queue, the batch size of every
 * step the scheduler runs) and the offload data plane, through the TelemetryBus the server hands
 * to createOffload (transfers, decompressions, cache lookups, and each forward step's time split
 * into compute and the waits for experts).
 * With the resident engine the offload metrics stay at zero: nothing crosses a link.
 *
 * Node's process metrics (CPU, memory, event-loop lag) come along under the same prefix: the
 * event-loop lag in particular shows when decoding starves request handling.
 *
 * @example
 * const metrics = new ServeMetrics();  bus.on((s) => metrics.observe(s));
 * res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

import { modelErrorP95 } from '../control/estimators/model-error.js';
import type { RoutingReport } from '../control/routing/report.js';
import type { RoutingWindow } from '../control/routing/window.js';
import type { OffloadSample } from '../offload/telemetry.js';
import type { ServedControl } from './served-control.js';
import type { MemoryPlan } from './memory-plan.js';

const PREFIX = 'ebserve_';

// Buckets sized for this server: a byte-level model decodes ~10 ms per token on two CPU cores;
// a GPU would sit in the lower buckets, a slow emulated link in the upper ones.
const TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5];
const FIRST_TOKEN_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80];
const REQUEST_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160];
// Sequences per forward step: powers of two up to a large --max-batch.
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64];
const MOVE_BUCKETS = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export class ServeMetrics {
  readonly registry = new Registry();

  readonly timeToFirstToken: Histogram;
  readonly interTokenLatency: Histogram;
  readonly e2eLatency: Histogram;
  readonly requests: Counter<'endpoint' | 'status'>;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly queueDepth: Gauge;
  readonly running: Gauge;
  readonly batchSize: Histogram;
  readonly buildInfo: Gauge<'version' | 'backend' | 'engine'>;

  readonly transferBytes: Counter<'layer'>;
  readonly transferDuration: Histogram;
  readonly decompressDuration: Histogram;
  readonly cacheRequests: Counter<'tier' | 'result'>;
  readonly linkEmulated: Gauge;
  readonly steps: Counter<'phase'>;
  readonly stepCompute: Counter<'phase'>;
  readonly stepTransferWait: Counter<'phase'>;
  readonly stepDecompressWait: Counter<'phase'>;
  readonly diskReadBytes: Counter;
  readonly diskReadDuration: Histogram;
  readonly diskDirect: Gauge;
  readonly memoryPlan: Gauge<'part'>;

  constructor() {
    const registers = [this.registry];
    const name = (n: string) => `${PREFIX}${n}`;
    this.timeToFirstToken = new Histogram({ name: name('time_to_first_token_seconds'), help: 'From a request\'s arrival (queueing included) to its first generated token.', buckets: FIRST_TOKEN_BUCKETS, registers });
    this.interTokenLatency = new Histogram({ name: name('inter_token_latency_seconds'), help: 'Between consecutive generated tokens of a request.', buckets: TOKEN_BUCKETS, registers });
    this.e2eLatency = new Histogram({ name: name('e2e_request_latency_seconds'), help: 'From a completion request\'s arrival to its last byte, for requests that finished generating.', buckets: REQUEST_BUCKETS, registers });
    this.requests = new Counter({ name: name('requests_total'), help: 'HTTP requests answered, by endpoint (other: unknown routes) and status.', labelNames: ['endpoint', 'status'], registers });
    this.promptTokens = new Counter({ name: name('prompt_tokens_total'), help: 'Prompt tokens of completed generations.', registers });
    this.generationTokens = new Counter({ name: name('generation_tokens_total'), help: 'Tokens generated (cut-off generations included).', registers });
    this.queueDepth = new Gauge({ name: name('queue_depth'), help: 'Requests waiting for room in the batch (those generating not counted).', registers });
    this.running = new Gauge({ name: name('requests_running'), help: 'Requests generating now, their sequences decoding together in one batch.', registers });
    this.batchSize = new Histogram({ name: name('batch_size'), help: 'Sequences in each forward step the batch scheduler runs (decoding ones and those whose prompt chunk it carries).', buckets: BATCH_BUCKETS, registers });
    this.buildInfo = new Gauge({ name: name('build_info'), help: 'Always 1; the labels say what runs.', labelNames: ['version', 'backend', 'engine'], registers });

    this.transferBytes = new Counter({ name: name('expert_transfer_bytes_total'), help: 'Expert bytes moved host → device, by layer.', labelNames: ['layer'], registers });
    this.transferDuration = new Histogram({ name: name('expert_transfer_duration_seconds'), help: 'Duration of one expert\'s move over the link.', buckets: MOVE_BUCKETS, registers });
    this.decompressDuration = new Histogram({ name: name('decompress_duration_seconds'), help: 'Duration of decoding one expert into device memory.', buckets: MOVE_BUCKETS, registers });
    this.cacheRequests = new Counter({ name: name('expert_cache_requests_total'), help: 'Device cache lookups by tier (A: decoded, B: compressed) and result.', labelNames: ['tier', 'result'], registers });
    this.diskReadBytes = new Counter({ name: name('disk_read_bytes_total'), help: 'Expert bytes read from the store file into host memory (the disk tier; measured, never emulated).', registers });
    this.diskReadDuration = new Histogram({ name: name('disk_read_duration_seconds'), help: 'Duration of one read of an expert\'s levels from the store file.', buckets: MOVE_BUCKETS, registers });
    this.memoryPlan = new Gauge({ name: name('memory_plan_bytes'), help: 'What each part of the served model holds at most (dense weights, host tier, device tiers, canary caches, the runtime allowance; KV caches come on top as context fills): RSS stays within their sum.', labelNames: ['part'], registers });
    this.diskDirect = new Gauge({ name: name('disk_direct_io'), help: '1 when the disk tier reads around the page cache (O_DIRECT), 0 when the file system refused it.', registers });
    this.linkEmulated = new Gauge({ name: name('link_emulated'), help: '1 when the host-device link is emulated (a set bandwidth and latency), 0 when it is a real move.', registers });
    this.steps = new Counter({ name: name('steps_total'), help: 'Forward steps by phase (prefill: a step over several tokens, i.e. a prompt; decode: a step over one token).', labelNames: ['phase'], registers });
    this.stepCompute = new Counter({ name: name('step_compute_seconds_total'), help: 'Time forward steps spent computing.', labelNames: ['phase'], registers });
    this.stepTransferWait = new Counter({ name: name('step_transfer_wait_seconds_total'), help: 'Time forward steps spent waiting for expert transfers.', labelNames: ['phase'], registers });
    this.stepDecompressWait = new Counter({ name: name('step_decompress_wait_seconds_total'), help: 'Time forward steps spent waiting for expert decompression.', labelNames: ['phase'], registers });

    // Counters without labels export 0 from the start; give the labelled per-phase ones their
    // series too, so a dashboard shows 0 rather than "no data" before the first request.
    for (const phase of ['prefill', 'decode']) {
      for (const c of [this.steps, this.stepCompute, this.stepTransferWait, this.stepDecompressWait]) c.inc({ phase }, 0);
    }
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
  }

  /** One offload telemetry sample. Never throws (the bus counts listeners that do). */
  observe(s: OffloadSample): void {
    switch (s.kind) {
      case 'transfer':
        this.transferBytes.inc({ layer: String(s.layer) }, s.bytes);
        this.transferDuration.observe(s.seconds);
        this.linkEmulated.set(s.emulated ? 1 : 0);
        break;
      case 'read':
        this.diskReadBytes.inc(s.bytes);
        this.diskReadDuration.observe(s.seconds);
        this.diskDirect.set(s.direct ? 1 : 0);
        break;
      case 'decompress':
        this.decompressDuration.observe(s.seconds);
        break;
      case 'cache':
        this.cacheRequests.inc({ tier: s.tier, result: s.result });
        break;
      case 'token': {
        const phase = s.prefillTokens > 0 ? 'prefill' : 'decode';
        this.steps.inc({ phase });
        this.stepCompute.inc({ phase }, s.computeSeconds);
        this.stepTransferWait.inc({ phase }, s.transferWaitSeconds);
        this.stepDecompressWait.inc({ phase }, s.decompressWaitSeconds);
        break;
      }
    }
  }

  /**
   * The controller's metrics, read from it at every scrape (gauges) or counted as it decides:
   * bandwidth estimates, each layer's bound, level and compression ratio, the SLO targets,
   * canary scores against their floor, decisions by direction and reason, rollbacks.
   */
  attachControl(control: ServedControl): void {
    const registers = [this.registry];
    const name = (n: string) => `${PREFIX}${n}`;
    const per = (f: (c: ServedControl) => number[]) => function (this: Gauge<'layer'>) {
      f(control).forEach((v, layer) => this.set({ layer: String(layer) }, v));
    };
    new Gauge({
      name: name('link_bandwidth_estimate_bytes_per_second'), help: 'The controller\'s link bandwidth estimate (estimate: what it plans with, the lowest of fast, slow and robust; capacity: the windowed max).',
      labelNames: ['estimator'], registers,
      collect() {
        const b = control.estimates().bandwidth_bytes_per_second;
        for (const k of ['estimate', 'fast', 'slow', 'robust', 'capacity'] as const) this.set({ estimator: k }, b[k]);
      },
    });
    new Gauge({
      name: name('controller_model_error_ratio'), help: 'p95 of a decode step\'s measured over predicted time (the planner aims at the SLA divided by it; 1 until enough steps).', registers,
      collect() { this.set(modelErrorP95(control.controller.state$.value.modelError)); },
    });
    new Gauge({ name: name('layer_error_bound'), help: 'Each layer\'s error bound at its current level, in the ladder\'s unit (σ for a sigma ladder; 0: the exact bytes).', labelNames: ['layer'], registers, collect: per((c) => c.layerBounds()) });
    new Gauge({ name: name('layer_rung'), help: 'Each layer\'s level in the ladder (0: the loosest rung; the highest: the exact bytes).', labelNames: ['layer'], registers, collect: per((c) => c.controller.plan.levels) });
    new Gauge({ name: name('layer_drop_rung'), help: 'Each layer\'s drop rung, past the loosest level (0: none; 1: trim, top-k − 1; 2: skip-moe, no MoE output).', labelNames: ['layer'], registers, collect: per((c) => c.controller.plan.levels.map((_, l) => ['none', 'trim', 'skip-moe'].indexOf(c.controller.plan.drop?.[l] ?? 'none'))) });
    new Gauge({ name: name('compression_ratio'), help: 'Original expert bytes over the bytes moved per expert at each layer\'s current level.', labelNames: ['layer'], registers, collect: per((c) => c.compressionRatios()) });
    new Gauge({
      name: name('slo_target_seconds'), help: 'The SLO targets the controller serves to.', labelNames: ['slo'], registers,
      collect() {
        this.set({ slo: 'p95_inter_token' }, control.controller.slaSeconds);
        const ttft = control.profile.sla.time_to_first_token_seconds;
        if (ttft !== undefined) this.set({ slo: 'time_to_first_token' }, ttft);
      },
    });
    new Gauge({
      name: name('canary_score'), help: 'The last canary run\'s scores of the plan it ran on (text_top1, arithmetic_exact: shares 0..1; text_kl: nats).', labelNames: ['suite'], registers,
      collect() {
        const r = control.lastCanary;
        if (!r) return;
        this.set({ suite: 'text_top1' }, r.top1Agreement);
        if (r.kl !== undefined) this.set({ suite: 'text_kl' }, r.kl);
        if (r.exactMatch !== undefined) this.set({ suite: 'arithmetic_exact' }, r.exactMatch);
      },
    });
    new Gauge({ name: name('canary_floor'), help: 'The top-1 agreement below which a canary run rolls the plan back.', registers, collect() { this.set(control.canaryFloor()); } });
    const decisions = new Counter({ name: name('controller_decisions_total'), help: 'Controller decisions by direction and by a short reason.', labelNames: ['direction', 'reason'], registers });
    const rollbacks = new Counter({ name: name('controller_rollbacks_total'), help: 'Plans rolled back after a canary run below the floor.', registers });
    for (const direction of ['degrade', 'upgrade', 'rollback']) decisions.inc({ direction, reason: 'none' }, 0);
    const counted = new WeakSet<object>();
    const watch = () => {
      // A policy switch makes a new controller: follow it.
      const c = control.controller;
      if (counted.has(c)) return;
      counted.add(c);
      c.decisions$.subscribe((d) => {
        decisions.inc({ direction: d.action, reason: reasonLabel(d.reason) });
        if (d.action === 'rollback') rollbacks.inc();
      });
    };
    watch();
    control.subscribe(watch);
  }

  /**
   * The routing report over the last served tokens (any engine), per layer: SRP, the recommended
   * cache (experts) and the hit rates a cache of that size gets under LRU, LFU and the paper's
   * segment cache. A scrape reads the last finished report and asks for a new one when it is due
   * (the window computes it in slices, at most every 30 s); no series before the first report.
   */
  attachRouting(window: RoutingWindow): void {
    const registers = [this.registry];
    const name = (n: string) => `${PREFIX}${n}`;
    const latest = (): RoutingReport | null => {
      window.refresh().catch(() => {}); // a failed computation leaves the last report in place
      return window.latest;
    };
    let scrape: RoutingReport | null = null;
    new Gauge({
      name: name('routing_window_tokens'), help: 'Served tokens the routing report is computed over (the window holds the last ones).', registers,
      collect() {
        scrape = latest();
        this.set(window.tokens);
      },
    });
    const per = (help: string, n: string, value: (l: RoutingReport['layers'][number]) => number) =>
      new Gauge({
        name: name(n), help, labelNames: ['layer'], registers,
        collect() {
          for (const l of (scrape ?? latest())?.layers ?? []) this.set({ layer: String(l.layer) }, value(l));
        },
      });
    const at = (l: RoutingReport['layers'][number]) => l.sch.find((p) => p.cache === l.recommended_cache)!;
    per('Segment routing best performance (SRP, Liang et al.) of each layer over the window: 1 when a segment\'s tokens all use the same experts.', 'routing_srp', (l) => l.srp);
    per('The smallest tier-A cache of each layer (experts) whose LRU hit rate over the window reaches the target (0.9).', 'routing_recommended_cache', (l) => l.recommended_cache);
    per('Hit rate of an LRU cache of the recommended size over the window, per layer (ratio 0..1).', 'routing_lru_hit_rate', (l) => at(l).lru_hit_rate);
    per('Hit rate of an LFU cache of the recommended size over the window, per layer (ratio 0..1).', 'routing_lfu_hit_rate', (l) => at(l).lfu_hit_rate);
    per('Hit rate of the paper\'s segment cache (sees the next 16 tokens: the best a cache of the recommended size can do) over the window, per layer.', 'routing_segment_cache_hit_rate', (l) => at(l).hit_rate);
  }

  /** What runs, once the model is loaded. */
  ready(info: { version: string; backend: string; engine: string; linkEmulated: boolean; memory?: MemoryPlan }): void {
    this.buildInfo.set({ version: info.version, backend: info.backend, engine: info.engine }, 1);
    this.linkEmulated.set(info.linkEmulated ? 1 : 0);
    const m = info.memory;
    if (m) {
      this.memoryPlan.set({ part: 'dense' }, m.denseBytes);
      this.memoryPlan.set({ part: 'host' }, m.hostBytes);
      this.memoryPlan.set({ part: 'device' }, m.deviceBytes);
      this.memoryPlan.set({ part: 'canaries' }, m.canaryBytes);
      this.memoryPlan.set({ part: 'runtime' }, m.runtimeBytes);
    }
  }
}

/** A decision's reason as a label of a handful of values (never free text). */
function reasonLabel(reason: string): string {
  if (/over the SLA/.test(reason)) return 'over_sla';
  if (/under the SLA/.test(reason)) return 'under_sla';
  if (/stable window/.test(reason)) return 'stable_window';
  if (/tolerance band/.test(reason)) return 'tolerance_band';
  if (/dwell/.test(reason)) return 'dwell';
  if (/stale/.test(reason)) return 'stale_telemetry';
  if (/frozen/.test(reason)) return 'frozen';
  if (/canary/.test(reason)) return 'canary';
  if (/outside the allowed/.test(reason)) return 'policy';
  if (/no telemetry/.test(reason)) return 'no_telemetry';
  return 'steady';
}
