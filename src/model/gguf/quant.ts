/**
 * ggml's block quantizations, as float32 ⇄ bytes. Q8_0 and Q4_0 are written (export) and read;
 * Q4_1, Q5_0 and Q5_1 are read only (and the K-quants, quant-k.ts); F32, F16 and BF16 convert elementwise. The layouts and the
 * rounding follow ggml-quants.c's reference functions (quantize_row_q8_0_ref,
 * quantize_row_q4_0_ref, dequantize_row_*), so a file written here holds the bytes llama.cpp's own
 * quantizer would write for the same float32 values.
 *
 *   Q8_0 block (32 values, 34 bytes): f16 d = max|x| / 127 · i8 q[32] = round(x / d)
 *   Q4_0 block (32 values, 18 bytes): f16 d = x_m / −8 where x_m is the value of largest |x|
 *        (the first one on a tie) · u8 q[16]: low nibble = value j, high nibble = value j + 16,
 *        each min(15, trunc(x / d + 8.5)); decoded as (nibble − 8) · d
 *   Q4_1 (20 bytes): f16 d, f16 m, nibbles as Q4_0 without the −8, decoded nibble · d + m
 *   Q5_0 (22 bytes): f16 d, u32 qh (the fifth bits), nibbles; decoded (5-bit − 16) · d
 *   Q5_1 (24 bytes): f16 d, f16 m, u32 qh, nibbles; decoded 5-bit · d + m
 * round() is C's roundf (half away from zero); d is computed in float32 and stored as f16 (round
 * to nearest even), the inverse taken from the float32 d, as ggml does.
 *
 * @example
 * const bytes = quantize(values, GgmlType.Q8_0);     // values.length a multiple of 32
 * const back = dequantize(bytes, GgmlType.Q8_0, values.length);
 */
import { f16ToF32, f32ToF16, bf16ToF32, f32ToBf16 } from '../../codec/halfs-array.js';
import { GGML_BLOCKS, GgmlType, ggmlTypeName } from './format.js';
import { dequantizeK, K_TYPES } from './quant-k.js';

/** The ggml types dequantize() turns into float32. */
export const DECODED_TYPES: ReadonlySet<number> = new Set([GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, ...K_TYPES]);

/** The ggml types quantize() writes. */
export type WrittenType = GgmlType.F32 | GgmlType.F16 | GgmlType.BF16 | GgmlType.Q8_0 | GgmlType.Q4_0;

const f16Scratch = new Uint16Array(1);
const f32Scratch = new Float32Array(1);
function toF16Bits(x: number): number {
  f32Scratch[0] = x;
  return f32ToF16(f32Scratch)[0];
}
function f16Value(bits: number): number {
  f16Scratch[0] = bits;
  return f16ToF32(f16Scratch)[0];
}

/** C's roundf: halves away from zero (Math.round rounds them up). */
function roundf(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/** Bytes of `n` values of `type` (n a multiple of its block). */
export function typeBytes(type: number, n: number): number {
  const t = GGML_BLOCKS[type];
  if (!t || n % t.block !== 0) throw new RangeError(`${n} values is not a whole number of ${ggmlTypeName(type)} blocks`);
  return (n / t.block) * t.bytes;
}

/** float32 values → the bytes of `type`. */
export function quantize(x: Float32Array, type: WrittenType): Uint8Array {
  switch (type) {
    case GgmlType.F32:
      return new Uint8Array(x.slice().buffer);
    case GgmlType.F16:
      return new Uint8Array(f32ToF16(x).buffer);
    case GgmlType.BF16:
      return new Uint8Array(f32ToBf16(x).buffer);
    case GgmlType.Q8_0:
      return quantizeQ8_0(x);
    case GgmlType.Q4_0:
      return quantizeQ4_0(x);
  }
}

function quantizeQ8_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array(typeBytes(GgmlType.Q8_0, x.length));
  const view = new DataView(out.buffer);
  for (let b = 0, o = 0; b < x.length; b += 32, o += 34) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]));
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    view.setUint16(o, toF16Bits(d), true);
    for (let j = 0; j < 32; j++) view.setInt8(o + 2 + j, roundf(Math.fround(x[b + j] * id)));
  }
  return out;
}

function quantizeQ4_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array(typeBytes(GgmlType.Q4_0, x.length));
  const view = new DataView(out.buffer);
  for (let b = 0, o = 0; b < x.length; b += 32, o += 18) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[b + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d ? Math.fround(1 / d) : 0;
    view.setUint16(o, toF16Bits(d), true);
    for (let j = 0; j < 16; j++) {
      // (int8_t)(x·id + 8.5f) truncates toward zero; x·id + 8.5 ≥ 0.5 here, so trunc = floor.
      const q0 = Math.min(15, Math.trunc(Math.fround(Math.fround(x[b + j] * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(Math.fround(Math.fround(x[b + 16 + j] * id) + 8.5)));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

/** The bytes of `n` values of `type` → float32 (throws for a type not in DECODED_TYPES). */
export function dequantize(bytes: Uint8Array, type: number, n: number): Float32Array {
  const need = typeBytes(type, n);
  if (bytes.byteLength < need) throw new RangeError(`${ggmlTypeName(type)}: ${n} values need ${need} bytes, got ${bytes.byteLength}`);
  if (K_TYPES.has(type)) return dequantizeK(bytes, type, n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, need);
  const out = new Float32Array(n);
  switch (type) {
    case GgmlType.F32:
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    case GgmlType.F16:
    case GgmlType.BF16: {
      const h = new Uint16Array(n);
      for (let i = 0; i < n; i++) h[i] = view.getUint16(2 * i, true);
      return type === GgmlType.F16 ? f16ToF32(h) : bf16ToF32(h);
    }
    case GgmlType.Q8_0:
      for (let b = 0, o = 0; b < n; b += 32, o += 34) {
        const d = f16Value(view.getUint16(o, true));
        for (let j = 0; j < 32; j++) out[b + j] = view.getInt8(o + 2 + j) * d;
      }
      return out;
    case GgmlType.Q4_0:
    case GgmlType.Q4_1: {
      const size = type === GgmlType.Q4_0 ? 18 : 20;
      const qs = type === GgmlType.Q4_0 ? 2 : 4;
      for (let b = 0, o = 0; b < n; b += 32, o += size) {
        const d = f16Value(view.getUint16(o, true));
        const m = type === GgmlType.Q4_1 ? f16Value(view.getUint16(o + 2, true)) : 0;
        const bias = type === GgmlType.Q4_0 ? -8 : 0;
        for (let j = 0; j < 16; j++) {
          const q = bytes[o + qs + j];
          out[b + j] = ((q & 0x0f) + bias) * d + m;
          out[b + 16 + j] = ((q >> 4) + bias) * d + m;
        }
      }
      return out;
    }
    case GgmlType.Q5_0:
    case GgmlType.Q5_1: {
      const size = type === GgmlType.Q5_0 ? 22 : 24;
      const h = type === GgmlType.Q5_0 ? 2 : 4;
      for (let b = 0, o = 0; b < n; b += 32, o += size) {
        const d = f16Value(view.getUint16(o, true));
        const m = type === GgmlType.Q5_1 ? f16Value(view.getUint16(o + 2, true)) : 0;
        const bias = type === GgmlType.Q5_0 ? -16 : 0;
        const qh = view.getUint32(o + h, true);
        for (let j = 0; j < 16; j++) {
          const q = bytes[o + h + 4 + j];
          const hi0 = ((qh >>> j) << 4) & 0x10;
          const hi1 = (qh >>> (j + 12)) & 0x10;
          out[b + j] = (((q & 0x0f) | hi0) + bias) * d + m;
          out[b + 16 + j] = (((q >> 4) | hi1) + bias) * d + m;
        }
      }
      return out;
    }
    default:
      throw new RangeError(`ggml type ${ggmlTypeName(type)} cannot be dequantized here`);
  }
}
