/**
 * Rolling p95 inter-token latency as a pure reducer over decode steps (TokenSamples of one
 * token): the 95th percentile of the last `window` steps' durations, nearest-rank. Also keeps the
 * compute part of each step, whose median is what the planner adds the link's cost to.
 *
 * @example
 * let s = latencyInit();  s = latencyStep(s, { seconds: 0.012, computeSeconds: 0.01 });
 * p95(s);  // 0.012
 */

export interface LatencyState {
  readonly window: number;
  readonly steps: readonly number[];
  readonly compute: readonly number[];
}

export function latencyInit(window = 128): LatencyState {
  if (!(Number.isInteger(window) && window >= 1)) throw new RangeError(`latency window must be a whole number ≥ 1, got ${window}`);
  return { window, steps: [], compute: [] };
}

export function latencyStep(s: LatencyState, t: { seconds: number; computeSeconds: number }): LatencyState {
  if (!(t.seconds >= 0) || !Number.isFinite(t.seconds)) return s;
  const keep = (xs: readonly number[], x: number) => [...xs.slice(Math.max(0, xs.length - s.window + 1)), x];
  return { ...s, steps: keep(s.steps, t.seconds), compute: keep(s.compute, Math.max(0, Math.min(t.computeSeconds, t.seconds))) };
}

/** The q-quantile (0 < q ≤ 1) by nearest rank, or NaN with no samples. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

export const p95 = (s: LatencyState): number => quantile(s.steps, 0.95);

/** Median compute time of a step (what a token costs with every expert already on the device). */
export const computeMedian = (s: LatencyState): number => quantile(s.compute, 0.5);
