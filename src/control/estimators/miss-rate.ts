/**
 * Experts fetched over the link per decode token, per layer, as a pure reducer: each tier-A
 * lookup a layer makes (prefetch lookups excluded: they are guesses, not needs) counts a miss or
 * a hit, and the rate is an exponentially weighted mean of the miss indicator, times the lookups
 * a layer makes per token. The planner multiplies it by a rung's bytes to cost a layer's level.
 *
 * @example
 * let s = missInit(8);  s = missStep(s, { layer: 3, tier: 'A', result: 'miss', prefetch: false });
 * missRate(s, 3);   // share of layer 3's lookups that missed (EWMA)
 */

export interface MissState {
  readonly alpha: number;
  /** EWMA of the miss indicator per layer; NaN before the layer's first lookup. */
  readonly rate: readonly number[];
  readonly lookups: readonly number[];
}

export function missInit(layers: number, alpha = 0.05): MissState {
  if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`miss-rate alpha must be in (0, 1], got ${alpha}`);
  return { alpha, rate: new Array<number>(layers).fill(NaN), lookups: new Array<number>(layers).fill(0) };
}

export function missStep(s: MissState, c: { layer: number; tier: 'A' | 'B'; result: 'hit' | 'miss'; prefetch: boolean }): MissState {
  if (c.tier !== 'A' || c.prefetch || !(c.layer >= 0 && c.layer < s.rate.length)) return s;
  const x = c.result === 'miss' ? 1 : 0;
  const rate = [...s.rate];
  const old = rate[c.layer];
  rate[c.layer] = Number.isNaN(old) ? x : old + s.alpha * (x - old);
  const lookups = [...s.lookups];
  lookups[c.layer]++;
  return { ...s, rate, lookups };
}

/** Share of `layer`'s lookups that missed (`prior` before its first lookup). */
export function missRate(s: MissState, layer: number, prior = 1): number {
  const r = s.rate[layer];
  return Number.isNaN(r) ? prior : r;
}
