/**
 * Bulk conversions between checkpoint dtypes and Float32Array, for whole tensors. The scalar
 * versions in halfs.ts beside this file are the reference (the tests compare every bit pattern); these
 * are the fast paths: f16 → f32 through a 64K lookup table built once, bf16 → f32 by shifting into
 * a Uint32Array view of the output, f32 → bf16 by integer round-to-nearest-even.
 *
 * Byte order: safetensors is little-endian and so are the typed-array views used here, so the
 * module refuses to load on a big-endian host rather than return garbage.
 *
 * @example
 * const w = decodeTensor(bytes, 'BF16');            // Float32Array
 * const back = encodeTensor(w, 'BF16');             // Uint8Array, bit-identical to `bytes`
 */
import os from 'node:os';

import { f16BitsToF32, f32ToF16Bits } from './halfs.js';

/** A checkpoint's element types, as safetensors spells them. */
export type TensorDtype = 'F32' | 'F16' | 'BF16';

if (os.endianness() !== 'LE') throw new Error('ebserve reads safetensors through little-endian typed arrays; this host is big-endian');

/** Bytes per element of each checkpoint dtype. */
export const DTYPE_BYTES: Readonly<Record<TensorDtype, number>> = { F32: 4, F16: 2, BF16: 2 };

let f16Table: Float32Array | undefined;

/** The f32 value of every f16 bit pattern, built on first use (256 KiB). */
function f16Lut(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

/** f16 bit patterns → f32 values. */
export function f16ToF32(src: Uint16Array): Float32Array {
  const lut = f16Lut();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = lut[src[i]];
  return out;
}

/** bf16 bit patterns → f32 values (exact: bf16 is the top half of an f32). */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

/** f32 values → bf16 bit patterns, rounded to nearest even; NaN stays NaN (quiet). */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const u = bits[i];
    out[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** f32 values → f16 bit patterns, rounded to nearest even (scalar path: the writer's, not hot). */
export function f32ToF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32ToF16Bits(src[i]);
  return out;
}

/** A Uint16Array over `bytes`, viewing them when aligned and copying when not. */
function u16View(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
  // A copy to an aligned buffer. Not bytes.slice(): on a Node Buffer that is a view, not a copy.
  return new Uint16Array(new Uint8Array(bytes).buffer, 0, bytes.byteLength >> 1);
}

/** Stored little-endian bytes of `dtype` → a fresh Float32Array of the values. */
export function decodeTensor(bytes: Uint8Array, dtype: TensorDtype): Float32Array {
  if (bytes.byteLength % DTYPE_BYTES[dtype] !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  }
  switch (dtype) {
    case 'F32': {
      const out = new Float32Array(bytes.byteLength >> 2);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    case 'F16':
      return f16ToF32(u16View(bytes));
    case 'BF16':
      return bf16ToF32(u16View(bytes));
  }
}

/** Float32 values → the little-endian bytes of `dtype` (rounded to nearest even for halves). */
export function encodeTensor(values: Float32Array, dtype: TensorDtype): Uint8Array {
  switch (dtype) {
    case 'F32':
      return new Uint8Array(values.slice().buffer);
    case 'F16':
      return new Uint8Array(f32ToF16(values).buffer);
    case 'BF16':
      return new Uint8Array(f32ToBf16(values).buffer);
  }
}
