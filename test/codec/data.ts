// Test data for the codec: seeded, so a failure names a case that can be replayed.
import { f32ToBf16Bits, f32ToF16Bits, bf16BitsToF32, f16BitsToF32 } from '../../src/codec/halfs.js';
import type { DType } from '../../src/codec/index.js';

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussian(n: number, sigma: number, seed = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = r() || 1e-12;
    const v = r();
    const m = Math.sqrt(-2 * Math.log(u)) * sigma;
    out[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** The distributions the bound must hold on, by name; `eb` lets some sit on the quantizer's grid. */
export function distribution(name: string, n: number, eb: number, seed = 7): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(n);
  switch (name) {
    case 'gaussian-0.005': return gaussian(n, 0.005, seed);
    case 'gaussian-0.02': return gaussian(n, 0.02, seed);
    case 'gaussian-0.05': return gaussian(n, 0.05, seed);
    case 'uniform':
      for (let i = 0; i < n; i++) x[i] = (r() - 0.5) * 0.2;
      return x;
    case 'heavy-tailed': // Cauchy: most values small, a few enormous (escapes)
      for (let i = 0; i < n; i++) x[i] = 0.01 * Math.tan(Math.PI * (r() - 0.5));
      return x;
    case 'zeros':
      return x;
    case 'constant':
      return x.fill(0.0371);
    case 'midpoints': // exactly on the boundary between two quantization bins
      for (let i = 0; i < n; i++) x[i] = (2 * Math.floor((r() - 0.5) * 200) + 1) * eb;
      return x;
    case 'negative-zero':
      return x.fill(-0);
    case 'subnormals':
      for (let i = 0; i < n; i++) x[i] = (r() - 0.5) * 2e-39;
      return x;
    case 'specials': // NaN, ±Inf and values past the quantizer's range, among Gaussian values
      x.set(gaussian(n, 0.02, seed));
      for (let i = 0; i < n; i += 7) x[i] = [NaN, Infinity, -Infinity, 3e38, -1e30, 1e6][i % 6];
      return x;
    default:
      throw new Error(`unknown distribution ${name}`);
  }
}

export const DISTRIBUTIONS = [
  'gaussian-0.005', 'gaussian-0.02', 'gaussian-0.05', 'uniform', 'heavy-tailed', 'zeros', 'constant',
  'midpoints', 'negative-zero', 'subnormals', 'specials',
];

/** `x` in `dtype`: the values to hand the codec, and the f32 values they stand for. */
export function asDtype(x: Float32Array, dtype: DType): { input: Float32Array | Uint16Array; values: Float32Array } {
  if (dtype === 'f32') return { input: x, values: x };
  const bits = new Uint16Array(x.length);
  const values = new Float32Array(x.length);
  const [to, from] = dtype === 'bf16' ? [f32ToBf16Bits, bf16BitsToF32] : [f32ToF16Bits, f16BitsToF32];
  for (let i = 0; i < x.length; i++) {
    bits[i] = to(x[i]);
    values[i] = from(bits[i]);
  }
  return { input: bits, values };
}
