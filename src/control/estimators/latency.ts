/**
 * Rolling p95 inter-token latency as a pure reducer over the steps clients wait on: the 95th
 * percentile of the last `window` such steps' durations, nearest-rank, each step weighted by its
 * decode sequences. Also the batch being served: the same percentile of those steps' tokens.
 *
 * Which steps: every step with at least one decode sequence in it, whatever its batch, prefill
 * chunks included — a step that also carries a joining request's prompt chunk is an inter-token
 * gap for every decode sequence in it, and it is the slow one. A step of prompt tokens only has
 * no client between two tokens (it is time to first token) and counts for nothing. Decode
 * sequences are tokens − prefillTokens: a decode sequence brings one token to a step.
 *
 * Why weighted: the SLA is the p95 of the gaps clients see, and a step of 8 decode sequences is
 * 8 such gaps; unweighted, a few lone-sequence steps between busy ones would pull the p95 down.
 *
 * Why the batch is a percentile and not a mean: a step's time grows with its tokens, so the p95
 * step is (nearly) the step at the p95 of tokens — a quantile passes through a rising function.
 * The planner, predicting there, plans for the steps the SLA is about: the full batches, and the
 * steps with a prefill chunk once they are more than 5 % of the gaps.
 *
 * @example
 * let s = latencyInit();  s = latencyStep(s, { seconds: 0.012, tokens: 8, prefillTokens: 0 });
 * p95(s);  servedTokens(s);  // 0.012, 8
 */
import { Window } from './window.js';

export interface LatencyState {
  readonly window: number;
  /** The last `window` counted steps: duration, decode sequences (the weight), tokens. */
  readonly steps: Window<number>;
  readonly weights: Window<number>;
  readonly tokens: Window<number>;
}

/** What a step sample tells this estimator (a TokenSample has it all). */
export interface StepTiming {
  seconds: number;
  tokens: number;
  prefillTokens: number;
}

export function latencyInit(window = 128): LatencyState {
  if (!(Number.isInteger(window) && window >= 1)) throw new RangeError(`latency window must be a whole number ≥ 1, got ${window}`);
  return { window, steps: Window.empty(window), weights: Window.empty(window), tokens: Window.empty(window) };
}

/** Decode sequences in a step: one token each, so the tokens that are not prompt tokens. */
export const decodeSequences = (t: { tokens: number; prefillTokens: number }): number => Math.max(0, t.tokens - t.prefillTokens);

/** Folds one step in; a step with no decode sequence, or no finite duration, is not an inter-token gap. */
export function latencyStep(s: LatencyState, t: StepTiming): LatencyState {
  const w = decodeSequences(t);
  if (!(w > 0) || !(t.seconds >= 0) || !Number.isFinite(t.seconds)) return s;
  return { ...s, steps: s.steps.push(t.seconds), weights: s.weights.push(w), tokens: s.tokens.push(t.tokens) };
}

/** The q-quantile (0 < q ≤ 1) by nearest rank, or NaN with no samples. */
type Numbers = readonly number[] | Window<number>;
const asArray = (xs: Numbers): readonly number[] => (xs instanceof Window ? xs.toArray() : xs);

export function quantile(xs: Numbers, q: number): number {
  // A typed array sorts numerically, with no comparator calls.
  const sorted = Float64Array.from(asArray(xs)).sort();
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/**
 * The q-quantile of xs, each counted `weights[i]` times, by nearest rank (the quantile of the
 * list with every x repeated by its weight); NaN with no weight. Equal weights: quantile().
 */
export function weightedQuantile(values: Numbers, weightsOf: Numbers, q: number): number {
  const xs = asArray(values);
  const weights = asArray(weightsOf);
  const order = xs.map((_, i) => i).filter((i) => weights[i] > 0).sort((a, b) => xs[a] - xs[b]);
  const total = order.reduce((a, i) => a + weights[i], 0);
  if (!(total > 0)) return NaN;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (const i of order) {
    seen += weights[i];
    if (seen >= rank) return xs[i];
  }
  return xs[order[order.length - 1]];
}

/** p95 of the gaps clients saw over the window (steps weighted by their decode sequences). */
export const p95 = (s: LatencyState): number => weightedQuantile(s.steps, s.weights, 0.95);

/** Tokens of the step at the p95 of the gaps' shapes: the batch the planner predicts at; NaN before any step. */
export const servedTokens = (s: LatencyState): number => weightedQuantile(s.tokens, s.weights, 0.95);
