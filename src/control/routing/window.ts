/**
 * Routing as it happens, made into traces for the report: a recorder for a corpus run one sequence
 * at a time (ebserve routing-report, ebserve profile), and a rolling window of the server's own
 * traffic with bounded memory (the last N tokens of every layer: N·k ids per layer) whose report
 * the admin API, /metrics and the dashboard read.
 *
 * Both take what the model's onRouting hook gives: a layer and the ids [T, k] of a step's tokens.
 * Control never imports the model; the caller hands the hook's events in.
 *
 * @example
 * const window = new RoutingWindow({ numLayers: 8, numExperts: 8, topK: 2, tokens: 2048 });
 * model.onRouting = (r) => window.observe(r);   …   (await window.refresh())?.layers[0].recommended_cache
 */
import type { LayerTrace } from './consistency.js';
import { routingReportInSlices, type ReportOptions, type RoutingReport } from './report.js';

export interface RoutingShape {
  numLayers: number;
  numExperts: number;
  topK: number;
}

/** One layer's routing of some tokens, as the model's onRouting hook reports it. */
export interface RoutingEvent {
  layer: number;
  /** [T, k] expert ids. */
  ids: ArrayLike<number>;
}

/** Collects a corpus's routing one sequence at a time; `traces()` gives every layer's. */
export class TraceRecorder {
  private readonly done: Int32Array[][];
  private current: number[][];

  constructor(private readonly shape: RoutingShape) {
    this.done = Array.from({ length: shape.numLayers }, () => []);
    this.current = Array.from({ length: shape.numLayers }, () => []);
  }

  observe(r: RoutingEvent): void {
    const row = this.current[r.layer];
    for (let i = 0; i < r.ids.length; i++) row.push(r.ids[i]);
  }

  /** The sequence that was running has ended (the next observed tokens start a new one). */
  endSequence(): void {
    this.current.forEach((ids, l) => {
      if (ids.length) this.done[l].push(Int32Array.from(ids));
    });
    this.current = this.current.map(() => []);
  }

  traces(): LayerTrace[] {
    this.endSequence();
    return this.done.map((sequences) => ({ numExperts: this.shape.numExperts, topK: this.shape.topK, sequences }));
  }
}

export interface WindowOptions extends RoutingShape {
  /** Tokens kept per layer (default 2048). */
  tokens?: number;
  /** What the live report computes (default LIVE_REPORT). */
  report?: ReportOptions;
  /** The live report is recomputed at most this often, and only after new tokens (default 30 000 ms). */
  minIntervalMs?: number;
}

/** The defaults of the live report: segments of 16 tokens, a 0.9 hit rate, LRU (the fetcher's default). */
export const LIVE_REPORT: ReportOptions = { segment: 16, target: 0.9, policy: 'lru' };

/** Lets the event loop turn (I/O and serving first) between two pieces of a report. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * The server's routing over its last `tokens` tokens, per layer: a ring buffer of ids per layer
 * (a step's tokens in the order the step holds them, sequences of a batch one after another).
 * The window is one stream: SRP's segments may span two requests, as the cache's do.
 *
 * The report replays every cache size under three policies for every layer: about a fifth of a
 * second of CPU for the embedded model's 8 layers over 2048 tokens. It is computed in slices (one
 * replay each, ~1 ms, the event loop turning between them), at most every minIntervalMs and only
 * after new tokens; /metrics and the dashboard read the last finished one (`latest`).
 */
export class RoutingWindow {
  readonly capacity: number;
  readonly options: ReportOptions;
  private readonly rings: Int32Array[];
  /** Tokens written per layer, ever. */
  private readonly written: number[];
  private readonly minIntervalMs: number;
  private last?: { report: RoutingReport | null; at: number; written: number };
  private running?: Promise<RoutingReport | null>;

  constructor(private readonly opts: WindowOptions) {
    this.capacity = opts.tokens ?? 2048;
    if (!(Number.isInteger(this.capacity) && this.capacity >= 1)) throw new RangeError(`a routing window holds a whole number of tokens ≥ 1, got ${this.capacity}`);
    this.options = opts.report ?? LIVE_REPORT;
    this.minIntervalMs = opts.minIntervalMs ?? 30_000;
    this.rings = Array.from({ length: opts.numLayers }, () => new Int32Array(this.capacity * opts.topK));
    this.written = new Array(opts.numLayers).fill(0);
  }

  /** One layer's routing of a step. Ignores what does not fit the shape (never throws: it runs inside the forward). */
  observe(r: RoutingEvent): void {
    const k = this.opts.topK;
    const ring = this.rings[r.layer];
    if (!ring || r.ids.length % k) return;
    const T = r.ids.length / k;
    for (let t = Math.max(0, T - this.capacity); t < T; t++) {
      const at = ((this.written[r.layer] + t) % this.capacity) * k;
      for (let i = 0; i < k; i++) ring[at + i] = r.ids[t * k + i];
    }
    this.written[r.layer] += T;
  }

  /** Tokens in the window (the fewest any layer holds). */
  get tokens(): number {
    return Math.min(this.capacity, ...this.written);
  }

  /** Every layer's window, oldest token first, as one sequence each. */
  traces(): LayerTrace[] {
    const k = this.opts.topK;
    const T = this.tokens;
    return this.rings.map((ring, l) => {
      const seq = new Int32Array(T * k);
      const first = this.written[l] - T;
      for (let t = 0; t < T; t++) seq.set(ring.subarray(((first + t) % this.capacity) * k, ((first + t) % this.capacity) * k + k), t * k);
      return { numExperts: this.opts.numExperts, topK: k, sequences: [seq] };
    });
  }

  /** The last finished live report (null before one, or while the window held less than a segment). */
  get latest(): RoutingReport | null {
    return this.last?.report ?? null;
  }

  /**
   * The live report, recomputed when it is due: after new tokens, and at most every minIntervalMs
   * once there is one. Concurrent calls share one computation.
   */
  refresh(now = performance.now()): Promise<RoutingReport | null> {
    if (this.running) return this.running;
    const written = this.written.reduce((a, b) => a + b, 0);
    const l = this.last;
    if (l && (l.written === written || (l.report !== null && now - l.at < this.minIntervalMs))) return Promise.resolve(l.report);
    this.running = this.compute(this.options).then(
      (report) => {
        this.last = { report, at: now, written };
        return report;
      },
    ).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /**
   * The report over the window with `opts` (a segment, target or policy other than the live
   * report's), computed now, in slices; null while the window holds fewer tokens than a segment.
   */
  async compute(opts: ReportOptions): Promise<RoutingReport | null> {
    if (this.tokens < opts.segment) return null;
    return routingReportInSlices(this.traces(), opts, turn);
  }
}
