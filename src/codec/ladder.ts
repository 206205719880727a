import { CodecError } from './errors.js';

/**
 * The bounds of a ladder of `rungs` rungs whose finest is `finest`, loosest first, each twice the
 * next: ladderBounds(1e-3, 4) → [8e-3, 4e-3, 2e-3, 1e-3].
 */
export function ladderBounds(finest: number, rungs: number): number[] {
  if (!Number.isInteger(rungs) || rungs < 1 || rungs > 16) {
    throw new CodecError('BAD_LADDER', `a ladder has 1..16 rungs, got ${rungs}`);
  }
  return Array.from({ length: rungs }, (_, k) => finest * 2 ** (rungs - 1 - k));
}

/**
 * Turns rung bounds (loosest first) into the bit-planes each rung leaves out. Rungs must be powers
 * of two apart: dropping p planes of the finest quantization is what gives a rung its bound
 * (2^p · finest) for free, without re-quantizing (FORMAT.md, "Rungs").
 */
export function ladderCuts(bounds: number[]): number[] {
  if (!Array.isArray(bounds) || bounds.length < 1 || bounds.length > 16) {
    throw new CodecError('BAD_LADDER', `a ladder has 1..16 rungs, got ${Array.isArray(bounds) ? bounds.length : typeof bounds}`);
  }
  const finest = bounds[bounds.length - 1];
  if (!(finest > 0) || !Number.isFinite(finest)) {
    throw new CodecError('BAD_BOUND', `error bound must be a positive finite number, got ${finest}`);
  }
  return bounds.map((b, k) => {
    const p = Math.log2(b / finest);
    const rounded = Math.round(p);
    if (!Number.isFinite(p) || Math.abs(p - rounded) > 1e-9 || rounded < 0 || rounded > 21) {
      throw new CodecError(
        'BAD_LADDER',
        `rung ${k}: bound ${b} is not a power of two (1..2^21) times the finest bound ${finest}`,
      );
    }
    if (k > 0 && rounded >= Math.round(Math.log2(bounds[k - 1] / finest))) {
      throw new CodecError('BAD_LADDER', `rung ${k}: bounds must decrease from rung to rung, loosest first`);
    }
    return rounded;
  });
}
