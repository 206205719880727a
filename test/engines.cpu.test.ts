// The CPU expert engine (src/native/expert_cpu.h): the shared conformance suite for the tfjs
// reference and every CPU variant, and the fused path's exact relation to the decoder and to the
// dense product of the decoded weights.
import assert from 'node:assert/strict';

import { compress, compressLadder, decompressRungs, ladderBounds, splitRungs } from '../src/codec/index.js';
import { bf16ToF32, f32ToBf16 } from '../src/codec/halfs-array.js';
import { native } from '../src/codec/native.js';
import { CpuExpertEngine, fusedMatrix, fusedMatrixValues, nativeExpertLayer } from '../src/offload/cpu-engine.js';
import { distribution, gaussian } from './codec/data.js';
import { randomExperts, runEngineConformance } from './engines/conformance.js';
import { cpuBf16, cpuDense, cpuFused, offloadEngine, tfjsResident } from './engines/impls.js';

runEngineConformance(tfjsResident);
runEngineConformance(cpuDense(0, false));
runEngineConformance(cpuDense(1, true));
runEngineConformance(cpuFused('gfni', 1e-3));
runEngineConformance(cpuFused('plane loop', 1e-3));
runEngineConformance(cpuFused('gfni', 1.25e-4, { rungs: 4, k: 2 }));
runEngineConformance(cpuFused('plane loop', 1.25e-4, { rungs: 4, k: 1 }));
runEngineConformance(offloadEngine('tfjs'));
runEngineConformance(offloadEngine('cpu'));
runEngineConformance(offloadEngine('cpu', { level: 2, form: 'f32' }));
runEngineConformance(offloadEngine('cpu', { level: 2, form: 'fused' }));
runEngineConformance(offloadEngine('cpu', null, true));
runEngineConformance(offloadEngine('cpu', { level: 2, form: 'fused' }, false, true));
runEngineConformance(offloadEngine('cpu', null, true, true));
runEngineConformance(cpuBf16);

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('the fused path against the decoder', function () {
  this.timeout(60_000);
  after(() => native.setFusedDecoder('gfni') || native.setFusedDecoder('plane loop'));
  // Escapes (heavy tails), all-zero blocks, blocks of more than 8 planes (a tight bound), ladders.
  const cases: [string, number, number[] | null][] = [
    ['gaussian-0.02', 1e-3, null],
    ['heavy-tailed', 1e-3, null],
    ['zeros', 1e-3, null],
    ['gaussian-0.02', 1e-6, null],
    ['gaussian-0.02', 1.25e-4, ladderBounds(1.25e-4, 4)],
  ];
  for (const decoder of ['gfni', 'plane loop'] as const) {
    for (const [dist, bound, ladder] of cases) {
      it(`${decoder}: multiplies with the decoder's exact weights (${dist}, ${ladder ? '4-rung ladder, every rung' : `eb ${bound}`})`, function () {
        if (!native.setFusedDecoder(decoder)) this.skip();
        const rows = 48;
        const cols = 96;
        const values = distribution(dist, rows * cols, bound, 3);
        const stream = ladder ? compressLadder(values, { bounds: ladder }) : compress(values, { bound });
        const { head, rungs } = splitRungs(stream);
        for (let k = 0; k < rungs.length; k++) {
          const m = fusedMatrix(head, rows, cols, { rungs: rungs.slice(0, k + 1) });
          const want = decompressRungs(head, rungs.slice(0, k + 1)) as Float32Array;
          assert.ok(bits(fusedMatrixValues(m)).equals(bits(want)), `rung ${k}: the fused weights differ from the decoder's`);
        }
      });
    }
  }

  // Every rung count the kernels treat as a constant (1–6) and one past it (8: read at run time),
  // on both block decoders.
  for (const decoder of ['gfni', 'plane loop'] as const) {
    it(`${decoder}: gives bit for bit the dense product of the decoded weights, for decode and prefill tiles, at every rung of 1- to 8-rung ladders`, async function () {
      if (!native.setFusedDecoder(decoder)) this.skip();
      const d = 128;
      const ff = 256;
      const [experts] = randomExperts(1, 2, d, ff, 21);
      for (const rungCount of [1, 4, 6, 8]) {
        const parts = experts.map((m) => {
          const split = (v: Float32Array) => splitRungs(rungCount === 1 ? compress(v, { bound: 1e-3 }) : compressLadder(v, { bounds: ladderBounds(1e-4, rungCount) }));
          return { gate: split(m.gate), up: split(m.up), down: split(m.down) };
        });
        for (let k = rungCount === 1 ? 0 : 1; k < rungCount; k += rungCount <= 4 ? 1 : rungCount - 2) {
          const at = (s: ReturnType<typeof splitRungs>, rows: number, cols: number) => fusedMatrix(s.head, rows, cols, { rungs: s.rungs.slice(0, k + 1) });
          const fused = parts.map((x) => ({ gate: at(x.gate, ff, d), up: at(x.up, ff, d), down: at(x.down, d, ff) }));
          const dense = fused.map((m) => ({ gate: fusedMatrixValues(m.gate), up: fusedMatrixValues(m.up), down: fusedMatrixValues(m.down) }));
          for (const T of [1, 2, 3, 4, 5, 7, 16]) {
            const ids = Int32Array.from({ length: 2 * T }, (_, i) => i % 2);
            const weights = Float32Array.from({ length: 2 * T }, (_, i) => 0.3 + 0.1 * (i % 3));
            const hidden = gaussian(T * d, 1, T);
            const a = await nativeExpertLayer((e) => fused[e], d, ff, hidden, ids, weights, T);
            const b = await nativeExpertLayer((e) => dense[e], d, ff, hidden, ids, weights, T);
            assert.ok(bits(a).equals(bits(b)), `${rungCount} rungs read to rung ${k}, T=${T}: fused and dense products differ`);
          }
        }
      }
    });
  }

  it('multiplies bf16 weights bit for bit as the f32 they widen to, for decode and prefill tiles', async function () {
    const d = 128;
    const ff = 256;
    const [experts] = randomExperts(1, 2, d, ff, 22);
    const bf16 = experts.map((m) => ({ gate: f32ToBf16(m.gate), up: f32ToBf16(m.up), down: f32ToBf16(m.down) }));
    const f32 = bf16.map((m) => ({ gate: bf16ToF32(m.gate), up: bf16ToF32(m.up), down: bf16ToF32(m.down) }));
    for (const T of [1, 3, 4, 9]) {
      const ids = Int32Array.from({ length: 2 * T }, (_, i) => (i + T) % 2);
      const weights = Float32Array.from({ length: 2 * T }, (_, i) => 0.2 + 0.1 * (i % 4));
      const hidden = gaussian(T * d, 1, 40 + T);
      const a = await nativeExpertLayer((e) => bf16[e], d, ff, hidden, ids, weights, T);
      const b = await nativeExpertLayer((e) => f32[e], d, ff, hidden, ids, weights, T);
      assert.ok(bits(a).equals(bits(b)), `T=${T}: bf16 and f32 products differ`);
    }
    // Rows of bf16 weights must be whole 32-value blocks.
    await assert.rejects(nativeExpertLayer(() => ({ gate: new Uint16Array(40 * 72), up: new Uint16Array(40 * 72), down: new Uint16Array(72 * 40) }), 72, 40, gaussian(72, 1, 1), Int32Array.from([0]), Float32Array.from([1]), 1), /whole 32-value blocks/);
  });

  it('holds a bf16 checkpoint\'s dense experts as bf16 bits (half the bytes, the same products) and any other as f32', async function () {
    const [d, ff] = [64, 96];
    const f32 = randomExperts(1, 1, d, ff, 8)[0][0];
    const asBf16 = { gate: bf16ToF32(f32ToBf16(f32.gate)), up: bf16ToF32(f32ToBf16(f32.up)), down: bf16ToF32(f32ToBf16(f32.down)) };
    const c = { hiddenSize: d, expertFfnSize: ff, numLayers: 1, numExperts: 1 };
    const fromBf16 = CpuExpertEngine.fromReader(c, () => asBf16);
    const fromF32 = CpuExpertEngine.fromReader(c, () => f32);
    assert.equal(fromBf16.expertBytes(), 3 * d * ff * 2);
    assert.equal(fromF32.expertBytes(), 3 * d * ff * 4);
    assert.ok(fromBf16.layer(0)[0].gate instanceof Uint16Array);
    const T = 5;
    const hidden = gaussian(T * d, 1, 9);
    const ids = new Int32Array(T);
    const weights = new Float32Array(T).fill(1);
    const held = await fromBf16.compute(0, hidden, ids, weights, T);
    const f32Engine = new CpuExpertEngine(d, ff, [[asBf16]]);
    const want = await f32Engine.compute(0, hidden, ids, weights, T);
    assert.ok(bits(held).equals(bits(want)), 'the bf16 bits multiply as their f32 values do');
  });

  it('reads at least 2.5× fewer bytes than f32 weights at eb 1e-3 on N(0, 0.02) weights', function () {
    const [d, ff] = [256, 512];
    const engine = CpuExpertEngine.fromReader({ hiddenSize: d, expertFfnSize: ff, numLayers: 1, numExperts: 1 }, () => randomExperts(1, 1, d, ff, 5)[0][0], { bound: 1e-3 });
    const ratio = (3 * d * ff * 4) / engine.expertBytes();
    assert.ok(ratio >= 2.5, `f32 bytes / fused bytes = ${ratio.toFixed(2)}`);
  });
});

describe('the CPU engine on bad input', function () {
  const d = 64;
  const ff = 96;
  const [[m]] = randomExperts(1, 1, d, ff, 2);
  it('refuses a fused matrix whose shape does not hold the stream, naming both', function () {
    const s = compress(m.gate, { bound: 1e-3 });
    assert.throws(() => fusedMatrix(s, ff, d + 32), (e: unknown) => (e as { code?: string }).code === 'BAD_SHAPE' && /96×96/.test((e as Error).message));
    assert.throws(() => fusedMatrix(compress(new Float32Array(40 * 3), { bound: 1e-3 }), 3, 40), (e: unknown) => (e as { code?: string }).code === 'BAD_SHAPE');
  });
  it('refuses a damaged stream with the codec error that names it', function () {
    const s = Buffer.from(compress(m.gate, { bound: 1e-3 }));
    s[s.length - 5] ^= 0x40;
    assert.throws(() => fusedMatrix(s, ff, d), (e: unknown) => (e as { code?: string }).code === 'CHECKSUM');
  });
  it('rejects a matrix of the wrong size, a hidden state of the wrong length and a missing matrix', async function () {
    const ids = Int32Array.from([0, 0]);
    const w = Float32Array.from([0.5, 0.5]);
    const h = gaussian(d, 1, 1);
    await assert.rejects(nativeExpertLayer(() => ({ ...m, up: m.up.subarray(1) }), d, ff, h, ids, w, 1), /expert 0 up has 6143 values, expected 96×64/);
    await assert.rejects(nativeExpertLayer(() => m, d, ff, h.subarray(1), ids, w, 1), /hidden has 63 values, expected 64/);
    await assert.rejects(nativeExpertLayer(() => ({ ...m, down: 'x' as never }), d, ff, h, ids, w, 1), /expert 0 down must be a Float32Array \(f32\), a Uint16Array \(bf16 bits\), a fusedMatrix or a symbolMatrix/);
    const ok = await nativeExpertLayer(() => m, d, ff, h, ids, w, 1);
    assert.equal(ok.length, d);
  });
});
