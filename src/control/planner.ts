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
 * Tier A's capacity (PlannerInput.capacity): the fetches measured are those of the plan being
 * served, and a tighter plan's experts are larger, so fewer of them stay in tier A and more miss.
 * With the capacity, a layer's fetches at any plan are the ones its capacity does not explain
 * (measured, less its lookups × the measured plan's capacity miss share) plus its lookups × that
 * plan's miss share: 1 − C / W, tier A's bytes over the bytes the plan's experts would hold, every
 * expert of every layer counted (a trained router balances its load, so every expert is used over
 * time), and 0 while they fit. For uniform independent lookups an LRU cache of C out of W bytes
 * hits C / W of them. Without it, a controller on the OLMoE shape tightened four layers to exact
 * (4× a σ/4 rung), tier A thrashed, and one client's tokens/s fell from 6 to 0.13.
 *
 * Why greedy is safe here: a move is ranked by the bytes a step would no longer move (the
 * capacity's effect on every layer included) per accuracy it costs, which does not depend on the
 * bandwidth, so a plan is always a prefix of one fixed sequence of moves. Lower bandwidth or a
 * tighter SLA only takes more of the sequence: lower bandwidth never gives a tighter plan, and a
 * looser SLA never a looser one.
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
  /** Tier A's capacity (none: fetches do not depend on the plan). */
  capacity?: TierACapacity;
}

/** What the planner needs to know of tier A to predict a plan's capacity misses. */
export interface TierACapacity {
  /** Tier A's bytes: one budget every layer shares, or per layer (the profile's experts_by_layer). */
  bytes: number;
  layerBytes?: number[];
  /** [layer][level]: bytes one expert holds in tier A at that level. */
  heldBytes: number[][];
  /** Experts per layer. */
  experts: number;
  /** [layer]: distinct experts a step looks up in the layer (measured: a step's union over its batch). */
  lookupsPerStep: number[];
  /** The plan the fetches were measured at (the planner's scale). */
  measuredAt: number[];
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

/**
 * [layer]: the share of its lookups that tier A cannot hold at `levels`: 1 − C / W, C its bytes
 * (the layer's share of them, when split) and W what the plan's experts would hold (a trimmed
 * layer's at its floor, a skipped one's nothing); 0 while they fit.
 */
export function capacityMissShare(x: PlannerInput, levels: number[]): number[] {
  const c = x.capacity;
  if (!c) return levels.map(() => 0);
  const held = levels.map((lv, l) => (lv === SKIP_MOE ? 0 : c.experts * c.heldBytes[l][lv >= 0 ? lv : x.floor[l]]));
  const share = (capacity: number, wanted: number) => (wanted > capacity ? 1 - capacity / wanted : 0);
  if (c.layerBytes) return held.map((w, l) => share(c.layerBytes![l], w));
  const all = share(c.bytes, held.reduce((a, w) => a + w, 0));
  return levels.map(() => all);
}

/**
 * [layer]: experts a step moves at `levels` (a trimmed layer: before its (k − 1)/k share): the
 * measured fetches, corrected for the capacity misses `levels` would have instead of the
 * measured plan's.
 */
export function fetchesAt(x: PlannerInput, levels: number[]): number[] {
  const c = x.capacity;
  if (!c) return x.fetchesPerToken;
  const then = capacityMissShare(x, c.measuredAt);
  const now = capacityMissShare(x, levels);
  return x.fetchesPerToken.map((f, l) => Math.max(0, f - c.lookupsPerStep[l] * then[l]) + c.lookupsPerStep[l] * now[l]);
}

/** Bytes a step moves at `levels`. */
function stepBytes(x: PlannerInput, levels: number[], fetches = fetchesAt(x, levels)): number {
  return levels.reduce((s, lv, l) => s + fetches[l] * bytesAt(x, l, lv), 0);
}

/** Predicted decode-step seconds of `levels`. */
export function predictSeconds(x: PlannerInput, levels: number[]): number {
  const fetches = fetchesAt(x, levels);
  let t = x.computeSeconds + stepBytes(x, levels, fetches) / x.bandwidth;
  levels.forEach((lv, l) => {
    const share = lv >= 0 ? 1 : lv === TRIM ? (x.drop?.trimShare ?? 1) : 0;
    t += share * fetches[l] * x.overhead;
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
  const c = x.capacity;
  if (c) {
    same('capacity.heldBytes', c.heldBytes);
    same('capacity.lookupsPerStep', c.lookupsPerStep);
    same('capacity.measuredAt', c.measuredAt);
    if (c.layerBytes) same('capacity.layerBytes', c.layerBytes);
    if (!(c.bytes >= 0) || !(c.experts >= 1)) throw new RangeError(`planner: capacity needs bytes ≥ 0 and experts ≥ 1, got ${c.bytes} and ${c.experts}`);
    c.heldBytes.forEach((row, l) => {
      if (row.length !== x.levelBytes[l].length) throw new RangeError(`planner: layer ${l} has ${x.levelBytes[l].length} levels of bytes but ${row.length} of held bytes`);
    });
  }
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
  let bytes = stepBytes(x, levels);
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
      levels[l] = to;
      const bytesSaved = bytes - stepBytes(x, levels);
      levels[l] = from;
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
    bytes = stepBytes(x, levels);
  }
  return { levels, predictedSeconds: t, targetSeconds: target, meetsTarget: t <= target, predictedLoss: loss, stoppedByBudget, moves };
}
