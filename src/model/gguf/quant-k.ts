/**
 * ggml's K-quantizations (256-value super-blocks), read only: dequantize_row_q{2,3,4,5,6}_K of
 * ggml-quants.c, so that the files most users hold (Q4_K_M mixes Q4_K and Q6_K) load, dequantized
 * to float32. Layouts (bytes per 256 values):
 *
 *   Q2_K (84):  u8 scales[16] (low nibble scale, high nibble min) · u8 qs[64] (2-bit) · f16 d · f16 dmin
 *   Q3_K (110): u8 hmask[32] (third bit) · u8 qs[64] (2-bit) · u8 scales[12] (16 × 6-bit, −32) · f16 d
 *   Q4_K (144): f16 d · f16 dmin · u8 scales[12] (8 × 6-bit scale + 8 × 6-bit min) · u8 qs[128]
 *   Q5_K (176): f16 d · f16 dmin · u8 scales[12] · u8 qh[32] (fifth bit) · u8 qs[128]
 *   Q6_K (210): u8 ql[128] (low 4 bits) · u8 qh[64] (high 2 bits) · i8 scales[16] · f16 d
 *
 * @example
 * const values = dequantizeK(bytes, GgmlType.Q4_K, 256 * blocks);
 */
import { f16ToF32 } from '../../codec/halfs-array.js';
import { GgmlType } from './format.js';

const h = new Uint16Array(1);
function f16(b: Uint8Array, at: number): number {
  h[0] = b[at] | (b[at + 1] << 8);
  return f16ToF32(h)[0];
}
const f = Math.fround;

/** The 6-bit scale and min j (0..7) of a Q4_K/Q5_K block's packed scales (get_scale_min_k4). */
function scaleMin(j: number, q: Uint8Array, at: number): [number, number] {
  if (j < 4) return [q[at + j] & 63, q[at + j + 4] & 63];
  return [(q[at + j + 4] & 0xf) | ((q[at + j - 4] >> 6) << 4), (q[at + j + 4] >> 4) | ((q[at + j] >> 6) << 4)];
}

/** The ggml K-types dequantizeK reads. */
export const K_TYPES: ReadonlySet<number> = new Set([GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K]);

/** `n` values (a multiple of 256) of K-type `type` from `b` → float32. */
export function dequantizeK(b: Uint8Array, type: number, n: number): Float32Array {
  const y = new Float32Array(n);
  let o = 0; // output index
  for (let blk = 0; blk < n / 256; blk++) {
    switch (type) {
      case GgmlType.Q2_K: {
        const base = blk * 84;
        const d = f16(b, base + 80);
        const min = f16(b, base + 82);
        let is = 0;
        for (let half = 0, q = base + 16; half < 2; half++, q += 32) {
          for (let shift = 0; shift < 8; shift += 2) {
            for (const off of [0, 16]) {
              const sc = b[base + is++];
              const dl = f(d * (sc & 0xf));
              const ml = f(min * (sc >> 4));
              for (let l = 0; l < 16; l++) y[o++] = f(dl * ((b[q + off + l] >> shift) & 3) - ml);
            }
          }
        }
        break;
      }
      case GgmlType.Q3_K: {
        const base = blk * 110;
        const d = f16(b, base + 108);
        // 16 six-bit scales: low 4 bits in scales[0..7] (two per byte), high 2 bits in scales[8..11].
        const s = base + 96;
        const scales: number[] = [];
        for (let j = 0; j < 16; j++) {
          const lo = j < 8 ? b[s + j] & 0xf : b[s + j - 8] >> 4;
          const hi = (b[s + 8 + (j % 4)] >> (2 * Math.floor(j / 4))) & 3;
          scales.push((lo | (hi << 4)) - 32);
        }
        let is = 0;
        let m = 1;
        for (let half = 0, q = base + 32; half < 2; half++, q += 32) {
          for (let shift = 0; shift < 8; shift += 2, m <<= 1) {
            for (const off of [0, 16]) {
              const dl = f(d * scales[is++]);
              for (let l = 0; l < 16; l++) y[o++] = f(dl * (((b[q + off + l] >> shift) & 3) - (b[base + off + l] & m ? 0 : 4)));
            }
          }
        }
        break;
      }
      case GgmlType.Q4_K:
      case GgmlType.Q5_K: {
        const five = type === GgmlType.Q5_K;
        const base = blk * (five ? 176 : 144);
        const d = f16(b, base);
        const min = f16(b, base + 2);
        const qh = base + 16;
        let ql = base + (five ? 48 : 16);
        for (let j = 0, is = 0, u1 = 1, u2 = 2; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
          const [sc1, m1] = scaleMin(is, b, base + 4);
          const [sc2, m2] = scaleMin(is + 1, b, base + 4);
          const d1 = f(d * sc1);
          const d2 = f(d * sc2);
          const n1 = f(min * m1);
          const n2 = f(min * m2);
          for (let l = 0; l < 32; l++) y[o++] = f(d1 * ((b[ql + l] & 0xf) + (five && b[qh + l] & u1 ? 16 : 0)) - n1);
          for (let l = 0; l < 32; l++) y[o++] = f(d2 * ((b[ql + l] >> 4) + (five && b[qh + l] & u2 ? 16 : 0)) - n2);
        }
        break;
      }
      case GgmlType.Q6_K: {
        const base = blk * 210;
        const d = f16(b, base + 208);
        for (let half = 0; half < 2; half++) {
          const ql = base + 64 * half;
          const qh = base + 128 + 32 * half;
          const sc = base + 192 + 8 * half;
          const s = (k: number) => (b[sc + k] << 24) >> 24; // int8
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const q1 = ((b[ql + l] & 0xf) | (((b[qh + l] >> 0) & 3) << 4)) - 32;
            const q2 = ((b[ql + l + 32] & 0xf) | (((b[qh + l] >> 2) & 3) << 4)) - 32;
            const q3 = ((b[ql + l] >> 4) | (((b[qh + l] >> 4) & 3) << 4)) - 32;
            const q4 = ((b[ql + l + 32] >> 4) | (((b[qh + l] >> 6) & 3) << 4)) - 32;
            y[o + l] = f(f(d * s(is)) * q1);
            y[o + l + 32] = f(f(d * s(is + 2)) * q2);
            y[o + l + 64] = f(f(d * s(is + 4)) * q3);
            y[o + l + 96] = f(f(d * s(is + 6)) * q4);
          }
          o += 128;
        }
        break;
      }
      default:
        throw new RangeError(`not a K-quant type: ${type}`);
    }
  }
  return y;
}
