/**
 * A step's compute time as a function of the tokens in it, as a pure reducer over the steps the
 * SLA counts (every step with a decode sequence in it, whatever its batch; controller.ts). What
 * the planner adds the link's cost to, at the batch being served (latency.ts servedTokens), and
 * what the model-error estimator's prediction of each step starts from, at that step's tokens.
 *
 * The model: the last `window` steps' (tokens, compute seconds), grouped into quarter-octave bins
 * of tokens (round(4·log2 tokens): every batch of up to 8 tokens a bin of its own, wider steps
 * within ±9 % of each other); each bin with at least `minSamples` steps gives one point, (median
 * tokens, median compute); between points the cost is interpolated linearly, above the last it
 * goes on at the last two points' slope, below the first it stays flat.
 *
 * Why bins and not one line c0 + c1·tokens: the cost is not one line over the shapes a server
 * runs. On a GPU a decode step is memory-bound (reading each expert's weights once serves the
 * whole batch), so compute barely grows from 1 to a few dozen tokens, then grows linearly once
 * it is compute-bound; on the CPU engine it grows linearly with a fixed part; a step carrying a
 * prefill chunk adds attention over the chunk. A single fit through a few chunked-prefill steps
 * would tilt the line and mispredict exactly where the planner asks: the decode batch. Points
 * per bin are local (the chunks' bins do not move the decode batches' ones) and exact on a linear
 * cost (the median of a line's points lies on it). Medians make each bin robust to a stalled step
 * (a GC pause, a preempted core), and a bin speaks only from minSamples steps on, so one stalled
 * step alone in a rare shape's bin is no point either. More tokens never cost less: each point is
 * at least the one before (an upper envelope), so a noisy bin errs slow, the model's safe side.
 * Until any bin has minSamples steps the answer is the median of all (flat: today's one-token
 * decode step, the whole model when batches are not used).
 *
 * @example
 * let s = stepCostInit();
 * for (const t of [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8]) s = stepCostStep(s, { tokens: t, seconds: 1, computeSeconds: 0.004 + 0.001 * t });
 * stepCostAt(s, 6);    // 0.010 (between the bins of 4 and 8)
 * stepCostAt(s, 16);   // 0.020 (on at the slope of the last two)
 */
import { quantile } from './latency.js';
import { Window } from './window.js';

export interface StepCostState {
  readonly window: number;
  readonly minSamples: number;
  /** The last `window` steps: tokens in the step, and its compute seconds. */
  readonly tokens: Window<number>;
  readonly compute: Window<number>;
  /**
   * The same steps by quarter-octave bin (bin() below), each bin's tokens and compute seconds
   * kept sorted: a step moves one value into one bin and at most one out of another, and the
   * curve reads each bin's medians in place. (The controller predicts every step from the curve;
   * re-sorting the window per step was half its per-token cost.)
   */
  readonly bins: readonly (SortedBin | undefined)[];
}

interface SortedBin {
  readonly tokens: Float64Array;
  readonly compute: Float64Array;
}

/** One point of the cost curve: a bin's median tokens and median compute seconds, and its steps. */
export interface StepCostPoint {
  tokens: number;
  seconds: number;
  samples: number;
}

export function stepCostInit(window = 256, minSamples = 3): StepCostState {
  if (!(Number.isInteger(window) && window >= 1)) throw new RangeError(`step-cost window must be a whole number ≥ 1, got ${window}`);
  if (!(Number.isInteger(minSamples) && minSamples >= 1 && minSamples <= window)) {
    throw new RangeError(`step-cost minSamples must be a whole number in [1, window], got ${minSamples}`);
  }
  return { window, minSamples, tokens: Window.empty(window), compute: Window.empty(window), bins: [] };
}

/** Quarter-octave bin of a token count: 1 → 0, 2 → 4, 3 → 6, … 8 → 12, 9 and 10 → 13. */
const bin = (tokens: number) => Math.round(4 * Math.log2(tokens));

/** The first index of a sorted array whose value is ≥ x. */
function lowerBound(a: Float64Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** A copy of sorted `a` with x inserted, or (remove) with one x taken out. */
function withValue(a: Float64Array, x: number, remove = false): Float64Array {
  const i = lowerBound(a, x);
  const out = new Float64Array(a.length + (remove ? -1 : 1));
  out.set(a.subarray(0, i));
  if (remove) out.set(a.subarray(i + 1), i);
  else {
    out[i] = x;
    out.set(a.subarray(i), i + 1);
  }
  return out;
}

function binWith(bins: readonly (SortedBin | undefined)[], tokens: number, compute: number, remove: boolean): (SortedBin | undefined)[] {
  const out = bins.slice();
  const k = bin(tokens);
  const b = out[k] ?? { tokens: new Float64Array(0), compute: new Float64Array(0) };
  out[k] = { tokens: withValue(b.tokens, tokens, remove), compute: withValue(b.compute, compute, remove) };
  return out;
}

/** Folds one step in; a step with no token or no finite duration is ignored. Compute is at most the step. */
export function stepCostStep(s: StepCostState, t: { tokens: number; seconds: number; computeSeconds: number }): StepCostState {
  if (!(Number.isInteger(t.tokens) && t.tokens >= 1) || !(t.seconds >= 0) || !Number.isFinite(t.seconds)) return s;
  const c = Math.max(0, Math.min(Number.isFinite(t.computeSeconds) ? t.computeSeconds : t.seconds, t.seconds));
  let bins = s.bins;
  if (s.tokens.length === s.window) bins = binWith(bins, s.tokens.at(0)!, s.compute.at(0)!, true); // the step leaving the window
  bins = binWith(bins, t.tokens, c, false);
  return { ...s, tokens: s.tokens.push(t.tokens), compute: s.compute.push(c), bins };
}

/** The nearest-rank median of a sorted array, as quantile(xs, 0.5) gives it. */
const median = (sorted: Float64Array) => sorted[Math.max(0, Math.ceil(0.5 * sorted.length) - 1)];

/** The curve's points, fewest tokens first (bins with minSamples steps; the envelope applied). */
export function stepCostCurve(s: StepCostState): StepCostPoint[] {
  const points: StepCostPoint[] = [];
  for (const b of s.bins) {
    if (!b || b.tokens.length < s.minSamples) continue;
    const seconds = Math.max(median(b.compute), points.at(-1)?.seconds ?? 0);
    points.push({ tokens: median(b.tokens), seconds, samples: b.tokens.length });
  }
  return points;
}

/** Compute seconds of a step of `tokens` tokens; NaN before any step. */
export function stepCostAt(s: StepCostState, tokens: number): number {
  if (s.compute.length === 0) return NaN;
  const p = stepCostCurve(s);
  if (p.length === 0) return quantile(s.compute, 0.5);
  if (tokens <= p[0].tokens) return p[0].seconds;
  const i = p.findIndex((q) => q.tokens >= tokens);
  // Past the last point: on at the last segment's slope (none with one point: flat).
  const [a, b] = i === -1 ? (p.length > 1 ? [p[p.length - 2], p[p.length - 1]] : [p[0], p[0]]) : [p[i - 1], p[i]];
  if (b.tokens === a.tokens) return b.seconds;
  return a.seconds + ((b.seconds - a.seconds) * (tokens - a.tokens)) / (b.tokens - a.tokens);
}

/** Compute seconds per token of a step of `tokens` tokens: what batching brings a token's cost down to. */
export const stepCostPerToken = (s: StepCostState, tokens: number): number => stepCostAt(s, tokens) / tokens;
