/**
 * Experts moved over the link per decode token, per layer, as a pure reducer: every transfer
 * counts (prefetches too), and at each decode step the count since the last one updates an
 * exponentially weighted mean per layer. What the planner multiplies a level's bytes by.
 *
 * Why moves and not misses: with prefetch on, a predicted expert is a hit when its layer asks
 * for it, but its bytes still crossed the link (and a mispredicted one crossed for nothing). On a
 * fast link that traffic hides behind compute; on a slow one the link is the step's bottleneck
 * and every byte on it counts. Planning on misses alone under-predicted slow-link steps by 2×.
 *
 * @example
 * let s = movesInit(8);  s = movesTransfer(s, 3);  s = movesToken(s, 1);
 * movesPerToken(s, 3);   // 1 after the first decode step, then an EWMA
 */

export interface MovesState {
  readonly alpha: number;
  /** EWMA of moves per decode step per layer; NaN before the first decode step. */
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
 * A token sample: a decode step (tokens = 1) folds the pending counts in; a prefill (many tokens
 * at once) only clears them, since its moves are no decode step's cost.
 */
export function movesToken(s: MovesState, tokens: number): MovesState {
  const cleared = new Array<number>(s.pending.length).fill(0);
  if (tokens !== 1) return { ...s, pending: cleared };
  const perToken = s.perToken.map((old, l) => (Number.isNaN(old) ? s.pending[l] : old + s.alpha * (s.pending[l] - old)));
  return { ...s, perToken, pending: cleared };
}

/** Moves per decode step of `layer`, or NaN before the first decode step. */
export function movesPerToken(s: MovesState, layer: number): number {
  return s.perToken[layer] ?? NaN;
}
