/**
 * The contract between the controller and the data plane: a ladder of precision levels every
 * expert is stored at, and a PrecisionPlan naming one level per layer. The controller writes
 * plans; offload reads the current one at every fetch.
 *
 * Levels: 0 .. bounds.length − 1 are the codec's ladder rungs, loosest first (rungs 0..k together
 * decode within bounds[k]); when the ladder has `exact`, level bounds.length is the expert's
 * original bytes, moved as they are (no compression: what plain bf16 offload moves).
 *
 * Drop rungs, looser than any level, ride beside the levels (plan.drop): `trim` runs a layer at
 * top-(k − 1) (each token's lowest-weight expert dropped, the rest renormalised: expert trimming
 * by routing) and `skip-moe` replaces the layer's MoE output by zero (layer drop). A trimmed
 * layer still fetches its experts at its level; a skipped one fetches nothing.
 */
import { ladderCuts, type BoundMode } from '../codec/index.js';

export interface Ladder {
  /** Rung bounds, loosest first, powers of two apart (read as boundMode says, per tensor). */
  bounds: number[];
  boundMode: BoundMode;
  /** Whether the original bytes are kept as a last, exact level. */
  exact: boolean;
}

/** σ-relative, 5 rungs from σ/2 to σ/32, and the exact bytes on top. */
export const DEFAULT_LADDER: Ladder = { bounds: [0.5, 0.25, 0.125, 0.0625, 0.03125], boundMode: 'sigma', exact: true };

export interface PrecisionPlan {
  /** Increases with every new plan, so telemetry and logs can say which plan a fetch used. */
  version: number;
  /** levels[layer]: the level that layer's experts are fetched at. */
  levels: number[];
  /** drop[layer]: a drop rung the layer runs at (absent, or 'none' everywhere: no dropping). */
  drop?: DropState[];
}

/** The drop rungs, tightest first: trim (top-k − 1), then skip-moe (no MoE output). */
export const DROP_RUNGS = ['trim', 'skip-moe'] as const;
export type DropRung = (typeof DROP_RUNGS)[number];
export type DropState = 'none' | DropRung;

/** The drop rung `layer` runs at under `plan`. */
export function dropOf(plan: PrecisionPlan, layer: number): DropState {
  return plan.drop?.[layer] ?? 'none';
}

/** Number of levels a ladder offers (its rungs, and the exact level when it has one). */
export function levelCount(l: Ladder): number {
  return l.bounds.length + (l.exact ? 1 : 0);
}

/** The level that holds the original bytes, or −1. */
export function exactLevel(l: Ladder): number {
  return l.exact ? l.bounds.length : -1;
}

/** Checks a ladder (the codec's rules for the rungs); throws a RangeError naming the problem. */
export function checkLadder(l: Ladder): void {
  ladderCuts(l.bounds); // powers of two apart, loosest first; throws a CodecError otherwise
  if (!['abs', 'rel', 'sigma'].includes(l.boundMode)) throw new RangeError(`ladder bound mode must be abs, rel or sigma, got ${String(l.boundMode)}`);
}

/** A plan with every layer at `level`. */
export function uniformPlan(numLayers: number, level: number, version = 0): PrecisionPlan {
  return { version, levels: new Array<number>(numLayers).fill(level) };
}

/** Checks a plan against a ladder and a depth; throws a RangeError naming the layer. */
export function checkPlan(plan: PrecisionPlan, ladder: Ladder, numLayers: number): void {
  if (plan.levels.length !== numLayers) throw new RangeError(`a plan names ${plan.levels.length} layers; the model has ${numLayers}`);
  const n = levelCount(ladder);
  plan.levels.forEach((lv, layer) => {
    if (!Number.isInteger(lv) || lv < 0 || lv >= n) throw new RangeError(`plan: layer ${layer} level ${lv} is not one of 0..${n - 1}`);
  });
  if (plan.drop === undefined) return;
  if (plan.drop.length !== numLayers) throw new RangeError(`a plan's drop names ${plan.drop.length} layers; the model has ${numLayers}`);
  plan.drop.forEach((d, layer) => {
    if (d !== 'none' && !(DROP_RUNGS as readonly string[]).includes(d)) throw new RangeError(`plan: layer ${layer} drop ${String(d)} is not one of none, ${DROP_RUNGS.join(', ')}`);
  });
}

/** A stable key of a ladder, for cache file names. */
export function ladderKey(l: Ladder): string {
  return `${l.boundMode}:${l.bounds.map((b) => b.toExponential(6)).join(',')}${l.exact ? ':exact' : ''}`;
}
