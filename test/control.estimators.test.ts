// The controller's estimators, each a pure reducer tested alone: link bandwidth (prior until
// enough bytes, the lower of fast/slow EWMAs and a robust harmonic window, small moves ignored
// for the rate but kept for the fixed overhead, capacity as a windowed max), rolling p95
// inter-token latency, per-layer miss rate, link moves per decode step, and the step-time
// model's error.
import assert from 'node:assert/strict';

import {
  bandwidthEstimate,
  bandwidthInit,
  bandwidthParts,
  bandwidthStep,
  capacityEstimate,
  overheadEstimate,
  type BandwidthState,
} from '../src/control/estimators/bandwidth.js';
import { computeMedian, latencyInit, latencyStep, p95, quantile } from '../src/control/estimators/latency.js';
import { missInit, missRate, missStep } from '../src/control/estimators/miss-rate.js';
import { modelErrorInit, modelErrorP95, modelErrorStep } from '../src/control/estimators/model-error.js';
import { movesInit, movesPerToken, movesToken, movesTransfer } from '../src/control/estimators/moves.js';
import { rng } from './codec/data.js';

const fold = (s: BandwidthState, moves: { bytes: number; seconds: number }[]) => moves.reduce(bandwidthStep, s);
const steady = (n: number, bytes: number, bps: number, alpha = 0) => Array.from({ length: n }, () => ({ bytes, seconds: alpha + bytes / bps }));

describe('bandwidth estimator', function () {
  it('answers the prior until priorBytes have been seen, then the samples', function () {
    let s = bandwidthInit({ priorBytesPerSecond: 5e9, priorBytes: 200e3 });
    assert.equal(bandwidthEstimate(s), 5e9);
    s = fold(s, steady(3, 50e3, 1e8));
    assert.equal(bandwidthEstimate(s), 5e9, '150 kB seen: still the prior');
    assert.equal(bandwidthParts(s).usingPrior, true);
    s = fold(s, steady(2, 50e3, 1e8));
    assert.equal(bandwidthParts(s).usingPrior, false);
    assert.ok(Math.abs(bandwidthEstimate(s) - 1e8) / 1e8 < 1e-9, `${bandwidthEstimate(s)}`);
  });

  it('converges to a steady link\'s rate with every part agreeing', function () {
    const s = fold(bandwidthInit({ priorBytesPerSecond: 1e9 }), steady(40, 64e3, 3e7));
    const p = bandwidthParts(s);
    for (const [name, v] of Object.entries({ fast: p.fast, slow: p.slow, harmonic: p.harmonic, robust: p.robust })) {
      assert.ok(Math.abs(v - 3e7) / 3e7 < 1e-6, `${name} ${v}`);
    }
  });

  it('ignores moves under minBytes for the rate, but takes their time as the fixed overhead', function () {
    let s = fold(bandwidthInit({ priorBytesPerSecond: 1e9, minBytes: 16e3 }), steady(20, 64e3, 2e7, 0.001));
    const before = bandwidthEstimate(s);
    s = fold(s, Array.from({ length: 10 }, () => ({ bytes: 100, seconds: 0.0011 })));
    assert.equal(bandwidthEstimate(s), before, 'tiny moves leave the rate alone');
    assert.ok(Math.abs(overheadEstimate(s) - 0.0011) < 1e-12, `${overheadEstimate(s)}`);
  });

  it('drops at once when the link slows (the estimate follows the lowest part), and recovers slowly', function () {
    let s = fold(bandwidthInit({ priorBytesPerSecond: 1e9 }), steady(40, 64e3, 4e7));
    s = fold(s, steady(3, 64e3, 1e7));
    const p = bandwidthParts(s);
    assert.ok(bandwidthEstimate(s) <= Math.min(p.fast, p.slow, p.robust) + 1e-6);
    assert.ok(bandwidthEstimate(s) < 0.6 * 4e7, `after 3 slow moves: ${bandwidthEstimate(s)}`);
    assert.ok(p.fast < p.slow, 'the fast EWMA reacts first');
    s = fold(s, steady(3, 64e3, 4e7));
    assert.ok(bandwidthEstimate(s) < 0.9 * 4e7, `3 fast moves later it is still cautious: ${bandwidthEstimate(s)}`);
    s = fold(s, steady(1000, 64e3, 4e7)); // 1.6 s of transfer time: 3 slow half-lives
    assert.ok(Math.abs(bandwidthEstimate(s) - 4e7) / 4e7 < 0.01, `recovered: ${bandwidthEstimate(s)}`);
  });

  it('discounts the harmonic window by its recent worst error', function () {
    const r = rng(5);
    const noisy = Array.from({ length: 60 }, () => ({ bytes: 64e3, seconds: 64e3 / (2e7 * (0.5 + r())) }));
    const s = fold(bandwidthInit({ priorBytesPerSecond: 1e9 }), noisy);
    const p = bandwidthParts(s);
    assert.ok(p.robust < p.harmonic, `${p.robust} < ${p.harmonic}`);
    assert.ok(bandwidthEstimate(s) <= p.robust);
  });

  it('never estimates above the fastest recent move, which it publishes as capacity', function () {
    const r = rng(9);
    let s = bandwidthInit({ priorBytesPerSecond: 1e8 });
    for (let i = 0; i < 300; i++) {
      s = bandwidthStep(s, { bytes: 20e3 + r() * 200e3, seconds: 1e-4 + r() * 0.01 });
      if (!bandwidthParts(s).usingPrior) assert.ok(bandwidthEstimate(s) <= capacityEstimate(s) * (1 + 1e-9), `step ${i}`);
    }
  });

  it('ignores samples without a duration and refuses a prior that is not a positive rate', function () {
    const s = bandwidthInit({ priorBytesPerSecond: 1e9 });
    assert.equal(bandwidthStep(s, { bytes: 1e6, seconds: 0 }), s);
    assert.equal(bandwidthStep(s, { bytes: NaN, seconds: 1 }), s);
    assert.throws(() => bandwidthInit({ priorBytesPerSecond: 0 }), /positive number of bytes per second/);
  });
});

describe('latency estimator', function () {
  it('gives the nearest-rank p95 of the last window steps', function () {
    let s = latencyInit(100);
    for (let i = 1; i <= 100; i++) s = latencyStep(s, { seconds: i / 1000, computeSeconds: 0.0005 });
    assert.equal(p95(s), 0.095);
    for (let i = 0; i < 100; i++) s = latencyStep(s, { seconds: 0.001, computeSeconds: 0.0005 });
    assert.equal(p95(s), 0.001, 'old steps left the window');
    assert.equal(computeMedian(s), 0.0005);
  });

  it('answers NaN before any step, and takes compute time as at most the step', function () {
    const s = latencyInit(4);
    assert.ok(Number.isNaN(p95(s)));
    assert.equal(computeMedian(latencyStep(s, { seconds: 0.01, computeSeconds: 0.5 })), 0.01);
    assert.equal(quantile([3, 1, 2], 0.5), 2);
    assert.throws(() => latencyInit(0), /whole number ≥ 1/);
  });
});

describe('miss-rate estimator', function () {
  it('follows each layer\'s tier-A misses, ignoring prefetch lookups and tier B', function () {
    let s = missInit(3, 0.5);
    assert.equal(missRate(s, 1, 0.7), 0.7, 'the prior before any lookup');
    s = missStep(s, { layer: 1, tier: 'A', result: 'miss', prefetch: false });
    assert.equal(missRate(s, 1), 1);
    s = missStep(s, { layer: 1, tier: 'A', result: 'hit', prefetch: false });
    assert.equal(missRate(s, 1), 0.5);
    const same = missStep(missStep(s, { layer: 1, tier: 'A', result: 'miss', prefetch: true }), { layer: 1, tier: 'B', result: 'miss', prefetch: false });
    assert.equal(missRate(same, 1), 0.5);
    assert.equal(missRate(s, 0, 0.25), 0.25, 'other layers untouched');
    assert.equal(missStep(s, { layer: 7, tier: 'A', result: 'miss', prefetch: false }), s, 'a layer it does not have');
  });
});

describe('moves estimator', function () {
  it('counts every move of a layer per decode step, prefetches included, as an EWMA', function () {
    let s = movesInit(3, 0.5);
    assert.ok(Number.isNaN(movesPerToken(s, 0)), 'unknown before the first decode step');
    s = movesTransfer(movesTransfer(movesTransfer(s, 0), 0), 2);
    s = movesToken(s, 1);
    assert.deepEqual([0, 1, 2].map((l) => movesPerToken(s, l)), [2, 0, 1]);
    s = movesToken(movesTransfer(movesTransfer(movesTransfer(movesTransfer(s, 0), 0), 0), 0), 1);
    assert.deepEqual([0, 1, 2].map((l) => movesPerToken(s, l)), [3, 0, 0.5], 'half way to 4, 0 and 0');
  });

  it('leaves a prefill\'s moves out of the per-step rate, and ignores a layer it does not have', function () {
    let s = movesToken(movesTransfer(movesInit(2, 0.5), 1), 1);
    const before = movesPerToken(s, 1);
    s = movesToken(movesTransfer(movesTransfer(s, 1), 1), 12); // a 12-token prefill
    assert.equal(movesPerToken(s, 1), before);
    s = movesToken(s, 1);
    assert.equal(movesPerToken(s, 1), before / 2, 'the prefill\'s moves did not carry into the next step');
    assert.equal(movesTransfer(s, 5), s);
    assert.throws(() => movesInit(2, 0), /alpha must be in \(0, 1\]/);
  });
});

describe('model-error estimator', function () {
  it('answers 1 until minSamples steps, then the p95 of measured over predicted in its window', function () {
    let s = modelErrorInit(20, 4);
    for (let i = 0; i < 3; i++) s = modelErrorStep(s, 0.02, 0.04);
    assert.equal(modelErrorP95(s), 1, 'the model as it is until enough steps');
    s = modelErrorStep(s, 0.02, 0.04);
    assert.equal(modelErrorP95(s), 0.5);
    for (let i = 0; i < 19; i++) s = modelErrorStep(s, 0.03, 0.04);
    s = modelErrorStep(s, 0.06, 0.04);
    assert.equal(s.ratios.length, 20, 'only the window is kept');
    assert.equal(modelErrorP95(s), 0.75, 'nearest rank: the 19th of 20 (the one outlier is the 20th)');
  });

  it('ignores steps it cannot pair with a prediction, and clamps the ratio to [1/4, 4]', function () {
    let s = modelErrorInit(8, 1);
    s = modelErrorStep(modelErrorStep(modelErrorStep(s, 0.1, NaN), 0.1, 0), Number.NaN, 0.1);
    assert.equal(s.ratios.length, 0);
    assert.equal(modelErrorP95(modelErrorStep(s, 1, 0.01)), 4);
    assert.equal(modelErrorP95(modelErrorStep(s, 0.001, 1)), 0.25);
    assert.throws(() => modelErrorInit(4, 5), /minSamples/);
    assert.throws(() => modelErrorInit(0), /whole number ≥ 1/);
  });
});
