/**
 * The routing report: per layer, SRP over segments of L tokens, the hit rate of every cache size
 * from top-k to all experts — the paper's segment cache (SCH) beside the LRU and LFU caches ebserve
 * runs — and the smallest cache that reaches a target hit rate. `ebserve routing-report` prints it
 * for a corpus, the server for its own recent traffic (window.ts), `ebserve profile` writes its
 * recommendation into the profile (device.experts_by_layer).
 *
 * The recommendation is read off the policy the device cache runs (LRU unless told otherwise), not
 * off SCH: the segment cache needs the next L tokens' routing, which no server has, so SCH is the
 * ceiling a layer's routing allows and LRU/LFU what ebserve gets.
 *
 * @example
 * const r = routingReport(traces, { segment: 16, target: 0.9 });
 * r.layers[3].recommended_cache;   // e.g. 4: the smallest cache whose LRU hit rate is ≥ 0.9
 */
import { lineChart } from '../plot.js';
import { cacheHitRate, checkSegment, segmentRoutingBest, type LayerTrace } from './consistency.js';

export interface CachePoint {
  /** Cache size, in experts of this layer. */
  cache: number;
  /** SCH: the paper's segment cache (sees the next `segment` tokens). */
  hit_rate: number;
  lru_hit_rate: number;
  lfu_hit_rate: number;
}

export interface LayerReport {
  layer: number;
  srp: number;
  sch: CachePoint[];
  /** The smallest cache whose hit rate under the running policy reaches the target. */
  recommended_cache: number;
}

export interface ReportOptions {
  /** Segment length L, in tokens (SRP's windows; SCH's look-ahead). */
  segment: number;
  /** Hit rate the recommended cache must reach, in (0, 1]. */
  target: number;
  /** The policy the device cache runs, which the recommendation is read from (default lru). */
  policy?: 'lru' | 'lfu';
}

export interface RoutingReport {
  segment: number;
  target: number;
  recommended_by: 'lru' | 'lfu';
  /** Tokens of the corpus (or window) each layer's numbers come from. */
  tokens: number;
  layers: LayerReport[];
}

/** Throws a RangeError naming `target` unless it is in (0, 1]. */
export function checkTarget(target: number): void {
  if (!(target > 0 && target <= 1)) throw new RangeError(`target must be a hit rate in (0, 1], got ${target}`);
}

/** Rounded for reports: four decimals say more than the corpus can support anyway. */
const round = (x: number) => Math.round(x * 1e4) / 1e4;

/**
 * One layer's report, one cache replay at a time: yields after each replay so that a caller on a
 * serving event loop can let other work run between them (routingReportInSlices).
 */
function* layerSteps(layer: number, trace: LayerTrace, opts: ReportOptions): Generator<void, LayerReport> {
  checkTarget(opts.target);
  checkSegment(trace, opts.segment);
  const policy = opts.policy ?? 'lru';
  const sch: CachePoint[] = [];
  for (let c = trace.topK; c <= trace.numExperts; c++) {
    const hit = round(cacheHitRate(trace, c, 'segment', opts.segment));
    yield;
    const lru = round(cacheHitRate(trace, c, 'lru'));
    yield;
    const lfu = round(cacheHitRate(trace, c, 'lfu'));
    yield;
    sch.push({ cache: c, hit_rate: hit, lru_hit_rate: lru, lfu_hit_rate: lfu });
  }
  const key = policy === 'lru' ? 'lru_hit_rate' : 'lfu_hit_rate';
  // Every expert cached always hits (the replay starts warm), so some size qualifies.
  const recommended = sch.find((p) => p[key] >= opts.target)?.cache ?? trace.numExperts;
  return { layer, srp: round(segmentRoutingBest(trace, opts.segment)), sch, recommended_cache: recommended };
}

/** One layer's report (see the file's comment). Throws a RangeError naming `segment` or `target`. */
export function layerReport(layer: number, trace: LayerTrace, opts: ReportOptions): LayerReport {
  const steps = layerSteps(layer, trace, opts);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

function tokensOf(traces: LayerTrace[]): number {
  return traces.length ? traces[0].sequences.reduce((n, s) => n + Math.floor(s.length / traces[0].topK), 0) : 0;
}

/** Every layer's report; `traces[l]` is layer l's routing. */
export function routingReport(traces: LayerTrace[], opts: ReportOptions): RoutingReport {
  checkTarget(opts.target);
  return { segment: opts.segment, target: opts.target, recommended_by: opts.policy ?? 'lru', tokens: tokensOf(traces), layers: traces.map((t, l) => layerReport(l, t, opts)) };
}

/**
 * routingReport, awaiting `pause()` between cache replays (one layer, one size, one policy each):
 * the server computes its live report this way, so no piece holds its event loop for long.
 */
export async function routingReportInSlices(traces: LayerTrace[], opts: ReportOptions, pause: () => Promise<void>): Promise<RoutingReport> {
  checkTarget(opts.target);
  const layers: LayerReport[] = [];
  for (let l = 0; l < traces.length; l++) {
    const steps = layerSteps(l, traces[l], opts);
    for (let r = steps.next(); ; r = steps.next()) {
      if (r.done) {
        layers.push(r.value);
        break;
      }
      await pause();
    }
  }
  return { segment: opts.segment, target: opts.target, recommended_by: opts.policy ?? 'lru', tokens: tokensOf(traces), layers };
}

/**
 * One SVG with a small chart per layer: hit rate against cache size for the segment cache (SCH),
 * LRU and LFU, and the target as a flat line.
 */
export function routingChart(report: RoutingReport, title: string): string {
  const W = 720;
  const H = 420;
  const cols = Math.min(2, report.layers.length);
  const rows = Math.ceil(report.layers.length / cols);
  const panels = report.layers.map((l, i) => {
    const sizes = l.sch.map((p) => p.cache);
    const chart = lineChart({
      title: `layer ${l.layer}: SRP ${l.srp.toFixed(3)} (L = ${report.segment}), recommended ${l.recommended_cache}`,
      xLabel: 'cache size (experts)',
      yLabel: 'hit rate',
      yMin: Math.min(report.target, ...l.sch.flatMap((p) => [p.hit_rate, p.lru_hit_rate, p.lfu_hit_rate])),
      yMax: 1,
      series: [
        { name: `SCH (sees ${report.segment} ahead)`, points: l.sch.map((p) => [p.cache, p.hit_rate]) },
        { name: 'LRU', points: l.sch.map((p) => [p.cache, p.lru_hit_rate]) },
        { name: 'LFU', points: l.sch.map((p) => [p.cache, p.lfu_hit_rate]) },
        { name: `target ${report.target}`, points: [[sizes[0], report.target], [sizes[sizes.length - 1], report.target]] },
      ],
    });
    // Each panel is a complete chart placed as a nested <svg> at its grid position.
    return chart.replace('<svg ', `<svg x="${(i % cols) * W}" y="${30 + Math.floor(i / cols) * H}" `);
  });
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${cols * W}" height="${30 + rows * H}" viewBox="0 0 ${cols * W} ${30 + rows * H}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="20" font-size="16">${esc(title)}</text>`,
    ...panels,
    '</svg>',
  ].join('\n');
}
