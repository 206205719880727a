/**
 * One controller decision, as a pure function of what the controller knows at a tick: the
 * estimators' state, the current plan, when each layer last changed, the policy's hysteresis,
 * the SLA and any quarantined levels. The RxJS wiring (controller.ts) calls it every tick and
 * applies what it returns; the marble tests drive the timing, the unit tests this logic.
 *
 * Rules, in order:
 *  1. frozen by an operator → hold;
 *  2. no telemetry for stale_after_ms (the watchdog) → hold: the plan is frozen until samples
 *     flow again, since deciding on stale estimates is worse than not deciding;
 *  3. ask the planner for a target plan. Its link model is calibrated by measurement: the SLA
 *     it aims at is scaled by predicted/measured p95 of the current plan, so a model that
 *     under-predicts gets a tighter target and one that over-predicts a looser one;
 *  4. degrade at once: p95 above SLA·(1 + tolerance) (or, before any p95, a prediction above
 *     it) and the target looser somewhere → move up to max_layers_per_decision layers to their
 *     target, in the planner's order, skipping layers within their dwell time;
 *  5. upgrade only after a stable window: p95 below SLA·(1 − tolerance) and the target tighter
 *     somewhere, continuously for stable_window_ms → tighten up to k layers, the most
 *     sensitive first;
 *  6. otherwise hold (inside the tolerance band, waiting for the window, or nothing to change).
 */
import { bandwidthEstimate, overheadEstimate, type BandwidthState } from './estimators/bandwidth.js';
import { computeMedian, p95, type LatencyState } from './estimators/latency.js';
import { missRate, type MissState } from './estimators/miss-rate.js';
import { planLevels, predictSeconds, type PlannerInput } from './planner.js';

export interface ControlState {
  bandwidth: BandwidthState;
  latency: LatencyState;
  misses: MissState;
  /** Scheduler time (ms) of the last telemetry sample, and how many have arrived. */
  lastSampleAt: number;
  samples: number;
}

export interface Hysteresis {
  stable_window_ms: number;
  tolerance: number;
  dwell_ms: number;
  max_layers_per_decision: number;
  stale_after_ms: number;
  headroom: number;
}

export interface LayerChange {
  layer: number;
  from: number;
  to: number;
}

export type DecisionAction = 'degrade' | 'upgrade' | 'hold' | 'rollback';

export interface DecisionInputs {
  bandwidthBytesPerSecond: number;
  overheadSeconds: number;
  p95Seconds: number | null;
  computeSeconds: number | null;
  slaSeconds: number;
  plannerSlaSeconds: number;
  predictedSeconds: number;
  fetchesPerToken: number[];
  targetLevels: number[];
  /** The target plan's predicted loss (Σ sensitivity at its levels). */
  targetLoss: number;
}

export interface Decision {
  at: number;
  action: DecisionAction;
  reason: string;
  changes: LayerChange[];
  /** The plan's levels after this decision (before it, for a hold or a dry run). */
  levels: number[];
  dryRun: boolean;
  inputs?: DecisionInputs;
}

export interface DecideContext {
  now: number;
  state: ControlState;
  levels: number[];
  lastChange: number[];
  /** Since when (ms) the target has been tighter than the plan with p95 under the band, or null. */
  tighterSince: number | null;
  slaSeconds: number;
  hysteresis: Hysteresis;
  levelBytes: number[][];
  /** Expert lookups a layer makes per decode token (top-k). */
  lookupsPerToken: number;
  sensitivity: number[][];
  floor: number[];
  ceiling: number[];
  /** The planner's loss budget (see PlannerInput.lossBudget); none: unlimited. */
  lossBudget?: number;
  frozen: boolean;
}

export function decide(c: DecideContext): { decision: Omit<Decision, 'dryRun'>; tighterSince: number | null } {
  const hold = (reason: string, inputs?: DecisionInputs, tighterSince: number | null = null) => ({
    decision: { at: c.now, action: 'hold' as const, reason, changes: [], levels: [...c.levels], inputs },
    tighterSince,
  });
  if (c.frozen) return hold('frozen by an operator');
  if (c.state.samples === 0) return hold('no telemetry yet');
  const silent = c.now - c.state.lastSampleAt;
  if (silent > c.hysteresis.stale_after_ms) return hold(`telemetry stale (no sample for ${(silent / 1000).toFixed(1)} s): plan frozen`);

  const L = c.levels.length;
  const measuredP95 = p95(c.state.latency);
  const compute = computeMedian(c.state.latency);
  const x: PlannerInput = {
    levelBytes: c.levelBytes,
    fetchesPerToken: Array.from({ length: L }, (_, l) => c.lookupsPerToken * missRate(c.state.misses, l, 1)),
    bandwidth: bandwidthEstimate(c.state.bandwidth),
    overhead: overheadEstimate(c.state.bandwidth),
    computeSeconds: Number.isNaN(compute) ? 0 : compute,
    slaSeconds: c.slaSeconds,
    headroom: c.hysteresis.headroom,
    sensitivity: c.sensitivity,
    floor: c.floor,
    ceiling: c.ceiling,
    lossBudget: c.lossBudget,
  };
  const predicted = predictSeconds(x, c.levels);
  const known = !Number.isNaN(measuredP95) && measuredP95 > 0;
  const calibration = known ? Math.min(4, Math.max(0.25, predicted / measuredP95)) : 1;
  const plannerSla = c.slaSeconds * calibration;
  const target = planLevels({ ...x, slaSeconds: plannerSla });
  const inputs: DecisionInputs = {
    bandwidthBytesPerSecond: x.bandwidth,
    overheadSeconds: x.overhead,
    p95Seconds: known ? measuredP95 : null,
    computeSeconds: Number.isNaN(compute) ? null : compute,
    slaSeconds: c.slaSeconds,
    plannerSlaSeconds: plannerSla,
    predictedSeconds: predicted,
    fetchesPerToken: x.fetchesPerToken,
    targetLevels: target.levels,
    targetLoss: target.predictedLoss,
  };
  const observed = known ? measuredP95 : predicted;
  const tol = c.hysteresis.tolerance;
  const movable = (l: number) => c.now - c.lastChange[l] >= c.hysteresis.dwell_ms;
  const apply = (action: 'degrade' | 'upgrade', layers: number[], reason: string) => {
    const picked = layers.filter(movable).slice(0, c.hysteresis.max_layers_per_decision);
    if (!picked.length) return hold(`${action} wanted (${reason}) but every such layer is within its dwell time`, inputs);
    const levels = [...c.levels];
    const changes = picked.map((l) => {
      levels[l] = target.levels[l];
      return { layer: l, from: c.levels[l], to: target.levels[l] };
    });
    return { decision: { at: c.now, action, reason, changes, levels, inputs }, tighterSince: null };
  };

  // A plan outside what the policy allows now (a quarantine raised a floor): fix at once.
  const outside = c.levels.map((lv, l) => (lv < c.floor[l] || lv > c.ceiling[l] ? l : -1)).filter((l) => l >= 0);
  if (outside.length) {
    const levels = c.levels.map((lv, l) => Math.min(c.ceiling[l], Math.max(c.floor[l], lv)));
    const changes = outside.map((l) => ({ layer: l, from: c.levels[l], to: levels[l] }));
    return { decision: { at: c.now, action: 'upgrade', reason: 'levels outside the allowed floor/ceiling (quarantine or policy)', changes, levels, inputs }, tighterSince: null };
  }

  const looser = target.levels.map((lv, l) => (lv < c.levels[l] ? l : -1)).filter((l) => l >= 0);
  const tighter = target.levels.map((lv, l) => (lv > c.levels[l] ? l : -1)).filter((l) => l >= 0);
  const over = observed > c.slaSeconds * (1 + tol);
  const under = observed < c.slaSeconds * (1 - tol);
  if (over && looser.length) {
    // The planner's own move order: cheapest accuracy per second saved first.
    const order = [...new Set(target.moves.map((m) => m.layer))].filter((l) => looser.includes(l));
    return apply('degrade', order, `p95 ${observed.toFixed(4)} s over the SLA ${c.slaSeconds} s + ${100 * tol} %`);
  }
  if (under && tighter.length) {
    const since = c.tighterSince ?? c.now;
    if (c.now - since < c.hysteresis.stable_window_ms) {
      return hold(`tighter plan possible; waiting for a stable window (${((c.now - since) / 1000).toFixed(1)} of ${c.hysteresis.stable_window_ms / 1000} s)`, inputs, since);
    }
    const gain = (l: number) => c.sensitivity[l][c.levels[l]] - c.sensitivity[l][target.levels[l]];
    const order = [...tighter].sort((a, b) => gain(b) - gain(a) || a - b);
    return apply('upgrade', order, `p95 ${observed.toFixed(4)} s under the SLA ${c.slaSeconds} s − ${100 * tol} % for ${c.hysteresis.stable_window_ms / 1000} s`);
  }
  if (!over && !under) return hold('p95 within the tolerance band', inputs);
  if (over && target.stoppedByBudget) return hold(`over the SLA, but a looser plan would predict more loss than the accuracy floor allows (budget ${c.lossBudget})`, inputs);
  return hold(over ? 'over the SLA, but no layer can go looser (floors, quarantine)' : 'plan already as tight as allowed', inputs);
}
