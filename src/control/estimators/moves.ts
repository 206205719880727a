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
}

export function movesInit(layers: number, alpha = 0.05): MovesState {
  if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`moves alpha must be in (0, 1], got ${alpha}`);
  return { alpha, perToken: new Array<number>(layers).fill(NaN), pending: new Array<number>(layers).fill(0) };
}

export function movesTransfer(s: MovesState, layer: number): MovesState {
  if (!(Number.isInteger(layer) && layer >= 0 && layer < s.pending.length)) return s;
  const pending = [...s.pending];
  pending[layer]++;
  return { ...s, pending };
}

/**
 * A step's end (its TokenSample): a decode step (no prompt tokens, any batch) folds the pending
 * counts in; a step with a prefill chunk only clears them, since its moves are no decode step's cost.
 */
export function movesStep(s: MovesState, step: { prefillTokens: number }): MovesState {
  const cleared = new Array<number>(s.pending.length).fill(0);
  if (step.prefillTokens !== 0) return { ...s, pending: cleared };
  const perToken = s.perToken.map((old, l) => (Number.isNaN(old) ? s.pending[l] : old + s.alpha * (s.pending[l] - old)));
  return { ...s, perToken, pending: cleared };
}

/** Moves per decode step of `layer` (for the whole batch), or NaN before the first decode step. */
export function movesPerToken(s: MovesState, layer: number): number {
  return s.perToken[layer] ?? NaN;
}
