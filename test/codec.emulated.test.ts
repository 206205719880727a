// The CUDA kernels' own bodies, compiled as host C++ under cuda/emulate.h: they meet the
// conformance suite, and make the very bytes and values the CPU codec makes.
import assert from 'node:assert/strict';

import { compress, compressLadder, decompress, ladderBounds, type DType } from '../src/codec/index.js';
import { runCodecConformance } from './codec/conformance.js';
import { asDtype, distribution } from './codec/data.js';
import { emulatedKernels } from './codec/native-impls.js';

runCodecConformance(emulatedKernels);

describe('emulated CUDA kernels against the CPU codec', function () {
  const cases: [string, number, DType, number[] | null][] = [];
  for (const dtype of ['f32', 'f16', 'bf16'] as DType[]) {
    for (const [dist, n] of [['gaussian-0.02', 100_003], ['specials', 4099], ['heavy-tailed', 70_001], ['zeros', 65]] as const) {
      cases.push([dist, n, dtype, null], [dist, n, dtype, ladderBounds(1.25e-4, 4)]);
    }
  }
  for (const [dist, n, dtype, bounds] of cases) {
    it(`writes the CPU codec's bytes and decodes its values: ${dtype} ${dist} n=${n}${bounds ? ', 4 rungs' : ''}`, async function () {
      const { input } = asDtype(distribution(dist, n, 1.25e-4), dtype);
      const cpu = bounds ? compressLadder(input, { dtype, bounds }) : compress(input, { dtype, bound: 1.25e-4 });
      const emu = await emulatedKernels.compress(input, dtype, 1.25e-4, 'abs', bounds ?? undefined);
      assert.ok(Buffer.from(emu).equals(cpu), 'streams differ');
      const rungs = bounds ? bounds.length : 1;
      for (let k = 0; k < rungs; k++) {
        for (const outDtype of ['f32', 'bf16', 'f16'] as DType[]) {
          const a = decompress(cpu, { rung: k, outDtype });
          const b = await emulatedKernels.decompress(cpu, k, outDtype);
          assert.ok(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength)), `rung ${k} ${outDtype}`);
        }
      }
    });
  }
});

describe('emulated CUDA kernels on bad requests', function () {
  it('refuses a rung the stream does not have with BAD_RUNGS', async function () {
    const stream = compress(distribution('gaussian-0.02', 100, 1e-3), { bound: 1e-3 });
    await assert.rejects(emulatedKernels.decompress(stream, 1, 'f32'), (e: unknown) => (e as { code?: string }).code === 'BAD_RUNGS');
  });
});
