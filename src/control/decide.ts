/**
 * One controller decision, as a pure function of what the controller knows at a tick: the
 * estimators' state, the current plan, when each layer last changed, the policy's hysteresis,
 * the SLA and any quarantined levels. The RxJS wiring (controller.ts) calls it every tick and
 * applies what it returns; the marble tests drive the timing, the unit tests this logic.
 *
 * Two views of the p95: the measured one (the last dozens of steps: true, but seconds late after
 * the link changes) and the predicted one (the planner's model of the current plan at today's
 * bandwidth estimate, times the model's own error p95 — estimators/model-error.ts: fresh within
 * a few moves). The controller acts on the worse of the two — once the model's error is known
 * (minSamples steps); before that, on the measurement when there is one.
 *
 * With continuous batching both views are of the steps clients wait on (any step with a decode
 * sequence, prefill chunks included), and the prediction is made at the batch being served: the
 * tokens per step at the p95 of those gaps (plannedTokens), whose compute the step-cost model
 * gives. A larger batch leaves the link less of the SLA, so the same link degrades sooner.
 *
 * Rules, in order:
 *  1. frozen by an operator → hold;
 *  2. no telemetry for stale_after_ms (the watchdog) → hold: the plan is frozen until samples
 *     flow again, since deciding on stale estimates is worse than not deciding;
 *  3. ask the planner for a target plan, aimed at SLA / (the model's error p95), so that its
 *     predicted p95 meets the SLA with the policy's headroom;
 *  4. degrade at once: p95 over the SLA and the target looser somewhere → move up to
 *     max_layers_per_decision layers to their target, in the planner's order, skipping layers
 *     within their dwell time. The SLA is a limit, not a set point: the tolerance band lies
 *     below it, never above;
 *  5. upgrade only after a stable window: p95 under SLA·(1 − tolerance) and the target tighter
 *     somewhere, continuously for stable_window_ms → tighten up to k layers, the most sensitive
 *     first, toward the safest target of the window (the loosest level each layer had in any of
 *     its targets, as Kubernetes' HPA acts on the safest recommendation of its window), so a
 *     link that dipped within the window is planned for;
 *  6. otherwise hold (inside the tolerance band, waiting for the window, or nothing to change).
 *
 * Levels here are on the planner's scale (drop.ts): a drop rung is a level below 0, so the rules
 * read the same with dropping allowed — the planner only goes there once every level move is spent.
 */
import { bandwidthEstimate, overheadEstimate, type BandwidthState } from './estimators/bandwidth.js';
import { p95, servedTokens, type LatencyState } from './estimators/latency.js';
import { missRate, type MissState } from './estimators/miss-rate.js';
import { modelErrorKnown, modelErrorP95, type ModelErrorState } from './estimators/model-error.js';
import { lookupsPerStep, movesPerToken, type MovesState } from './estimators/moves.js';
import { stepCostAt, type StepCostState } from './estimators/step-cost.js';
import type { DropState } from '../offload/plan.js';
import type { TierAOptions } from './controller.js';
import { layerCost, planLevels, predictSeconds, SKIP_MOE, TRIM, type DropInput, type PlannerInput } from './planner.js';

export interface ControlState {
  bandwidth: BandwidthState;
  latency: LatencyState;
  misses: MissState;
  moves: MovesState;
  /** Compute seconds of a step as a function of its tokens. */
  stepCost: StepCostState;
  modelError: ModelErrorState;
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

/** One layer's move, on the planner's scale (drop.ts: −1 trim, −2 skip-moe, else the level). */
export interface LayerChange {
  layer: number;
  from: number;
  to: number;
}

export type DecisionAction = 'degrade' | 'upgrade' | 'hold' | 'rollback';

export interface DecisionInputs {
  bandwidthBytesPerSecond: number;
  overheadSeconds: number;
  /** Measured p95 of the last steps; null before any. */
  p95Seconds: number | null;
  /** The current plan's predicted time × the model's error p95 (rule 3). */
  predictedP95Seconds: number;
  modelErrorP95: number;
  /** Tokens per step the prediction is made at (latency.ts servedTokens), and its compute seconds (null before any step). */
  tokensPerStep: number;
  computeSeconds: number | null;
  slaSeconds: number;
  plannerSlaSeconds: number;
  predictedSeconds: number;
  fetchesPerToken: number[];
  /** The planner's target, on its scale (−1 trim, −2 skip-moe where it drops). */
  targetLevels: number[];
  /** The target plan's predicted loss (Σ sensitivity at its levels). */
  targetLoss: number;
}

export interface Decision {
  at: number;
  action: DecisionAction;
  reason: string;
  changes: LayerChange[];
  /**
   * The plan's layers after this decision (before it, for a hold or a dry run), on the planner's
   * scale (drop.ts): the levels, with −1 / −2 where a layer trims / skips its MoE block.
   */
  levels: number[];
  /** Where any layer drops: each layer's drop state, for logs (the controller fills it in). */
  drop?: DropState[];
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
  /** The safest (loosest per layer) target seen since tighterSince, or null. */
  safestTarget: number[] | null;
  slaSeconds: number;
  hysteresis: Hysteresis;
  levelBytes: number[][];
  /** Expert lookups a layer makes per decode token (top-k). */
  lookupsPerToken: number;
  /** Tier A's capacity (planner.ts TierACapacity); none: not modelled. */
  tierA?: TierAOptions;
  sensitivity: number[][];
  floor: number[];
  ceiling: number[];
  /** The planner's loss budget (see PlannerInput.lossBudget); none: unlimited. */
  lossBudget?: number;
  /** The drop rungs allowed (levels below 0 on the planner's scale, drop.ts); none: no dropping. */
  drop?: DropInput;
  frozen: boolean;
}

/**
 * The batch to plan at: tokens per step at the p95 of the gaps clients saw (latency.ts
 * servedTokens); one token (a lone decode step) before any step.
 */
export function plannedTokens(state: ControlState): number {
  const t = servedTokens(state.latency);
  return Number.isNaN(t) ? 1 : t;
}

/** A step's compute at the batch being served: its tokens (plannedTokens) and seconds (NaN before any step). */
export function servedStepCompute(state: ControlState): { tokens: number; seconds: number } {
  const tokens = plannedTokens(state);
  return { tokens, seconds: stepCostAt(state.stepCost, tokens) };
}

/**
 * What the planner is told at a tick: the plan's costs and limits, and the estimators' view, for
 * a step of `tokens` tokens (default: the batch being served, plannedTokens). The link's part is
 * per step at any batch (the moves estimator counts the batch's experts once each); the compute
 * part is the step-cost model's at those tokens.
 */
export function plannerInput(
  state: ControlState,
  c: Pick<DecideContext, 'levelBytes' | 'lookupsPerToken' | 'tierA' | 'slaSeconds' | 'hysteresis' | 'sensitivity' | 'floor' | 'ceiling' | 'lossBudget' | 'drop'>,
  tokens: number = plannedTokens(state),
  current?: number[],
): PlannerInput {
  const compute = stepCostAt(state.stepCost, tokens);
  return {
    levelBytes: c.levelBytes,
    // Experts moved per decode step (prefetches included); before the first step, lookups × miss
    // rate. Always the layer's rate undropped (`current`: the plan served, on the planner's scale),
    // which the planner scales by the rung: a trimmed layer's measured moves are the (k − 1)/k
    // share, and a skipped one moves nothing, so its last miss rate stands in.
    fetchesPerToken: c.levelBytes.map((_, l) => {
      const fallback = c.lookupsPerToken * missRate(state.misses, l, 1);
      if (current?.[l] === SKIP_MOE) return fallback;
      const moved = movesPerToken(state.moves, l);
      if (Number.isNaN(moved)) return fallback;
      return current?.[l] === TRIM && c.drop && c.drop.trimShare > 0 ? moved / c.drop.trimShare : moved;
    }),
    bandwidth: bandwidthEstimate(state.bandwidth),
    overhead: overheadEstimate(state.bandwidth),
    computeSeconds: Number.isNaN(compute) ? 0 : compute,
    slaSeconds: c.slaSeconds,
    headroom: c.hysteresis.headroom,
    sensitivity: c.sensitivity,
    floor: c.floor,
    ceiling: c.ceiling,
    lossBudget: c.lossBudget,
    drop: c.drop,
    // Tier A's capacity misses at other plans than `current`: lookups per step as measured, or,
    // before a decode step, top-k at the planned tokens' expected union (uniform routing).
    capacity: c.tierA && {
      ...c.tierA,
      lookupsPerStep: c.levelBytes.map((_, l) => {
        const measured = lookupsPerStep(state.moves, l);
        return Number.isNaN(measured) ? c.tierA!.experts * (1 - (1 - c.lookupsPerToken / c.tierA!.experts) ** tokens) : measured;
      }),
      measuredAt: current ?? c.ceiling,
    },
  };
}

type Decided = { decision: Omit<Decision, 'dryRun'>; tighterSince: number | null; safestTarget: number[] | null };

export function decide(c: DecideContext): Decided {
  const hold = (reason: string, inputs?: DecisionInputs, tighterSince: number | null = null, safestTarget: number[] | null = null): Decided => ({
    decision: { at: c.now, action: 'hold' as const, reason, changes: [], levels: [...c.levels], inputs },
    tighterSince,
    safestTarget,
  });
  if (c.frozen) return hold('frozen by an operator');
  if (c.state.samples === 0) return hold('no telemetry yet');
  const silent = c.now - c.state.lastSampleAt;
  if (silent > c.hysteresis.stale_after_ms) return hold(`telemetry stale (no sample for ${(silent / 1000).toFixed(1)} s): plan frozen`);

  const measuredP95 = p95(c.state.latency);
  const tokens = plannedTokens(c.state);
  const x = plannerInput(c.state, c, tokens, c.levels);
  const predicted = predictSeconds(x, c.levels);
  const error = modelErrorP95(c.state.modelError);
  const predictedP95 = predicted * error;
  const known = !Number.isNaN(measuredP95) && measuredP95 > 0;
  const plannerSla = c.slaSeconds / error;
  const target = planLevels({ ...x, slaSeconds: plannerSla });
  const inputs: DecisionInputs = {
    bandwidthBytesPerSecond: x.bandwidth,
    overheadSeconds: x.overhead,
    p95Seconds: known ? measuredP95 : null,
    predictedP95Seconds: predictedP95,
    modelErrorP95: error,
    tokensPerStep: tokens,
    computeSeconds: c.state.stepCost.compute.length ? x.computeSeconds : null,
    slaSeconds: c.slaSeconds,
    plannerSlaSeconds: plannerSla,
    predictedSeconds: predicted,
    fetchesPerToken: x.fetchesPerToken,
    targetLevels: target.levels,
    targetLoss: target.predictedLoss,
  };
  // An uncalibrated model (too few steps to know its error) does not overrule a measurement.
  const observed = known ? (modelErrorKnown(c.state.modelError) ? Math.max(measuredP95, predictedP95) : measuredP95) : predictedP95;
  const seen = known ? `p95 ${observed.toFixed(4)} s (measured ${measuredP95.toFixed(4)}, predicted ${predictedP95.toFixed(4)})` : `predicted p95 ${observed.toFixed(4)} s`;
  const tol = c.hysteresis.tolerance;
  const movable = (l: number) => c.now - c.lastChange[l] >= c.hysteresis.dwell_ms;
  const apply = (action: 'degrade' | 'upgrade', layers: number[], to: number[], reason: string): Decided => {
    const picked = layers.filter(movable).slice(0, c.hysteresis.max_layers_per_decision);
    if (!picked.length) return hold(`${action} wanted (${reason}) but every such layer is within its dwell time`, inputs);
    const levels = [...c.levels];
    const changes = picked.map((l) => {
      levels[l] = to[l];
      return { layer: l, from: c.levels[l], to: to[l] };
    });
    return { decision: { at: c.now, action, reason, changes, levels, inputs }, tighterSince: null, safestTarget: null };
  };

  // A plan outside what the policy allows now (a quarantine raised a floor): fix at once.
  // A drop rung is inside while the layer may take it (its policy key, and no quarantine of it).
  const allowed = (l: number, lv: number) => (lv < 0 ? Boolean(c.drop?.allowed[l][lv === -1 ? 0 : 1]) : lv >= c.floor[l] && lv <= c.ceiling[l]);
  const outside = c.levels.map((lv, l) => (allowed(l, lv) ? -1 : l)).filter((l) => l >= 0);
  if (outside.length) {
    const levels = c.levels.map((lv, l) => (allowed(l, lv) ? lv : Math.min(c.ceiling[l], Math.max(c.floor[l], lv))));
    const changes = outside.map((l) => ({ layer: l, from: c.levels[l], to: levels[l] }));
    return { decision: { at: c.now, action: 'upgrade', reason: 'levels outside the allowed floor/ceiling (quarantine or policy)', changes, levels, inputs }, tighterSince: null, safestTarget: null };
  }

  const looser = target.levels.map((lv, l) => (lv < c.levels[l] ? l : -1)).filter((l) => l >= 0);
  const over = observed > c.slaSeconds;
  const under = observed < c.slaSeconds * (1 - tol);
  if (over && looser.length) {
    // The planner's own move order: cheapest accuracy per second saved first.
    const order = [...new Set(target.moves.map((m) => m.layer))].filter((l) => looser.includes(l));
    // Levels before drop rungs across the whole plan, as the planner took them: while some layer
    // still has a level to give up, the layers go only as far as their floors.
    const levelsOnly = target.levels.map((lv, l) => (lv < 0 ? c.floor[l] : lv));
    const pending = order.filter((l) => c.levels[l] > levelsOnly[l]);
    if (target.levels.some((lv) => lv < 0) && pending.length) return apply('degrade', pending, levelsOnly, `${seen} over the SLA ${c.slaSeconds} s`);
    return apply('degrade', order, target.levels, `${seen} over the SLA ${c.slaSeconds} s`);
  }
  const safest = under ? target.levels.map((lv, l) => Math.min(lv, c.safestTarget?.[l] ?? Infinity)) : null;
  const tighter = safest ? safest.map((lv, l) => (lv > c.levels[l] ? l : -1)).filter((l) => l >= 0) : [];
  if (safest && tighter.length) {
    const since = c.tighterSince ?? c.now;
    if (c.now - since < c.hysteresis.stable_window_ms) {
      return hold(`tighter plan possible; waiting for a stable window (${((c.now - since) / 1000).toFixed(1)} of ${c.hysteresis.stable_window_ms / 1000} s)`, inputs, since, safest);
    }
    const cost = (l: number, lv: number) => layerCost(c.sensitivity, l, lv, c.floor, c.drop);
    const gain = (l: number) => cost(l, c.levels[l]) - cost(l, safest[l]);
    const order = [...tighter].sort((a, b) => gain(b) - gain(a) || a - b);
    return apply('upgrade', order, safest, `${seen} under the SLA ${c.slaSeconds} s − ${100 * tol} % for ${c.hysteresis.stable_window_ms / 1000} s`);
  }
  if (!over && !under) return hold(`${seen} within the tolerance band below the SLA`, inputs);
  if (over && target.meetsTarget && !looser.length && measuredP95 > predictedP95) {
    return hold(`over the SLA by the measured p95 (${measuredP95.toFixed(4)} s), but the model predicts the plan meets it now: the slow steps were measured before the plan or the link last changed`, inputs);
  }
  if (over && target.stoppedByBudget) return hold(`over the SLA, but a looser plan would predict more loss than the accuracy floor allows (budget ${c.lossBudget})`, inputs);
  return hold(over ? 'over the SLA, but no layer can go looser (floors, quarantine)' : 'plan already as tight as allowed', inputs);
}
