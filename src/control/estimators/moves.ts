/**
 * Experts moved over the link per decode step, per layer, as a pure reducer: every transfer
 * counts (prefetches too), and at each decode step the count since the last one updates an
 * exponentially weighted mean per layer. What the planner multiplies a level's bytes by.
 *
 * A decode step is a step with no prompt tokens, whatever its batch: its moves are the union of
 * its sequences' experts (each expert moved once serves every sequence routed to it), so the
 * count is per step, not per sequence, and follows the batch being served as it grows or shrinks.
 * A step carrying a prefill chunk (alone or with decode tokens) only clears the count: a chunk
 * routes its many tokens to many experts, which is no decode step's cost; what that costs the
 * steps clients wait on shows in the model's error (model-error.ts), paired with those steps.
 *
 * Why moves and not misses: with prefetch on, a predicted expert is a hit when its layer asks
 * for it, but its bytes still crossed the link (and a mispredicted one crossed for nothing). On a
 * fast link that traffic hides behind compute; on a slow one the link is the step's bottleneck
 * and every byte on it counts. Planning on misses alone under-predicted slow-link steps by 2×.
 *
 * The same reducer counts a decode step's tier-A lookups per layer (demand lookups, prefetch
 * excluded): the distinct experts the step's batch asks each layer for, which the planner's
 * capacity model multiplies by a plan's capacity miss share (planner.ts).
 *
 * @example
 * let s = movesInit(8);  s = movesTransfer(s, 3);  s = movesStep(s, { prefillTokens: 0 });
 * movesPerToken(s, 3);   // 1 after the first decode step, then an EWMA
 */

export interface MovesState {
  readonly alpha: number;
  /** EWMA of moves per decode step per layer (the name predates batches: per step); NaN before the first decode step. */
  readonly perToken: readonly number[];
  /** Moves since the last token sample. */
  readonly pending: readonly number[];
  /** EWMA of demand lookups per decode step per layer (NaN before the first), and those since the last token sample. */
  readonly lookups: readonly number[];
  readonly pendingLookups: readonly number[];
}

export function movesInit(layers: number, alpha = 0.05): MovesState {
  if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`moves alpha must be in (0, 1], got ${alpha}`);
  const none = () => new Array<number>(layers).fill(0);
  return { alpha, perToken: new Array<number>(layers).fill(NaN), pending: none(), lookups: new Array<number>(layers).fill(NaN), pendingLookups: none() };
}

export function movesTransfer(s: MovesState, layer: number): MovesState {
  if (!(Number.isInteger(layer) && layer >= 0 && layer < s.pending.length)) return s;
  const pending = [...s.pending];
  pending[layer]++;
  return { ...s, pending };
}

/** A tier-A lookup (a cache sample): counted when it is a demand lookup, not a prefetch's guess. */
export function movesLookup(s: MovesState, c: { layer: number; tier: 'A' | 'B'; prefetch: boolean }): MovesState {
  if (c.tier !== 'A' || c.prefetch || !(Number.isInteger(c.layer) && c.layer >= 0 && c.layer < s.pendingLookups.length)) return s;
  const pendingLookups = [...s.pendingLookups];
  pendingLookups[c.layer]++;
  return { ...s, pendingLookups };
}

/**
 * A step's end (its TokenSample): a decode step (no prompt tokens, any batch) folds the pending
 * counts in; a step with a prefill chunk only clears them, since its moves are no decode step's cost.
 */
export function movesStep(s: MovesState, step: { prefillTokens: number }): MovesState {
  const cleared = new Array<number>(s.pending.length).fill(0);
  if (step.prefillTokens !== 0) return { ...s, pending: cleared, pendingLookups: cleared };
  const fold = (mean: readonly number[], pending: readonly number[]) => mean.map((old, l) => (Number.isNaN(old) ? pending[l] : old + s.alpha * (pending[l] - old)));
  return { ...s, perToken: fold(s.perToken, s.pending), pending: cleared, lookups: fold(s.lookups, s.pendingLookups), pendingLookups: cleared };
}

/** Moves per decode step of `layer` (for the whole batch), or NaN before the first decode step. */
export function movesPerToken(s: MovesState, layer: number): number {
  return s.perToken[layer] ?? NaN;
}

/** Demand lookups per decode step of `layer` (for the whole batch), or NaN before the first decode step. */
export function lookupsPerStep(s: MovesState, layer: number): number {
  return s.lookups[layer] ?? NaN;
}
