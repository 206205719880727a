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
 * Drop rungs (PlannerInput.drop, where the policy allows them) sit below level 0 on each layer's
 * scale: −1 trim (top-k − 1, fetching a (k − 1)/k share at the floor level), −2 skip-moe (no
 * fetches). They are taken only once no level move is left — every layer at its floor and the
 * target still missed — ranked like the levels (accuracy cost per byte saved) and bounded by the
 * same loss budget: dropping is the last resort, never cheaper than a rung.
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
  /** The drop rungs the planner may take (none: it never drops). */
  drop?: DropInput;
}

/** Drop rungs on a layer's scale of levels: below the loosest level. */
export const TRIM = -1;
export const SKIP_MOE = -2;

export interface DropInput {
  /** [layer][0: trim, 1: skip-moe]: accuracy cost of that layer alone at that rung (the profile's). */
  sensitivity: number[][];
  /** [layer][0: trim, 1: skip-moe]: whether the layer may take it (the policy's keys, less quarantine). */
  allowed: boolean[][];
  /** Share of a layer's fetches a trimmed layer still makes: (k − 1)/k. */
  trimShare: number;
}

export interface PlanMove {
  layer: number;
  from: number;
  to: number;
  secondsSaved: number;
  accuracyCost: number;
}

export interface PlannerOutput {
  /** [layer]: the level, or a drop rung below 0 (TRIM, SKIP_MOE; drop.ts turns them into a plan). */
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

/**
 * Accuracy cost of layer `l` at `level` (a drop rung below 0): a trimmed layer costs its floor
 * level's and the trim's, a skipped one the skip's alone (its experts are not used at all).
 */
export function layerCost(sensitivity: number[][], l: number, level: number, floor?: number[], drop?: DropInput): number {
  if (level >= 0) return sensitivity[l][level];
  if (!drop || !floor) throw new RangeError(`planner: layer ${l} at drop rung ${level} without drop sensitivities`);
  return level === TRIM ? sensitivity[l][floor[l]] + drop.sensitivity[l][0] : drop.sensitivity[l][1];
}

/** Predicted loss of `levels`: the sum of each layer's sensitivity at its level (drop rungs: layerCost). */
export function predictLoss(sensitivity: number[][], levels: number[], floor?: number[], drop?: DropInput): number {
  return levels.reduce((s, lv, l) => s + layerCost(sensitivity, l, lv, floor, drop), 0);
}

/** Bytes one step moves for layer `l` per fetch at `level` (a trimmed layer: its share of the floor's). */
function bytesAt(x: PlannerInput, l: number, level: number): number {
  if (level >= 0) return x.levelBytes[l][level];
  return level === TRIM ? (x.drop?.trimShare ?? 1) * x.levelBytes[l][x.floor[l]] : 0;
}

/** Predicted decode-step seconds of `levels`. */
export function predictSeconds(x: PlannerInput, levels: number[]): number {
  let t = x.computeSeconds;
  levels.forEach((lv, l) => {
    const share = lv >= 0 ? 1 : lv === TRIM ? (x.drop?.trimShare ?? 1) : 0;
    t += share * x.fetchesPerToken[l] * x.overhead + x.fetchesPerToken[l] * bytesAt(x, l, lv) / x.bandwidth;
  });
  return t;
}

/** The next drop rung below `from` that layer `l` may take, or none. */
function nextDrop(x: PlannerInput, l: number, from: number): number | undefined {
  const a = x.drop?.allowed[l];
  if (!a) return undefined;
  if (from >= 0) return a[0] ? TRIM : a[1] ? SKIP_MOE : undefined;
  return from === TRIM && a[1] ? SKIP_MOE : undefined;
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
  if (x.drop) {
    same('drop.sensitivity', x.drop.sensitivity);
    same('drop.allowed', x.drop.allowed);
    if (!(x.drop.trimShare >= 0 && x.drop.trimShare <= 1)) throw new RangeError(`planner: drop.trimShare must be in [0, 1], got ${x.drop.trimShare}`);
  }
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
  const cost = (l: number, lv: number) => layerCost(x.sensitivity, l, lv, x.floor, x.drop);
  while (t > target) {
    // Level moves first; a drop move only when no level move is left anywhere.
    let best: PlanMove | undefined;
    let bestDrop: PlanMove | undefined;
    let bestRatio = Infinity;
    let bestDropRatio = Infinity;
    for (let l = 0; l < levels.length; l++) {
      const from = levels[l];
      const isDrop = from <= x.floor[l];
      const to = isDrop ? nextDrop(x, l, from) : from - 1;
      if (to === undefined) continue;
      const bytesSaved = x.fetchesPerToken[l] * (bytesAt(x, l, from) - bytesAt(x, l, to));
      if (!(bytesSaved > 0)) continue;
      const c = Math.max(0, cost(l, to) - cost(l, from));
      // Ranked per byte, not per second: the same number whatever the bandwidth (see above).
      const ratio = c / bytesSaved;
      const move = { layer: l, from, to, secondsSaved: bytesSaved / x.bandwidth, accuracyCost: c };
      if (!isDrop && ratio < bestRatio) {
        bestRatio = ratio;
        best = move;
      } else if (isDrop && ratio < bestDropRatio) {
        bestDropRatio = ratio;
        bestDrop = move;
      }
    }
    best ??= bestDrop;
    if (!best) break;
    // The sequence stops here rather than skipping to a cheaper later move, so every plan is still
    // a prefix of the one sequence (the monotonicity above holds with a budget too).
    const after = loss + cost(best.layer, best.to) - cost(best.layer, best.from);
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
