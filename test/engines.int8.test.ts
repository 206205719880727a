// The integer product (src/native/expert_kernels.h, "The integer product"): symbol matrices times
// activations quantized to 8 bits per 256-value group, as llama.cpp's Q8_K. The conformance suite
// runs it on each form it takes, within the activations' rounding; the tests below check its
// arithmetic exactly against a model of that rounding, patches included, and that the VNNI and
// generic dots give the same bits.
import assert from 'node:assert/strict';

import { compress, compressLadder, ladderBounds, splitRungs } from '../src/codec/index.js';
import { native } from '../src/codec/native.js';
import { fusedMatrix, symbolMatrix, symbolMatrixValues } from '../src/offload/cpu-engine.js';
import { gaussian } from './codec/data.js';
import { runEngineConformance } from './engines/conformance.js';
import { cpuSymbols, offloadEngine } from './engines/impls.js';

runEngineConformance(cpuSymbols(1e-3, undefined, 8, true));
runEngineConformance(cpuSymbols(1e-2, undefined, 4, true));
runEngineConformance(cpuSymbols(1e-4, { rungs: 8, k: 1 }, 4, true));
runEngineConformance(offloadEngine('cpu', { level: 0, form: 'symbols', int8Activations: true }));

const f = Math.fround;

/** Nearest integer, ties to even (the kernel's 1.5·2^23 rounding). */
function roundEven(v: number): number {
  const fl = Math.floor(v);
  const diff = v - fl;
  return diff > 0.5 ? fl + 1 : diff < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
}

/** One token's activations as the kernel quantizes them: d_g = max |x_g| / 127 per 256 values, xq = x · (127 / max) rounded. */
function quantize(x: Float32Array): { q: number[]; d: number[] } {
  const q: number[] = [];
  const d: number[] = [];
  for (let g = 0; g < x.length / 256; g++) {
    const group = x.subarray(256 * g, 256 * g + 256);
    const mx = group.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    d.push(f(mx / 127));
    const inv = mx > 0 ? f(127 / mx) : 0;
    for (const v of group) q.push(roundEven(f(v * inv)));
  }
  return { q, d };
}

/** Σ_c w·xq·d_g, with value·x at the patches: what the integer product computes, in f64; and Σ of the absolute terms. */
function expected(w: Float32Array, patches: Set<number>, rows: number, cols: number, x: Float32Array, n: number) {
  const out = new Float64Array(n * rows);
  const scale = new Float64Array(n * rows);
  for (let t = 0; t < n; t++) {
    const xt = x.subarray(t * cols, t * cols + cols);
    const { q, d } = quantize(xt);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      let a = 0;
      for (let c = 0; c < cols; c++) {
        const term = patches.has(r * cols + c) ? w[r * cols + c] * xt[c] : w[r * cols + c] * q[c] * d[c >> 8];
        s += term;
        a += Math.abs(term);
      }
      out[t * rows + r] = s;
      scale[t * rows + r] = a;
    }
  }
  return { out, scale };
}

describe('the integer product (symbols × 8-bit activations)', function () {
  this.timeout(60_000);
  // Two groups of activations, the second of 3 blocks (the last one alone in a step).
  const [rows, cols] = [40, 352];

  // Outliers past any symbol's range, in a block's first and last lanes and a row's ends; and a
  // -0 (where the codec keeps it, no symbol at a stream's finest rung gives it).
  // Row 3 holds 11 (more than the 8 a row's patches are summed at a time).
  const outliers: [number, number][] = [
    [0, 0.5], [31, -0.4], [32 * 2 + 16, 0.3], [cols - 1, -0.6], [17 * cols + 40, 0.45],
    ...[1, 5, 33, 40, 64, 100, 130, 200, 257, 300, cols - 1].map((c, i): [number, number] => [3 * cols + c, i % 2 ? -0.35 : 0.3]),
  ];
  const forms = [
    { name: '8 bits at eb 1e-3', bound: 1e-3, ladder: null, bits: 8, negativeZero: true },
    { name: '4 bits at eb 1e-2', bound: 1e-2, ladder: null, bits: 4, negativeZero: true },
    { name: '4 bits at rung 1 of an 8-rung ladder (p = 6: two dots)', bound: 1e-4, ladder: { rungs: 8, k: 1 }, bits: 4, negativeZero: false },
    { name: '4 bits at rung 0 of a 4-rung ladder (p = 3: one dot through the byte table)', bound: 1e-3, ladder: { rungs: 4, k: 0 }, bits: 4, negativeZero: false },
  ] as const;

  const make = (form: (typeof forms)[number], seed: number) => {
    const values = gaussian(rows * cols, 0.02, seed);
    for (const [i, v] of outliers) values[i] = v;
    if (form.negativeZero) values[5 * cols + 9] = -0;
    const fused = form.ladder
      ? (() => {
          const s = splitRungs(compressLadder(values, { bounds: ladderBounds(form.bound, form.ladder.rungs) }));
          return fusedMatrix(s.head, rows, cols, { rungs: s.rungs.slice(0, form.ladder.k + 1), k: form.ladder.k });
        })()
      : fusedMatrix(compress(values, { bound: form.bound }), rows, cols);
    const m = symbolMatrix(fused, [form.bits], true)!;
    const patches = new Set(outliers.map(([i]) => i));
    // A -0 the codec keeps is a patch (its symbol gives +0).
    if (Object.is(symbolMatrixValues(m)[5 * cols + 9], -0)) patches.add(5 * cols + 9);
    return { m, patches };
  };

  for (const form of forms) {
    it(`computes Σ w·xq·d_g exactly as modelled, patches at their f32 values (${form.name})`, function () {
      const { m, patches } = make(form, 3);
      assert.equal(m.int8Activations, true);
      assert.equal(m.bits, form.bits);
      assert.equal(m.patches, patches.size, 'the patches are the values put there');
      const w = symbolMatrixValues(m);
      for (const n of [1, 3, 5]) {
        const x = gaussian(n * cols, 1, 40 + n);
        x[7] = 0; // a zero activation and a group of zeros (d_g = 0)
        x.fill(0, 256, cols);
        const got = native.matrixProduct(m, rows, cols, x, n);
        const { out, scale } = expected(w, patches, rows, cols, x, n);
        for (let i = 0; i < out.length; i++)
          assert.ok(Math.abs(got[i] - out[i]) <= 2e-6 * scale[i] + 1e-9, `n=${n} value ${i}: ${got[i]} vs ${out[i]}`);
      }
    });
  }

  it('gives the same bits with the VNNI dot as with the generic one (where the CPU has VNNI)', function () {
    if (!native.setIntDot('vnni')) this.skip();
    try {
      for (const form of forms) {
        const { m } = make(form, 8);
        const x = gaussian(7 * cols, 1, 9);
        const vnni = native.matrixProduct(m, rows, cols, x, 7);
        assert.ok(native.setIntDot('generic'));
        const generic = native.matrixProduct(m, rows, cols, x, 7);
        assert.ok(native.setIntDot('vnni'));
        assert.deepEqual(Buffer.from(vnni.buffer), Buffer.from(generic.buffer), form.name);
      }
    } finally {
      native.setIntDot(native.info().intDot === 'vnni' ? 'vnni' : 'generic');
    }
  });

  it('runs the generic dot whatever the CPU, and names the dot it uses', function () {
    const before = native.info().intDot;
    try {
      assert.ok(native.setIntDot('generic'));
      assert.equal(native.info().intDot, 'generic');
      const { m, patches } = make(forms[1], 4);
      const x = gaussian(cols, 1, 5);
      const { out, scale } = expected(symbolMatrixValues(m), patches, rows, cols, x, 1);
      const got = native.matrixProduct(m, rows, cols, x, 1);
      for (let i = 0; i < rows; i++) assert.ok(Math.abs(got[i] - out[i]) <= 2e-6 * scale[i] + 1e-9, `value ${i}`);
    } finally {
      native.setIntDot(before === 'vnni' ? 'vnni' : 'generic');
    }
    assert.throws(() => native.setIntDot('amx' as never), /integer dot is "vnni" or "generic", got amx/);
  });

  it('stays within a few tenths of a percent of the f32 product on Gaussian activations', function () {
    const { m } = make(forms[1], 6);
    const x = gaussian(4 * cols, 1, 12);
    const a = native.matrixProduct(m, rows, cols, x, 4);
    const b = native.matrixProduct(symbolMatrixValues(m), rows, cols, x, 4);
    let err = 0;
    let norm = 0;
    for (let i = 0; i < a.length; i++) {
      err += (a[i] - b[i]) ** 2;
      norm += b[i] ** 2;
    }
    // One scale per 256 activations: 0.54 % here (one per 32, as Q8_0, gives 0.53 % on the same values).
    assert.ok(Math.sqrt(err / norm) < 7e-3, `relative error ${Math.sqrt(err / norm)}`);
  });

  it('gives NaN for a token whose activations hold a NaN or ±Inf', function () {
    const { m } = make(forms[0], 7);
    const x = gaussian(3 * cols, 1, 13);
    x[cols + 50] = Number.NaN;
    x[2 * cols + 3] = Number.POSITIVE_INFINITY;
    const y = native.matrixProduct(m, rows, cols, x, 3);
    assert.ok(y.subarray(0, rows).every(Number.isFinite), 'the finite token');
    assert.ok(y.subarray(rows).every(Number.isNaN), 'the tokens with a NaN or an Inf');
  });

  it('keeps the f32 product where the form takes no integer one: 8 bits above a stream\'s finest rung', function () {
    const values = gaussian(rows * cols, 0.02, 2);
    const s = splitRungs(compressLadder(values, { bounds: ladderBounds(1e-4, 8) }));
    const fused = fusedMatrix(s.head, rows, cols, { rungs: s.rungs.slice(0, 4), k: 3 });
    const m = symbolMatrix(fused, [8], true)!;
    assert.equal(m.int8Activations, false);
    const x = gaussian(2 * cols, 1, 3);
    assert.deepEqual(native.matrixProduct(m, rows, cols, x, 2), native.matrixProduct(symbolMatrixValues(m), rows, cols, x, 2));
  });

  it('refuses a product of the wrong shape, naming it', function () {
    const { m } = make(forms[0], 1);
    assert.throws(() => native.matrixProduct(m, cols, rows, new Float32Array(rows), 1), /matrix is 40×352, expected 352×40/);
    assert.throws(() => native.matrixProduct(m, rows, cols, new Float32Array(5), 1), /x must be a Float32Array of n × cols values/);
  });
});
