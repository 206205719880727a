/**
 * The planner: a pure function from what the controller knows to one ladder level per layer.
 *
 * It predicts a decode step's time as the compute time plus, per layer, the experts it fetches
 * per step times (fixed overhead + that level's bytes / bandwidth) — a serial link, no credit
 * for prefetch overlap, so the prediction errs slow — and starts every layer at its ceiling (the
 * tightest level the policy allows). While the prediction is over the target (the SLA times a
 * headroom), it loosens one layer by one level: the move that costs the least accuracy per
 * second it saves (sensitivity from the profile, or the policy's prior). Layers never go below
 * their floor (the loosest allowed; a quarantined level raises it), and with a loss budget no
 * move is taken that would bring the plan's predicted loss (the sum of its layers' sensitivities)
 * past it: as loose as the SLA needs, no looser than the accuracy floor allows, and where both
 * cannot hold, accuracy wins.
 *
 * Why greedy is safe here: the seconds a move saves are (bytes saved) × fetches / bandwidth, so
 * the ranking of moves does not depend on the bandwidth, and a plan is always a prefix of one
 * fixed sequence of moves. Lower bandwidth or a tighter SLA only takes more of the sequence:
 * lower bandwidth never gives a tighter plan, and a looser SLA never a looser one.
 *
 * @example
 * planLevels({ levelBytes, fetchesPerToken, bandwidth: 8e6, overhead: 0, computeSeconds: 0.01,
 *              slaSeconds: 0.05, sensitivity, floor: [0, 0], ceiling: [5, 5] }).levels
 */

export interface PlannerInput {
  /** [layer][level]: bytes one expert costs to fetch at that level (levels loosest first). */
  levelBytes: number[][];
  /**
   * [layer]: experts moved over the link per decode step (prefetches included; the controller's
   * moves estimator). Per step whatever the batch: an expert moved once serves every sequence in it.
   */
  fetchesPerToken: number[];
  /** Bytes per second, and seconds of fixed cost per move. */
  bandwidth: number;
  overhead: number;
  /** A step's time with every expert already on the device, at the batch planned for (decide.ts plannerInput). */
  computeSeconds: number;
  /** p95 inter-token latency target. */
  slaSeconds: number;
  /** Aim at this share of the SLA (default 0.9: the p95 sits above the mean). */
  headroom?: number;
  /** [layer][level]: accuracy cost of running that layer at that level (0 = none). */
  sensitivity: number[][];
  /** [layer]: the loosest and tightest levels allowed. */
  floor: number[];
  ceiling: number[];
  /**
   * The most predicted loss a plan may have, Σ sensitivity[l][level], in the sensitivity's own
   * unit (1 − top-1 agreement for a measured profile: 1 − the accuracy floor). None: unlimited.
   */
  lossBudget?: number;
}

export interface PlanMove {
  layer: number;
  from: number;
  to: number;
  secondsSaved: number;
  accuracyCost: number;
}

export interface PlannerOutput {
  levels: number[];
  predictedSeconds: number;
  targetSeconds: number;
  /** Whether the prediction meets the target (false: floors or the loss budget stopped it first). */
  meetsTarget: boolean;
  /** The plan's predicted loss (Σ sensitivity at its levels). */
  predictedLoss: number;
  /** The loss budget stopped the planner before the target was met. */
  stoppedByBudget: boolean;
  moves: PlanMove[];
}

/** Predicted loss of `levels`: the sum of each layer's sensitivity at its level. */
export function predictLoss(sensitivity: number[][], levels: number[]): number {
  return levels.reduce((s, lv, l) => s + sensitivity[l][lv], 0);
}

/** Predicted decode-step seconds of `levels`. */
export function predictSeconds(x: PlannerInput, levels: number[]): number {
  let t = x.computeSeconds;
  levels.forEach((lv, l) => {
    t += x.fetchesPerToken[l] * (x.overhead + x.levelBytes[l][lv] / x.bandwidth);
  });
  return t;
}

export function checkPlannerInput(x: PlannerInput): void {
  const L = x.levelBytes.length;
  const same = (name: string, a: unknown[]) => {
    if (a.length !== L) throw new RangeError(`planner: ${name} has ${a.length} layers, levelBytes ${L}`);
  };
  same('fetchesPerToken', x.fetchesPerToken);
  same('sensitivity', x.sensitivity);
  same('floor', x.floor);
  same('ceiling', x.ceiling);
  if (!(x.bandwidth > 0)) throw new RangeError(`planner: bandwidth must be > 0, got ${x.bandwidth}`);
  if (!(x.slaSeconds > 0)) throw new RangeError(`planner: the SLA must be > 0 seconds, got ${x.slaSeconds}`);
  if (x.lossBudget !== undefined && !(x.lossBudget >= 0)) throw new RangeError(`planner: the loss budget must be ≥ 0, got ${x.lossBudget}`);
  for (let l = 0; l < L; l++) {
    const n = x.levelBytes[l].length;
    if (x.sensitivity[l].length !== n) throw new RangeError(`planner: layer ${l} has ${n} levels of bytes but ${x.sensitivity[l].length} of sensitivity`);
    if (!(Number.isInteger(x.floor[l]) && Number.isInteger(x.ceiling[l]) && x.floor[l] >= 0 && x.floor[l] <= x.ceiling[l] && x.ceiling[l] < n)) {
      throw new RangeError(`planner: layer ${l} floor ${x.floor[l]} and ceiling ${x.ceiling[l]} must satisfy 0 ≤ floor ≤ ceiling < ${n}`);
    }
  }
}

export function planLevels(x: PlannerInput): PlannerOutput {
  checkPlannerInput(x);
  const target = x.slaSeconds * (x.headroom ?? 0.9);
  const levels = [...x.ceiling];
  const moves: PlanMove[] = [];
  let t = predictSeconds(x, levels);
  let loss = predictLoss(x.sensitivity, levels);
  let stoppedByBudget = false;
  while (t > target) {
    let best: PlanMove | undefined;
    let bestRatio = Infinity;
    for (let l = 0; l < levels.length; l++) {
      const from = levels[l];
      if (from <= x.floor[l]) continue;
      const to = from - 1;
      const bytesSaved = x.fetchesPerToken[l] * (x.levelBytes[l][from] - x.levelBytes[l][to]);
      if (!(bytesSaved > 0)) continue;
      const cost = Math.max(0, x.sensitivity[l][to] - x.sensitivity[l][from]);
      // Ranked per byte, not per second: the same number whatever the bandwidth (see above).
      const ratio = cost / bytesSaved;
      const saved = bytesSaved / x.bandwidth;
      if (ratio < bestRatio) {
        bestRatio = ratio;
        best = { layer: l, from, to, secondsSaved: saved, accuracyCost: cost };
      }
    }
    if (!best) break;
    // The sequence stops here rather than skipping to a cheaper later move, so every plan is still
    // a prefix of the one sequence (the monotonicity above holds with a budget too).
    const after = loss + x.sensitivity[best.layer][best.to] - x.sensitivity[best.layer][best.from];
    if (x.lossBudget !== undefined && after > x.lossBudget) {
      stoppedByBudget = true;
      break;
    }
    levels[best.layer] = best.to;
    moves.push(best);
    loss = after;
    t = predictSeconds(x, levels);
  }
  return { levels, predictedSeconds: t, targetSeconds: target, meetsTarget: t <= target, predictedLoss: loss, stoppedByBudget, moves };
}
