// The codec conformance suite: one set of specifications every implementation of the codec must
// meet (the CPU codec sync, async and on two threads, the emulated CUDA kernels, CUDA on a GPU).
// Each implementation's test file calls runCodecConformance once.
import assert from 'node:assert/strict';

import { halfUlp, bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../src/codec/halfs.js';
import {
  CodecError,
  inspect,
  ladderBounds,
  type BoundMode,
  type DType,
} from '../../src/codec/index.js';
import { asDtype, distribution, DISTRIBUTIONS, gaussian } from './data.js';

export interface CodecImpl {
  name: string;
  /** Why this implementation cannot run here, or null when it can. */
  unavailable(): string | null;
  /** A stream of `input` (values of `dtype`); with `bounds`, a ladder (loosest first). */
  compress(input: Float32Array | Uint16Array, dtype: DType, bound: number, mode: BoundMode, bounds?: number[]): Promise<Uint8Array>;
  /** Rungs 0..rung (−1: all) of `stream` as `outDtype` (Float32Array, or Uint16Array of bits). */
  decompress(stream: Uint8Array, rung: number, outDtype: DType): Promise<Float32Array | Uint16Array>;
}

const SIZES = [0, 1, 31, 32, 33, 1000, 70_001]; // 70,001 crosses a 65,536-value work chunk
const DTYPES: DType[] = ['f32', 'f16', 'bf16'];

/** Checks every value of `out` (f32) against the source values and bound; returns the max error. */
export function assertWithin(values: Float32Array, out: Float32Array, bound: number, what: string): number {
  assert.equal(out.length, values.length, `${what}: decoded ${out.length} values, expected ${values.length}`);
  let worst = 0;
  for (let i = 0; i < values.length; i++) {
    const x = values[i];
    const y = out[i];
    if (Number.isNaN(x)) {
      assert.ok(Number.isNaN(y), `${what}: value ${i} is NaN but decoded as ${y}`);
      continue;
    }
    if (!Number.isFinite(x)) {
      assert.equal(y, x, `${what}: value ${i} is ${x} but decoded as ${y}`);
      continue;
    }
    const err = Math.abs(x - y);
    if (!(err <= bound)) assert.fail(`${what}: value ${i} = ${x} decoded as ${y}, error ${err} > bound ${bound}`);
    worst = Math.max(worst, err);
  }
  return worst;
}

/** The spread `rel` and `sigma` bounds are relative to, computed here in f64, independently. */
function spread(values: Float32Array, mode: BoundMode): number {
  const finite = Array.from(values).filter(Number.isFinite);
  if (mode === 'abs' || finite.length === 0) return 1;
  if (mode === 'rel') return Math.max(...finite) - Math.min(...finite);
  const mean = finite.reduce((a, b) => a + b, 0) / finite.length;
  return Math.sqrt(finite.reduce((a, b) => a + (b - mean) ** 2, 0) / finite.length);
}

export function runCodecConformance(impl: CodecImpl): void {
  describe(`codec conformance: ${impl.name}`, function () {
    before(function () {
      const why = impl.unavailable();
      if (why) {
        console.log(`      (skipped: ${why})`);
        this.skip();
      }
    });

    for (const dtype of DTYPES) {
      it(`keeps every ${dtype} value within an absolute bound, for every size and distribution`, async function () {
        const eb = 1e-3;
        for (const size of SIZES) {
          for (const dist of DISTRIBUTIONS) {
            const { input, values } = asDtype(distribution(dist, size, eb), dtype);
            const stream = await impl.compress(input, dtype, eb, 'abs');
            const info = inspect(stream);
            assert.equal(info.count, size);
            assert.ok(info.eb <= eb && info.eb > eb * (1 - 2 ** -23), `eb ${info.eb} for ${eb}`);
            const out = (await impl.decompress(stream, -1, 'f32')) as Float32Array;
            assertWithin(values, out, info.eb, `${dtype} ${dist} n=${size}`);
          }
        }
      });
    }

    it('keeps a million values within the bound (Gaussian and with escapes)', async function () {
      for (const dist of ['gaussian-0.02', 'specials']) {
        const x = distribution(dist, 1_048_583, 1e-4);
        const stream = await impl.compress(x, 'f32', 1e-4, 'abs');
        const out = (await impl.decompress(stream, -1, 'f32')) as Float32Array;
        assertWithin(x, out, inspect(stream).eb, `${dist} n=1048583`);
      }
    });

    for (const mode of ['rel', 'sigma'] as BoundMode[]) {
      it(`reads a ${mode} bound against the tensor's own ${mode === 'rel' ? 'value range' : 'σ'}`, async function () {
        for (const dist of ['gaussian-0.02', 'uniform', 'specials', 'heavy-tailed']) {
          const x = distribution(dist, 5000, 1e-3);
          const stream = await impl.compress(x, 'f32', 1e-3, mode);
          const info = inspect(stream);
          const asked = 1e-3 * spread(x, mode);
          assert.ok(info.eb <= asked && info.eb >= asked * (1 - 1e-6), `${dist}: eb ${info.eb}, asked ${asked}`);
          assert.equal(info.boundMode, mode);
          assertWithin(x, (await impl.decompress(stream, -1, 'f32')) as Float32Array, info.eb, `${mode} ${dist}`);
        }
      });
    }

    it('keeps a tensor with no spread exactly under rel and sigma bounds', async function () {
      for (const mode of ['rel', 'sigma'] as BoundMode[]) {
        for (const dist of ['zeros', 'constant']) {
          const x = distribution(dist, 1000, 1e-3);
          const stream = await impl.compress(x, 'f32', 1e-2, mode);
          const out = (await impl.decompress(stream, -1, 'f32')) as Float32Array;
          assert.deepEqual(Array.from(out), Array.from(x), `${mode} ${dist}`);
        }
      }
    });

    it('keeps NaN payloads, infinities and out-of-range values bit for bit', async function () {
      const x = gaussian(100, 0.02);
      const bits = new Uint32Array(x.buffer);
      bits[3] = 0x7f800001; // a signalling NaN
      bits[4] = 0xffc12345; // a negative quiet NaN with a payload
      x[5] = Infinity;
      x[6] = -Infinity;
      x[7] = 1e30;
      const stream = await impl.compress(x, 'f32', 1e-3, 'abs');
      const out = new Uint32Array(((await impl.decompress(stream, -1, 'f32')) as Float32Array).buffer);
      for (const i of [3, 4, 5, 6, 7]) assert.equal(out[i], bits[i], `value ${i}`);
      assert.ok(inspect(stream).escapes >= 5);
    });

    it('decodes every rung of a ladder within that rung\'s bound', async function () {
      for (const dtype of DTYPES) {
        for (const dist of ['gaussian-0.02', 'specials', 'midpoints', 'zeros', 'uniform']) {
          const bounds = ladderBounds(1.25e-4, 4);
          const { input, values } = asDtype(distribution(dist, 4099, 1.25e-4), dtype);
          const stream = await impl.compress(input, dtype, bounds[3], 'abs', bounds);
          const info = inspect(stream);
          assert.equal(info.rungs.length, 4);
          for (let k = 0; k < 4; k++) {
            assert.ok(info.rungs[k].bound <= bounds[k]);
            const out = (await impl.decompress(stream, k, 'f32')) as Float32Array;
            assertWithin(values, out, info.rungs[k].bound, `${dtype} ${dist} rung ${k}`);
          }
        }
      }
    });

    for (const outDtype of ['f16', 'bf16'] as const) {
      it(`writes ${outDtype} output as the f32 reconstruction rounded once, within eb + half an ulp`, async function () {
        const toF32 = outDtype === 'bf16' ? bf16BitsToF32 : f16BitsToF32;
        const toBits = outDtype === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
        for (const dist of ['gaussian-0.02', 'specials', 'subnormals', 'uniform']) {
          const x = distribution(dist, 3000, 1e-3);
          const bounds = ladderBounds(1e-3, 3);
          const stream = await impl.compress(x, 'f32', 1e-3, 'abs', bounds);
          const info = inspect(stream);
          for (let k = 0; k < 3; k++) {
            const wide = (await impl.decompress(stream, k, 'f32')) as Float32Array;
            const half = (await impl.decompress(stream, k, outDtype)) as Uint16Array;
            for (let i = 0; i < x.length; i++) {
              const y = toF32(half[i]);
              if (Number.isNaN(x[i])) {
                assert.ok(Number.isNaN(y));
                continue;
              }
              if (!Number.isFinite(wide[i])) {
                assert.equal(y, wide[i]);
                continue;
              }
              if (outDtype === 'f16' && Math.abs(wide[i]) >= 65520) {
                assert.equal(y, Math.sign(wide[i]) * Infinity, `${dist} value ${i}: f16 overflow`);
                continue;
              }
              // Rounded once: y is the half value nearest the f32 reconstruction (the same bits
              // as this file's own TypeScript conversion), so the bound grows by half an ulp.
              assert.equal(half[i], toBits(wide[i]), `${dist} rung ${k} value ${i}: ${wide[i]}`);
              assert.ok(Math.abs(y - wide[i]) <= halfUlp(y, outDtype), `${dist} rung ${k} value ${i}: ${wide[i]} → ${y}`);
              assert.ok(
                Math.abs(x[i] - y) <= info.rungs[k].bound + halfUlp(y, outDtype),
                `${dist} rung ${k} value ${i}: ${x[i]} → ${y}, bound ${info.rungs[k].bound}`,
              );
            }
          }
        }
      });
    }

    it('refuses a bound that is zero, negative, NaN or infinite with BAD_BOUND', async function () {
      const x = gaussian(64, 0.02);
      for (const bound of [0, -1e-3, NaN, Infinity, 1e-50]) {
        await assert.rejects(
          async () => impl.compress(x, 'f32', bound, 'abs'),
          (e: unknown) => e instanceof CodecError && e.code === 'BAD_BOUND',
          `bound ${bound}`,
        );
      }
    });

    it('writes an empty tensor as a valid stream that decodes to nothing', async function () {
      for (const mode of ['abs', 'rel', 'sigma'] as BoundMode[]) {
        const stream = await impl.compress(new Float32Array(0), 'f32', 1e-3, mode);
        assert.equal(inspect(stream).count, 0);
        assert.equal((await impl.decompress(stream, -1, 'f32')).length, 0);
      }
    });
  });
}
