/**
 * How the planner's step-time model errs, as a pure reducer over the steps clients wait on
 * (every step with a decode sequence, any batch, prefill chunks included): each step's measured
 * time over what the model predicted for it (the plan then in force, at the estimates of that
 * moment, at that step's own tokens), over the last `window` steps. Its 95th percentile turns the
 * model's prediction into a predicted p95: the planner aims a plan's predicted time at SLA / ratio p95.
 *
 * At the step's own tokens, so that a batch growing or shrinking is no error (the step-cost model
 * follows it); what the model leaves out of a step that carries a prefill chunk — the chunk's own
 * expert moves — is, and once such steps are more than 5 % of the window the p95 covers them.
 *
 * Why ratios and not the measured p95 against today's prediction: after the link changes, the
 * bandwidth estimate follows within a few moves but a p95 over dozens of steps takes seconds;
 * dividing the one by the other would cancel the very change the controller must react to. A
 * ratio pairs each step with the prediction made under its own conditions, so it stays put while
 * the link moves and says only how far the model is off (prefetch overlap, which the model
 * leaves out, makes it < 1; contention and queueing > 1).
 *
 * @example
 * let s = modelErrorInit();  s = modelErrorStep(s, 0.030, 0.040);
 * modelErrorP95(s);   // 1 until minSamples steps, then the ratios' p95
 */
import { quantile } from './latency.js';
import { Window } from './window.js';

export interface ModelErrorState {
  readonly window: number;
  readonly minSamples: number;
  /** measured / predicted, for the last `window` steps. */
  readonly ratios: Window<number>;
}

export function modelErrorInit(window = 64, minSamples = 8): ModelErrorState {
  if (!(Number.isInteger(window) && window >= 1)) throw new RangeError(`model-error window must be a whole number ≥ 1, got ${window}`);
  if (!(Number.isInteger(minSamples) && minSamples >= 1 && minSamples <= window)) {
    throw new RangeError(`model-error minSamples must be a whole number in [1, window], got ${minSamples}`);
  }
  return { window, minSamples, ratios: Window.empty(window) };
}

export function modelErrorStep(s: ModelErrorState, measuredSeconds: number, predictedSeconds: number): ModelErrorState {
  const r = measuredSeconds / predictedSeconds;
  if (!(measuredSeconds >= 0) || !(predictedSeconds > 0) || !Number.isFinite(r)) return s;
  return { ...s, ratios: s.ratios.push(r) };
}

/** Whether enough steps were seen for the ratio to say anything about this model. */
export const modelErrorKnown = (s: ModelErrorState): boolean => s.ratios.length >= s.minSamples;

/**
 * The 95th percentile of measured / predicted, clamped to [1/4, 4] (a model off by more than 4×
 * is a broken sample, not a calibration); 1 until minSamples steps were seen — the model leaves
 * prefetch overlap out and so errs slow, the safe side to start on.
 */
export function modelErrorP95(s: ModelErrorState): number {
  if (!modelErrorKnown(s)) return 1;
  return Math.min(4, Math.max(0.25, quantile(s.ratios, 0.95)));
}
