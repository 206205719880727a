// Symbol matrices (src/native/expert_cpu.h SymbolMatrix): a fused matrix's rung held as a byte or
// 4 bits a value. The engine conformance suite runs both widths at a stream's finest rung (the
// symbol is n itself, or n / 2 in a nibble) and at a ladder's coarser rung (the symbol is
// ±(2m' + 1)); the tests below check that the weights are the decoder's bit for bit, patches
// included, and so are the products.
import assert from 'node:assert/strict';

import { compress, compressLadder, decompressRungs, ladderBounds, splitRungs } from '../src/codec/index.js';
import { fusedMatrix, fusedMatrixValues, MAX_PATCH_SHARE, nativeExpertLayer, symbolMatrix, symbolMatrixValues } from '../src/offload/cpu-engine.js';
import { native } from '../src/codec/native.js';
import { distribution, gaussian } from './codec/data.js';
import { randomExperts, runEngineConformance } from './engines/conformance.js';
import { cpuSymbols, offloadEngine } from './engines/impls.js';

runEngineConformance(cpuSymbols(1e-3));
runEngineConformance(cpuSymbols(1e-4, { rungs: 8, k: 3 }));
runEngineConformance(cpuSymbols(1e-2, undefined, 4));
runEngineConformance(cpuSymbols(1e-4, { rungs: 8, k: 1 }, 4));
runEngineConformance(offloadEngine('cpu', { level: 2, form: 'symbols' }));
runEngineConformance(offloadEngine('cpu', { level: 4, form: 'symbols' }, false, true));

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('symbol matrices', function () {
  this.timeout(60_000);

  // Every rung of a stream or a ladder, every value allowed to be a patch (escapes, NaN and ±Inf,
  // -0, zero blocks): the decoder's weights, bit for bit.
  const cases: [string, number, number[] | null][] = [
    ['gaussian-0.02', 1e-3, null],
    ['heavy-tailed', 1e-3, null],
    ['specials', 1e-3, null],
    ['negative-zero', 1e-3, null],
    ['zeros', 1e-3, null],
    ['gaussian-0.02', 1e-4, ladderBounds(1e-4, 8)],
  ];
  for (const [dist, bound, ladder] of cases) {
    it(`holds the decoder's exact weights in 8 and 4 bits (${dist}, ${ladder ? '8-rung ladder, every rung' : `eb ${bound}`})`, function () {
      const [rows, cols] = [48, 96];
      const values = distribution(dist, rows * cols, bound, 3);
      const { head, rungs } = splitRungs(ladder ? compressLadder(values, { bounds: ladder }) : compress(values, { bound }));
      for (let k = 0; k < rungs.length; k++)
        for (const width of [8, 4] as const) {
          const q = native.symbolMatrix(fusedMatrix(head, rows, cols, { rungs: rungs.slice(0, k + 1) }), 1, width)!;
          const want = decompressRungs(head, rungs.slice(0, k + 1)) as Float32Array;
          assert.ok(bits(symbolMatrixValues(q)).equals(bits(want)), `rung ${k}, ${width} bits: the symbol weights differ from the decoder's`);
          assert.equal(q.bits, width);
          // symbols, each row's first patch, and a patch's column and value
          assert.equal(q.bytes, (rows * cols * width) / 8 + 4 * (rows + 1) + 8 * q.patches);
        }
    });
  }

  it('fits N(0, 0.02) weights at eb 1e-3 and a ladder\'s coarse rungs in 8 bits, and not its finest', function () {
    const [rows, cols] = [48, 96];
    const values = distribution('gaussian-0.02', rows * cols, 1e-3, 5);
    assert.equal(symbolMatrix(fusedMatrix(compress(values, { bound: 1e-3 }), rows, cols))?.patches, 0);
    const { head, rungs } = splitRungs(compressLadder(values, { bounds: ladderBounds(1e-4, 8) }));
    const fits = rungs.map((_, k) => symbolMatrix(fusedMatrix(head, rows, cols, { rungs: rungs.slice(0, k + 1) }), [8]) !== null);
    assert.deepEqual(fits, [true, true, true, true, true, true, false, false]);
  });

  it('takes 4 bits where a rung fits them (|x| up to 15 eb above the finest rung, 16 eb at it), else 8, else none', function () {
    const [rows, cols] = [48, 96];
    const values = distribution('gaussian-0.02', rows * cols, 1e-3, 5);
    // The ladder's rungs at 0.0128, 0.0064, 0.0032, 0.0016, ...: down to σ / 6 (15 eb = 2.4 σ,
    // 1.6 % of values past it) they fit 4 bits, from σ / 12 only 8.
    const { head, rungs } = splitRungs(compressLadder(values, { bounds: ladderBounds(1e-4, 8) }));
    const widths = rungs.map((_, k) => symbolMatrix(fusedMatrix(head, rows, cols, { rungs: rungs.slice(0, k + 1) }))?.bits ?? null);
    assert.deepEqual(widths, [4, 4, 4, 8, 8, 8, null, null]);
    // A stream's finest rung: eb = σ / 2 fits 4 bits, σ / 20 only 8.
    assert.equal(symbolMatrix(fusedMatrix(compress(values, { bound: 1e-2 }), rows, cols))?.bits, 4);
    assert.equal(symbolMatrix(fusedMatrix(compress(values, { bound: 1e-3 }), rows, cols))?.bits, 8);
    const coarse = symbolMatrix(fusedMatrix(compress(values, { bound: 1e-2 }), rows, cols))!;
    assert.equal(coarse.bytes, (rows * cols) / 2 + 4 * (rows + 1) + 8 * coarse.patches);
  });

  it('patches the values past 8 or 4 bits, in any lane of any block, and multiplies them as the dense weights', async function () {
    const [d, ff] = [128, 256];
    const [experts] = randomExperts(1, 2, d, ff, 31);
    // Outliers (far past 127·eb) in the first and last lanes of blocks, a row's first and last
    // columns, and a -0, which the finest rung's signed n cannot hold.
    for (const m of experts)
      for (const [i, v] of [[0, 0.5], [31, -0.4], [32 * 7 + 16, 0.3], [d - 1, -0.6], [5 * d + 17, -0], [ff * d - 1, 0.45]] as const) m.gate[i] = v;
    const cases = [
      { bound: 1e-3, ladder: null, width: 8 },
      { bound: 1e-4, ladder: { rungs: 8, k: 3 }, width: 8 },
      { bound: 1e-2, ladder: null, width: 4 },
      { bound: 1e-4, ladder: { rungs: 8, k: 1 }, width: 4 },
    ] as const;
    for (const { bound, ladder, width } of cases) {
      const one = (v: Float32Array, rows: number, cols: number) => {
        if (!ladder) return fusedMatrix(compress(v, { bound }), rows, cols);
        const s = splitRungs(compressLadder(v, { bounds: ladderBounds(bound, ladder.rungs) }));
        return fusedMatrix(s.head, rows, cols, { rungs: s.rungs.slice(0, ladder.k + 1), k: ladder.k });
      };
      const fused = experts.map((m) => ({ gate: one(m.gate, ff, d), up: one(m.up, ff, d), down: one(m.down, d, ff) }));
      const symbols = fused.map((m) => ({ gate: symbolMatrix(m.gate, [width])!, up: symbolMatrix(m.up, [width])!, down: symbolMatrix(m.down, [width])! }));
      assert.ok(symbols.every((m) => m.gate.patches >= 5), `patches: ${symbols.map((m) => m.gate.patches)}`);
      const dense = fused.map((m) => ({ gate: fusedMatrixValues(m.gate), up: fusedMatrixValues(m.up), down: fusedMatrixValues(m.down) }));
      for (let e = 0; e < 2; e++) assert.ok(bits(symbolMatrixValues(symbols[e].gate)).equals(bits(dense[e].gate)), `expert ${e}: patched weights differ`);
      for (const T of [1, 2, 3, 4, 5, 7, 16]) {
        const ids = Int32Array.from({ length: 2 * T }, (_, i) => (i + T) % 2);
        const weights = Float32Array.from({ length: 2 * T }, (_, i) => 0.3 + 0.1 * (i % 3));
        const hidden = gaussian(T * d, 1, 60 + T);
        const a = await nativeExpertLayer((e) => symbols[e], d, ff, hidden, ids, weights, T);
        const b = await nativeExpertLayer((e) => dense[e], d, ff, hidden, ids, weights, T);
        assert.ok(bits(a).equals(bits(b)), `${width} bits, ${ladder ? `rung ${ladder.k}` : 'finest rung'}, T=${T}: symbol and dense products differ`);
      }
    }
  });

  it(`gives null for a rung too fine for 8 bits or 4 (over ${(100 * MAX_PATCH_SHARE).toFixed(1)} % of values patched), and takes a share of 0..1 only`, function () {
    const values = distribution('gaussian-0.02', 48 * 96, 1e-4, 4);
    const f = fusedMatrix(compress(values, { bound: 1e-4 }), 48, 96);
    assert.equal(symbolMatrix(f), null);
    assert.equal(native.symbolMatrix(f, MAX_PATCH_SHARE, 4), null);
    // The same rung with every value allowed to be a patch: held, every weight still exact.
    const all = native.symbolMatrix(f, 1)!;
    assert.ok(all.patches > 48 * 96 * MAX_PATCH_SHARE);
    assert.ok(bits(symbolMatrixValues(all)).equals(bits(fusedMatrixValues(f))));
    assert.throws(() => native.symbolMatrix(f, 1.5), /maxPatchShare must be in 0..1/);
    assert.throws(() => native.symbolMatrix(f, Number.NaN), /maxPatchShare must be in 0..1/);
    assert.throws(() => native.symbolMatrix({} as never, 0.1), /expected a fusedMatrix/);
    assert.throws(() => native.symbolMatrix(f, 0.1, 5 as never), /bits must be 8 or 4, got 5/);
    assert.throws(() => native.symbolMatrixDecode(f as never), /expected a symbolMatrix/);
  });

  it('rejects a symbol matrix of the wrong shape in a layer call, naming both shapes', async function () {
    const [d, ff] = [64, 96];
    const [[m]] = randomExperts(1, 1, d, ff, 2);
    const q = symbolMatrix(fusedMatrix(compress(m.up, { bound: 1e-3 }), ff, d))!;
    const h = gaussian(d, 1, 1);
    await assert.rejects(nativeExpertLayer(() => ({ ...m, down: q }), d, ff, h, Int32Array.from([0]), Float32Array.from([1]), 1), /expert 0 down is 96×64, expected 64×96/);
  });
});
