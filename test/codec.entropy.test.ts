// The entropy coder (stream mode 1, format version 2): the conformance suite every codec meets,
// run through the CPU codec with coder 'entropy' (sync on one and two threads, async), then what
// is particular to it: its ratio against the fixed coder and the symbols' entropy, the ladder's
// cost, that readers of fixed-length blocks refuse it by name, and that version 1 still decodes.
import assert from 'node:assert/strict';

import {
  CodecError,
  compress,
  compressAsync,
  compressLadder,
  compressLadderAsync,
  decodeOnStream,
  decompress,
  decompressAsync,
  decompressRungs,
  inspect,
  ladderBounds,
  quantizedEntropyBits,
  splitRungs,
} from '../src/codec/index.js';
import { f32ToBf16Bits } from '../src/codec/halfs.js';
import { native } from '../src/codec/native.js';
import { runCodecConformance } from './codec/conformance.js';
import { gaussian } from './codec/data.js';

for (const threads of [1, 2]) {
  runCodecConformance({
    name: `entropy coder, CPU, sync, ${threads} thread${threads > 1 ? 's' : ''}`,
    unavailable: () => null,
    compress: async (input, dtype, bound, boundMode, bounds) =>
      bounds
        ? compressLadder(input, { dtype, bounds, boundMode, threads, coder: 'entropy' })
        : compress(input, { dtype, bound, boundMode, threads, coder: 'entropy' }),
    decompress: async (stream, rung, outDtype) => decompress(stream, { rung, outDtype, threads }),
  });
}

runCodecConformance({
  name: 'entropy coder, CPU, async (worker threads, every core)',
  unavailable: () => null,
  compress: (input, dtype, bound, boundMode, bounds) =>
    bounds
      ? compressLadderAsync(input, { dtype, bounds, boundMode, coder: 'entropy' })
      : compressAsync(input, { dtype, bound, boundMode, coder: 'entropy' }),
  decompress: (stream, rung, outDtype) => decompressAsync(stream, { rung, outDtype }),
});

describe('entropy coder', function () {
  const x = gaussian(1 << 20, 0.02, 5);
  const bf16 = Uint16Array.from(x, f32ToBf16Bits);

  for (const [dtype, input, bytes] of [['f32', x, 4], ['bf16', bf16, 2]] as const) {
    it(`comes within 1.5 % of the symbols' entropy on N(0, 0.02) ${dtype} at eb 1e-3, well past the fixed coder`, function () {
      const source = x.length * bytes;
      const entropy = compress(input, { dtype, bound: 1e-3, coder: 'entropy' });
      const fixed = compress(input, { dtype, bound: 1e-3 });
      const limit = (8 * bytes) / quantizedEntropyBits(input, dtype, 1e-3);
      const ratio = source / entropy.byteLength;
      assert.ok(ratio >= 0.985 * limit && ratio <= limit * 1.001, `${dtype}: ratio ${ratio.toFixed(3)}, entropy limit ${limit.toFixed(3)}`);
      assert.ok(ratio >= 1.15 * (source / fixed.byteLength), `${dtype}: ${ratio.toFixed(3)} vs fixed ${(source / fixed.byteLength).toFixed(3)}`);
      const info = inspect(entropy);
      assert.equal(info.mode, 'entropy');
      assert.equal(info.version, 2);
      assert.equal(info.ratio, ratio);
      // One symbol per value here (no raw planes): the lanes cannot beat the symbols' entropy, and
      // spend at most 1 % over it (frequencies rounded to 1/4096, the lanes' final states).
      const s = info.symbolStats!;
      const H = quantizedEntropyBits(input, dtype, 1e-3);
      const coded = (8 * s.codedBytes) / x.length;
      assert.equal(s.rawPlanes, 0);
      assert.ok(coded >= H && coded <= 1.01 * H, `lanes spend ${coded} bits per value, the symbols' entropy is ${H}`);
      assert.equal(s.frequencies.reduce((a, b) => a + b, 0), 4096);
    });
  }

  it('stores low planes raw when the values are wide for a byte symbol, and keeps the bound', function () {
    const stream = compress(x, { bound: 1e-5, coder: 'entropy' }); // σ/2eb = 1000: u would not fit 127
    const info = inspect(stream);
    assert.ok(info.symbolStats!.rawPlanes >= 3, `raw planes ${info.symbolStats!.rawPlanes}`);
    const out = decompress(stream) as Float32Array;
    for (let i = 0; i < x.length; i++) if (!(Math.abs(out[i] - x[i]) <= info.eb)) assert.fail(`value ${i}: ${x[i]} → ${out[i]}`);
    const limit = 32 / quantizedEntropyBits(x, 'f32', 1e-5);
    assert.ok(info.ratio >= 0.97 * limit, `ratio ${info.ratio} vs limit ${limit}`);
    assert.ok(info.escapes < x.length / 1000, `${info.escapes} escapes`);
  });

  for (const finest of [1.25e-4, 1e-3]) {
    it(`keeps its ladder within 1.10× a direct entropy stream at every rung (N(0, 0.02), finest ${finest}, 4 rungs)`, function () {
      const bounds = ladderBounds(finest, 4);
      const info = inspect(compressLadder(x, { bounds, coder: 'entropy' }));
      for (let k = 0; k < 4; k++) {
        const direct = compress(x, { bound: bounds[k], coder: 'entropy' }).byteLength;
        const ratio = info.rungs[k].cumulativeBytes / direct;
        assert.ok(ratio <= 1.1, `rung ${k}: ${info.rungs[k].cumulativeBytes} vs ${direct} direct = ${ratio.toFixed(4)}×`);
      }
    });
  }

  it('decodes rungs handed over separately, and on the decode stream, as from the whole stream', async function () {
    const stream = compressLadder(x.subarray(0, 100_000), { bounds: ladderBounds(1e-4, 3), coder: 'entropy' });
    const { head, rungs } = splitRungs(stream);
    for (let k = 0; k < 3; k++) {
      const whole = decompress(stream, { rung: k });
      assert.deepEqual(decompressRungs(Buffer.from(head), rungs.slice(0, k + 1).map((r) => Buffer.from(r))), whole, `rung ${k}`);
    }
    const { values } = await decodeOnStream([{ head, rungs }], { threads: 2 });
    assert.deepEqual(values[0], decompress(stream));
  });

  it('is refused by name where fixed-length blocks are walked (the fused product)', function () {
    const stream = compress(x.subarray(0, 1024), { bound: 1e-3, coder: 'entropy' });
    assert.throws(() => native.fusedMatrix(stream, null, -1, 32, 32, true), (e: unknown) => {
      const err = e as { code?: string; message?: string };
      return err.code === 'BAD_MODE' && /entropy-coded/.test(err.message ?? '');
    });
  });

  it('leaves the fixed coder writing version 1 streams, which decode as before', function () {
    const fixed = compress(x.subarray(0, 5000), { bound: 1e-3 });
    assert.equal(fixed.readUInt16LE(4), 1);
    assert.equal(inspect(fixed).mode, 'fixed');
    assert.equal(inspect(fixed).symbolStats, undefined);
    const out = decompress(fixed) as Float32Array;
    for (let i = 0; i < 5000; i++) assert.ok(Math.abs(out[i] - x[i]) <= 1e-3);
  });

  it('refuses an unknown coder with BAD_MODE', function () {
    assert.throws(() => compress(x.subarray(0, 10), { bound: 1e-3, coder: 'huffman' as never }), (e: unknown) => e instanceof CodecError && e.code === 'BAD_MODE');
    assert.throws(() => native.compressSync(x.subarray(0, 10), 0, 1e-3, 0, [0], 1, 7), (e: unknown) => (e as { code?: string }).code === 'BAD_MODE');
  });
});
