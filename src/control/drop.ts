/**
 * Plans with drop rungs on one scale: the controller and the planner read a layer's state as one
 * number — its level (0 … the exact level), or below the loosest level a drop rung (−1 trim, −2
 * skip-moe, planner.ts) — so "looser" stays "a smaller number"; the data plane reads a
 * PrecisionPlan, whose levels stay levels and whose drop field names the rungs. These convert.
 *
 * @example
 * scaleOf({ version: 3, levels: [5, 0], drop: ['none', 'trim'] })   // [5, −1]
 * planOf([5, −1], [0, 0], 4)   // { version: 4, levels: [5, 0], drop: ['none', 'trim'] }
 */
import type { DropState, PrecisionPlan } from '../offload/plan.js';
import { SKIP_MOE, TRIM } from './planner.js';

/** A plan's layers on the one scale. */
export function scaleOf(plan: PrecisionPlan): number[] {
  return plan.levels.map((lv, l) => {
    const d = plan.drop?.[l] ?? 'none';
    return d === 'trim' ? TRIM : d === 'skip-moe' ? SKIP_MOE : lv;
  });
}

/** The drop state a point of the scale stands for. */
export function dropAt(level: number): DropState {
  return level === TRIM ? 'trim' : level === SKIP_MOE ? 'skip-moe' : 'none';
}

/**
 * The plan a scale stands for: a dropped layer is fetched (trim) at its floor, the loosest level
 * it may take. The drop field is present only when some layer drops, so plans without dropping
 * read exactly as they did.
 */
export function planOf(scale: number[], floor: number[], version: number): PrecisionPlan {
  const levels = scale.map((lv, l) => (lv < 0 ? floor[l] : lv));
  return scale.some((lv) => lv < 0) ? { version, levels, drop: scale.map(dropAt) } : { version, levels };
}

/** A point of the scale in words, for logs: a level's number, or the drop rung's name. */
export function scaleLabel(level: number): string {
  return level < 0 ? dropAt(level) : String(level);
}
