// The entropy coder's CUDA decode kernel (cuda/eb_rans_kernels.cuh: one warp per 32-lane segment,
// a ballot handing the lanes their words), its body compiled as host C++ under cuda/emulate.h with
// the warps run as fibers (cuda/emulate_warp.h). It must decode every v2 stream to the CPU
// decoder's bytes, at every rung and output dtype, and answer damaged streams with the CPU
// decoder's CodecError codes: the validator's for what it catches, BAD_LANES for lanes that do not
// end where the encoder started them.
import assert from 'node:assert/strict';

import { compress, compressLadder, decompress, DTYPES, inspect, ladderBounds, type DType } from '../src/codec/index.js';
import { native } from '../src/codec/native.js';
import { asDtype, distribution, gaussian } from './codec/data.js';
import { damage, entropyLayout, forged, rng } from './fuzz/mutate.js';
import { emulatedKernels } from './codec/native-impls.js';

const OUT_DTYPES: DType[] = ['f32', 'bf16', 'f16'];
const bytesOf = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

type Outcome = { bytes: Buffer } | { code: string };
function outcome(f: () => ArrayBufferView): Outcome {
  try {
    return { bytes: bytesOf(f()) };
  } catch (e) {
    const code = (e as { code?: string }).code;
    assert.ok(code, `not a CodecError: ${String(e)}`);
    return { code };
  }
}
const cpu = (s: Uint8Array, rung = -1, outDtype: DType = 'f32') => outcome(() => decompress(s, { rung, outDtype }));
const emu = (s: Uint8Array, rung = -1, outDtype: DType = 'f32') =>
  outcome(() => native.emulatedDecompress!(s, rung, DTYPES.indexOf(outDtype)));
const same = (a: Outcome, b: Outcome) => ('bytes' in a && 'bytes' in b ? a.bytes.equals(b.bytes) : 'code' in a && 'code' in b && a.code === b.code);
const show = (o: Outcome) => ('code' in o ? o.code : `${o.bytes.length} bytes`);

describe('entropy decode kernel (emulated) against the CPU decoder', function () {
  const x = gaussian(70_001, 0.02, 11); // two segments, the last short, and a short last block
  const cases: { name: string; stream: Buffer; rungs: number }[] = [];
  for (const dtype of ['f32', 'bf16', 'f16'] as DType[]) {
    const { input } = asDtype(x, dtype);
    for (const bound of [1e-2, 1e-3, 1e-4]) cases.push({ name: `${dtype} N(0, 0.02) eb ${bound}`, stream: compress(input, { dtype, bound, coder: 'entropy' }), rungs: 1 });
  }
  // Wide values: rung 0 stores raw planes below the symbols (t > 0).
  cases.push({ name: 'f32 eb 1e-5 (raw planes)', stream: compress(x, { bound: 1e-5, coder: 'entropy' }), rungs: 1 });
  for (const dtype of ['f32', 'bf16'] as DType[]) {
    const { input } = asDtype(x, dtype);
    cases.push({ name: `${dtype} 4 rungs 1e-3..1.25e-4`, stream: compressLadder(input, { dtype, bounds: ladderBounds(1.25e-4, 4), coder: 'entropy' }), rungs: 4 });
  }
  cases.push({ name: 'f32 3 rungs 4e-5..1e-5 (raw planes + refinements)', stream: compressLadder(x, { bounds: ladderBounds(1e-5, 3), coder: 'entropy' }), rungs: 3 });
  // Escapes: NaN, ±Inf, values past the quantizer's range; and heavy tails past a byte's symbol.
  for (const dist of ['specials', 'heavy-tailed']) {
    for (const dtype of ['f32', 'bf16'] as DType[]) {
      const { input } = asDtype(distribution(dist, 9_001, 1e-3), dtype);
      cases.push({ name: `${dtype} ${dist}`, stream: compress(input, { dtype, bound: 1e-3, coder: 'entropy' }), rungs: 1 });
    }
  }
  cases.push({ name: 'f32 specials, 3 rungs', stream: compressLadder(distribution('specials', 4_099, 1e-3), { bounds: ladderBounds(1e-3, 3), coder: 'entropy' }), rungs: 3 });
  // Empty and tiny tensors: no segment at all, one short block, a block and a value.
  for (const n of [0, 1, 31, 32, 33]) {
    cases.push({ name: `f32 n=${n}`, stream: compress(gaussian(n, 0.02, n + 1), { bound: 1e-3, coder: 'entropy' }), rungs: 1 });
    cases.push({ name: `f32 n=${n}, 2 rungs`, stream: compressLadder(gaussian(n, 0.02, n + 1), { bounds: ladderBounds(1e-3, 2), coder: 'entropy' }), rungs: 2 });
  }

  it('has cases of every part: two segments, raw planes, refinement rungs, escapes, empty', function () {
    const info = (name: string) => inspect(cases.find((c) => c.name === name)!.stream);
    assert.equal(entropyLayout(cases[0].stream).segments, 2);
    assert.ok(info('f32 eb 1e-5 (raw planes)').symbolStats!.rawPlanes > 0);
    assert.ok(info('f32 3 rungs 4e-5..1e-5 (raw planes + refinements)').symbolStats!.rawPlanes > 0);
    assert.ok(info('f32 specials').escapes > 0 && info('bf16 specials').escapes > 0 && info('f32 heavy-tailed').escapes > 0);
    assert.equal(info('f32 n=0').count, 0);
    for (const c of cases) assert.equal(inspect(c.stream).mode, 'entropy', c.name);
  });

  for (const c of cases) {
    it(`decodes the CPU decoder's bytes: ${c.name}, every rung, f32/bf16/f16 out`, async function () {
      for (let k = 0; k < c.rungs; k++) {
        for (const outDtype of OUT_DTYPES) {
          const want = decompress(c.stream, { rung: k, outDtype });
          const got = await emulatedKernels.decompress(c.stream, k, outDtype);
          assert.ok(bytesOf(got).equals(bytesOf(want)), `rung ${k} ${outDtype}: the kernel's output differs`);
        }
      }
    });
  }

  it('keeps the bound on its own (f32 out, every rung of the ladder)', async function () {
    const bounds = ladderBounds(1.25e-4, 4);
    const s = cases.find((c) => c.name === 'f32 4 rungs 1e-3..1.25e-4')!.stream;
    for (let k = 0; k < 4; k++) {
      const y = (await emulatedKernels.decompress(s, k, 'f32')) as Float32Array;
      let worst = 0;
      for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(y[i] - x[i]));
      assert.ok(worst <= bounds[k] && worst > bounds[k] / 2, `rung ${k}: max error ${worst}, bound ${bounds[k]}`);
    }
  });
});

describe('entropy decode kernel (emulated) on damaged streams', function () {
  const values = gaussian(3000, 0.02, 4);
  values.set([NaN, Infinity, -1e30], 1234); // escapes
  const one = compress(values, { bound: 1e-3, coder: 'entropy' });
  const wide = compressLadder(gaussian(70_001, 0.02, 9), { bounds: ladderBounds(2e-5, 2), coder: 'entropy' });
  const l = entropyLayout(one);

  it('refuses a rung the stream does not have with BAD_RUNGS', function () {
    assert.deepEqual(emu(one, 1), { code: 'BAD_RUNGS' });
  });

  it('answers the validator\'s codes for forged tables and lane fields, as the CPU decoder does', function () {
    const edits: [string, (b: Buffer, v: DataView) => void, string][] = [
      ['probability scale 11 bits', (b) => void (b[l.descAt + 1] = 11), 'BAD_TABLE'],
      ['frequencies summing to 4097', (_, v) => v.setUint16(l.freqAt, v.getUint16(l.freqAt, true) + 1, true), 'BAD_TABLE'],
      ['segment count + 1', (_, v) => v.setUint32(l.descAt + 4, l.segments + 1, true), 'BAD_TABLE'],
      ['more words than values', (_, v) => v.setUint32(l.segTableAt, 3001, true), 'BAD_LANES'],
      ['a lane state below 2^16', (_, v) => v.setUint32(l.segAt[0] + 4 * 5, 0xffff, true), 'BAD_LANES'],
      ['escape past the end', (_, v) => v.setUint32(l.entropyEscapesAt, 3000, true), 'BAD_ESCAPES'],
    ];
    assert.ok(l.escapes > 0 && l.symbols > 40);
    for (const [what, edit, code] of edits) {
      const b = forged(one, edit);
      assert.deepEqual(cpu(b), { code }, `${what}: CPU`);
      assert.deepEqual(emu(b), { code }, `${what}: kernel`);
    }
  });

  it('answers BAD_LANES for lane words, states and frequencies changed under recomputed checksums', function () {
    const r = rng(1916);
    const streams: [string, Buffer][] = [];
    for (let i = 0; i < 40; i++) {
      const at = l.segAt[0] + 128 + 2 * r.below(l.segWords[0]);
      const flip = 1 << r.below(16);
      streams.push([`word at ${at} ^ ${flip}`, forged(one, (_, v) => v.setUint16(at, v.getUint16(at, true) ^ flip, true))]);
    }
    const lane = r.below(32);
    streams.push([`lane ${lane}'s state + 1`, forged(one, (_, v) => v.setUint32(l.segAt[0] + 4 * lane, v.getUint32(l.segAt[0] + 4 * lane, true) + 1, true))]);
    streams.push([
      'frequencies 10 and 40 swapped',
      forged(one, (_, v) => {
        const a = v.getUint16(l.freqAt + 20, true);
        v.setUint16(l.freqAt + 20, v.getUint16(l.freqAt + 80, true), true);
        v.setUint16(l.freqAt + 80, a, true);
      }),
    ]);
    // The second segment of a two-segment stream: the verdict names it.
    const lw = entropyLayout(wide);
    streams.push(['segment 1, a word flipped', forged(wide, (_, v) => v.setUint16(lw.segAt[1] + 140, v.getUint16(lw.segAt[1] + 140, true) ^ 0x100, true))]);
    for (const [what, b] of streams) {
      assert.deepEqual(cpu(b), { code: 'BAD_LANES' }, `${what}: CPU`);
      assert.deepEqual(emu(b), { code: 'BAD_LANES' }, `${what}: kernel`);
    }
    assert.throws(() => native.emulatedDecompress!(streams.at(-1)![1], -1, 0), /segment 1: the rANS lanes/);
  });

  it('gives the CPU decoder\'s answer, values or code, for 300 streams with random rung bytes changed under recomputed checksums', function () {
    const r = rng(160016);
    const answers = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const seed = i % 10 ? one : wide;
      const le = entropyLayout(seed);
      const end = le.rungAt[0] + le.rungBytes[0];
      const at = le.rungAt[0] + r.below(end - le.rungAt[0]);
      const value = r.below(256);
      const b = forged(seed, (buf) => void (buf[at] = value));
      const want = cpu(b), got = emu(b);
      assert.ok(same(want, got), `case ${i}: byte ${at} = ${value}: CPU ${show(want)}, kernel ${show(got)}`);
      const key = show(want);
      answers.set(key, (answers.get(key) ?? 0) + 1);
    }
    // Both kinds of answer came up: streams that still decode, and refusals by the kernel itself.
    assert.ok([...answers.keys()].some((k) => k.endsWith('bytes')) && answers.has('BAD_LANES'), JSON.stringify([...answers]));
  });

  it('refuses blindly damaged streams with the CPU decoder\'s code (checksums verified)', function () {
    const r = rng(77);
    for (let i = 0; i < 100; i++) {
      const d = damage(one, r);
      if (d.bytes.equals(one)) continue;
      const want = cpu(d.bytes), got = emu(d.bytes);
      assert.ok('code' in want && same(want, got), `case ${i} (${d.what}): CPU ${show(want)}, kernel ${show(got)}`);
    }
  });
});
