/**
 * f16 and bf16 conversions in TypeScript (Node 20 has no Float16Array). Written independently of
 * the addon's C++ so tests can check one against the other; also what checkpoint loading uses.
 * f32 → half rounds to nearest even; NaN stays NaN; overflow gives ±Inf.
 *
 * @example
 * bf16BitsToF32(f32ToBf16Bits(0.1)) // 0.10009765625
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The f32 value of bf16 bits. */
export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

/** bf16 bits of the f32 nearest to x, rounded to nearest even. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The f32 value of f16 bits. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** f16 bits of x (first rounded to f32), rounded to nearest even. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const v = f32[0];
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundHalfEven(a / 2 ** -24); // subnormal (may round up to 0x400)
  const e = Math.floor(Math.log2(a));
  let exp = e;
  // log2 can be off by one at powers of two: fix exp so that 1 <= a / 2^exp < 2.
  if (a / 2 ** exp >= 2) exp++;
  if (a / 2 ** exp < 1) exp--;
  const mant = roundHalfEven((a / 2 ** exp - 1) * 1024);
  return sign | (((exp + 15) << 10) + mant); // a mantissa carry moves into the exponent
}

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Half the gap between `v` (an f32 value) and the next larger value of its dtype: the most
 * rounding to that dtype can move a value that rounds to `v`. */
export function halfUlp(v: number, dtype: 'f16' | 'bf16' | 'f32'): number {
  if (!Number.isFinite(v)) return 0;
  f32[0] = Math.abs(v);
  const biased = (u32[0] >>> 23) & 0xff;
  const exp = biased === 0 ? -126 : biased - 127; // exact, read from the bits
  const [mantBits, minExp] = dtype === 'bf16' ? [7, -126] : dtype === 'f16' ? [10, -14] : [23, -126];
  return 2 ** (Math.max(exp, minExp) - mantBits) / 2;
}
