/**
 * Deterministic random weights, one independent stream per tensor: the stream of tensor `name`
 * under seed `seed` depends on those two alone (sha256 of both seeds xoshiro128**), so a tensor's
 * bytes do not change with the order tensors are written in, the shard cap or the depth cut, and
 * any one tensor can be regenerated alone. Values are N(0, σ) by the Marsaglia polar method,
 * rounded to bf16 (nearest, ties to even), produced in chunks so a caller can stream them out.
 *
 * @example
 * const g = new GaussianStream(7, 'model.embed_tokens.weight', 0.02);
 * const bits = new Uint16Array(4096);  g.fillBf16(bits);
 */
import { createHash } from 'node:crypto';

/** bf16 bits of 1.0 (what RMSNorm weights are set to). */
export const BF16_ONE = 0x3f80;

/** xoshiro128** (Blackman & Vigna): 32-bit state words, period 2^128 − 1. */
class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seedBytes: Buffer) {
    this.a = seedBytes.readUInt32LE(0);
    this.b = seedBytes.readUInt32LE(4);
    this.c = seedBytes.readUInt32LE(8);
    this.d = seedBytes.readUInt32LE(12);
    if ((this.a | this.b | this.c | this.d) === 0) this.d = 1; // the one state it must avoid
  }

  /** The next 32 random bits as an unsigned integer. */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

const TWO_POW_M32 = 2 ** -32;

/** N(0, σ) values for one tensor, drawn in order, as bf16 bits. */
export class GaussianStream {
  private readonly rng: Xoshiro128;
  private spare = 0;
  private hasSpare = false;
  private readonly f32 = new Float32Array(1);
  private readonly u32 = new Uint32Array(this.f32.buffer);

  constructor(
    seed: number,
    name: string,
    private readonly sigma: number,
  ) {
    this.rng = new Xoshiro128(createHash('sha256').update(`ebserve-synth-v1\0${seed}\0${name}`).digest());
  }

  /** The next standard normal value (Marsaglia's polar method: no trigonometry, ~1.27 draws a pair). */
  private normal(): number {
    if (this.hasSpare) {
      this.hasSpare = false;
      return this.spare;
    }
    for (;;) {
      const u = this.rng.next() * TWO_POW_M32 * 2 - 1;
      const v = this.rng.next() * TWO_POW_M32 * 2 - 1;
      const s = u * u + v * v;
      if (s >= 1 || s === 0) continue;
      const m = Math.sqrt((-2 * Math.log(s)) / s);
      this.spare = v * m;
      this.hasSpare = true;
      return u * m;
    }
  }

  /** Fills `out` with the stream's next values as bf16 bits (round to nearest, ties to even). */
  fillBf16(out: Uint16Array): void {
    const f32 = this.f32;
    const u32 = this.u32;
    const sigma = this.sigma;
    for (let i = 0; i < out.length; i++) {
      f32[0] = this.normal() * sigma;
      const bits = u32[0];
      out[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16; // finite values only: no NaN case
    }
  }
}

/** bf16 bits → float32 value. */
export function bf16ToFloat(bits: number): number {
  const f32 = new Float32Array(new Uint32Array([bits << 16]).buffer);
  return f32[0];
}

/** float → bf16 bits (round to nearest, ties to even); for finite values. */
export function floatToBf16(value: number): number {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0];
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}
