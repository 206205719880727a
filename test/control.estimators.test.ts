// The controller's estimators, each a pure reducer tested alone: link bandwidth (prior until
// enough bytes, the lower of fast/slow EWMAs and a robust harmonic window, small moves ignored
// for the rate but kept for the fixed overhead, capacity as a windowed max), rolling p95
// inter-token latency (steps weighted by their decode sequences) and the batch served, per-layer
// miss rate, link moves per decode step (any batch), a step's compute as a function of its
// tokens, and the step-time model's error.
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
import { latencyInit, latencyStep, p95, quantile, servedTokens, weightedQuantile } from '../src/control/estimators/latency.js';
import { missInit, missRate, missStep } from '../src/control/estimators/miss-rate.js';
import { modelErrorInit, modelErrorP95, modelErrorStep } from '../src/control/estimators/model-error.js';
import { lookupsPerStep, movesInit, movesLookup, movesPerToken, movesStep, movesTransfer } from '../src/control/estimators/moves.js';
import { stepCostAt, stepCostCurve, stepCostInit, stepCostPerToken, stepCostStep, type StepCostState } from '../src/control/estimators/step-cost.js';
import { Window, windowMax, windowMin } from '../src/control/estimators/window.js';
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

  it('discounts the harmonic window by its recent errors, forgiving one move alone', function () {
    const r = rng(5);
    const noisy = Array.from({ length: 60 }, () => ({ bytes: 64e3, seconds: 64e3 / (2e7 * (0.5 + r())) }));
    const s = fold(bandwidthInit({ priorBytesPerSecond: 1e9 }), noisy);
    const p = bandwidthParts(s);
    assert.ok(p.robust < p.harmonic, `${p.robust} < ${p.harmonic}`);
    assert.ok(bandwidthEstimate(s) <= p.robust);
    // A steady link, then one move 10× slow: the robust part keeps most of the rate (its error
    // of 9 forgiven; the harmonic window itself takes the slow move in) ...
    const base = fold(bandwidthInit({ priorBytesPerSecond: 1e9 }), steady(40, 64e3, 4e7));
    const one = bandwidthParts(fold(base, [{ bytes: 64e3, seconds: 64e3 / 4e6 }]));
    assert.ok(one.robust > 0.5 * 4e7, `one slow move: robust ${one.robust}`);
    // ... and two such moves among the last five discount it by their error, tenfold.
    const two = bandwidthParts(fold(base, [{ bytes: 64e3, seconds: 64e3 / 4e6 }, { bytes: 64e3, seconds: 64e3 / 4e6 }]));
    assert.ok(two.robust < 0.15 * two.harmonic, `two slow moves: robust ${two.robust}, harmonic ${two.harmonic}`);
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

const decode = (seconds: number, batch = 1) => ({ seconds, tokens: batch, prefillTokens: 0 });

describe('latency estimator', function () {
  it('gives the nearest-rank p95 of the last window steps', function () {
    let s = latencyInit(100);
    for (let i = 1; i <= 100; i++) s = latencyStep(s, decode(i / 1000));
    assert.equal(p95(s), 0.095);
    for (let i = 0; i < 100; i++) s = latencyStep(s, decode(0.001));
    assert.equal(p95(s), 0.001, 'old steps left the window');
    assert.equal(servedTokens(s), 1);
  });

  it('answers NaN before any step', function () {
    const s = latencyInit(4);
    assert.ok(Number.isNaN(p95(s)));
    assert.ok(Number.isNaN(servedTokens(s)));
    assert.equal(quantile([3, 1, 2], 0.5), 2);
    assert.throws(() => latencyInit(0), /whole number ≥ 1/);
  });

  it('weighs a step by its decode sequences: the p95 of the gaps clients saw', function () {
    // 97 lone-sequence steps of 10 ms, 3 steps of 8 sequences at 30 ms: 24 of the 121 gaps are 30 ms.
    let s = latencyInit(100);
    for (let i = 0; i < 97; i++) s = latencyStep(s, decode(0.01));
    for (let i = 0; i < 3; i++) s = latencyStep(s, decode(0.03, 8));
    assert.equal(p95(s), 0.03, 'unweighted it would be 0.01 (the 95th of 100 steps)');
    assert.equal(servedTokens(s), 8, 'the batch at the p95 of the gaps');
    assert.equal(weightedQuantile([1, 2, 3], [1, 1, 1], 0.5), quantile([1, 2, 3], 0.5));
    assert.equal(weightedQuantile([5, 1], [0, 3], 1), 1, 'a weight of 0 is no sample');
  });

  it('counts a step that carries a prefill chunk with its decode sequences, and a pure prefill not', function () {
    let s = latencyInit(8);
    s = latencyStep(s, { seconds: 0.5, tokens: 64, prefillTokens: 64 });
    assert.equal(s.steps.length, 0, 'prompt tokens alone: time to first token, no inter-token gap');
    s = latencyStep(s, { seconds: 0.05, tokens: 39, prefillTokens: 32 }); // 7 decode sequences + a 32-token chunk
    assert.deepEqual([s.steps.toArray(), s.weights.toArray(), s.tokens.toArray()], [[0.05], [7], [39]]);
    assert.equal(latencyStep(s, decode(Number.NaN)), s);
  });
});

describe('step-cost estimator', function () {
  const linear = (t: number) => 0.004 + 0.0005 * t;
  const feed = (s: StepCostState, batches: number[], cost = linear) =>
    batches.reduce((st, t) => stepCostStep(st, { tokens: t, seconds: cost(t) + 0.02, computeSeconds: cost(t) }), s);
  const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`);

  it('learns a linear cost: exact between the batches it saw and past them', function () {
    const batches = Array.from({ length: 64 }, (_, i) => 1 + (i % 16)); // 1 … 16, four times
    const s = feed(stepCostInit(), batches);
    for (const t of [1, 3, 6, 8, 11.5, 16]) close(stepCostAt(s, t), linear(t), `at ${t} tokens`);
    close(stepCostAt(s, 64), linear(64), 'on past the last bin at the last segment\'s slope');
    close(stepCostAt(s, 0.5), linear(1), 'flat below the first bin');
    close(stepCostPerToken(s, 8), linear(8) / 8, 'per token');
    assert.ok(stepCostAt(s, 8) > stepCostAt(s, 1), 'a batch of 8 costs more than one token');
    // Quarter-octave bins: 1 … 8 one each, then 9 with 10, 11 with 12, 13 with 14, 15 with 16.
    assert.deepEqual(stepCostCurve(s).map((p) => p.tokens), [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15]);
  });

  it('is robust to a stalled step, and a rare shape speaks only from minSamples steps on', function () {
    let s = feed(stepCostInit(64, 3), [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8]);
    const before = stepCostAt(s, 4);
    s = stepCostStep(s, { tokens: 4, seconds: 0.5, computeSeconds: 0.5 }); // a GC pause
    assert.equal(stepCostAt(s, 4), before, 'the bin\'s median did not move');
    s = stepCostStep(s, { tokens: 40, seconds: 0.5, computeSeconds: 0.5 }); // one stalled step of a chunk-sized shape
    close(stepCostAt(s, 40), linear(40), 'a lone step in its bin is no point: on at the slope');
    s = feed(s, [40, 40]);
    close(stepCostAt(s, 40), linear(40), 'three steps: the median of them');
  });

  it('forgets steps past its window, and never has more tokens cost less', function () {
    let s = feed(stepCostInit(12, 3), [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8]);
    const slower = (t: number) => 2 * linear(t);
    s = feed(s, [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8], slower);
    assert.equal(s.tokens.length, 12);
    close(stepCostAt(s, 6), slower(6), 'only the last 12 steps');
    // A bin whose median is below the one before it is lifted to it (the model errs slow).
    const dip = feed(stepCostInit(64, 1), [1, 2, 4], (t) => (t === 2 ? 0.001 : linear(t)));
    assert.equal(stepCostAt(dip, 2), linear(1));
  });

  it('answers the median of all until a bin has minSamples steps; NaN before any; ignores bad steps', function () {
    let s = stepCostInit(16, 3);
    assert.ok(Number.isNaN(stepCostAt(s, 1)));
    s = stepCostStep(s, { tokens: 1, seconds: 0.01, computeSeconds: 0.5 });
    assert.equal(stepCostAt(s, 8), 0.01, 'compute is at most the step; one step: flat');
    assert.equal(stepCostStep(s, { tokens: 0, seconds: 0.01, computeSeconds: 0 }), s);
    assert.equal(stepCostStep(s, { tokens: 2, seconds: Number.NaN, computeSeconds: 0 }), s);
    assert.throws(() => stepCostInit(0), /whole number ≥ 1/);
    assert.throws(() => stepCostInit(4, 5), /minSamples/);
  });

  it('keeps its bins in step with the window: the curve equals the definition recomputed from the last `window` steps, on 400 random steps and on branches', function () {
    // The definition, from scratch: group the window's steps by round(4·log2 tokens), each bin
    // with minSamples steps a point (median tokens, median compute), the envelope applied.
    const definition = (steps: [number, number][], minSamples: number) => {
      const bins = new Map<number, [number, number][]>();
      for (const st of steps) {
        const k = Math.round(4 * Math.log2(st[0]));
        bins.set(k, [...(bins.get(k) ?? []), st]);
      }
      const points: { tokens: number; seconds: number; samples: number }[] = [];
      for (const k of [...bins.keys()].sort((a, b) => a - b)) {
        const b = bins.get(k)!;
        if (b.length < minSamples) continue;
        const seconds = Math.max(quantile(b.map((x) => x[1]), 0.5), points.at(-1)?.seconds ?? 0);
        points.push({ tokens: quantile(b.map((x) => x[0]), 0.5), seconds, samples: b.length });
      }
      return points;
    };
    const r = rng(7);
    const window = 24;
    let s = stepCostInit(window, 2);
    const seen: [number, number][] = [];
    for (let i = 0; i < 400; i++) {
      const tokens = 1 + Math.floor(r() ** 2 * 40);
      const compute = Math.round(r() * 1000) / 1e5; // repeats: equal values enter and leave bins
      s = stepCostStep(s, { tokens, seconds: 1, computeSeconds: compute });
      seen.push([tokens, compute]);
      assert.deepEqual(stepCostCurve(s), definition(seen.slice(-window), 2), `after step ${i}`);
    }
    // A state folded two ways keeps both futures apart.
    const a = stepCostStep(s, { tokens: 3, seconds: 1, computeSeconds: 0.5 });
    const b = stepCostStep(s, { tokens: 3, seconds: 1, computeSeconds: 0.001 });
    assert.deepEqual(stepCostCurve(a), definition([...seen, [3, 0.5] as [number, number]].slice(-window), 2));
    assert.deepEqual(stepCostCurve(b), definition([...seen, [3, 0.001] as [number, number]].slice(-window), 2));
    assert.deepEqual(stepCostCurve(s), definition(seen.slice(-window), 2), 'the state both came from is unchanged');
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
    s = movesStep(s, { prefillTokens: 0 });
    assert.deepEqual([0, 1, 2].map((l) => movesPerToken(s, l)), [2, 0, 1]);
    s = movesStep(movesTransfer(movesTransfer(movesTransfer(movesTransfer(s, 0), 0), 0), 0), { prefillTokens: 0 });
    assert.deepEqual([0, 1, 2].map((l) => movesPerToken(s, l)), [3, 0, 0.5], 'half way to 4, 0 and 0');
  });

  it('counts a batch\'s moves per step, not per sequence', function () {
    // Eight sequences in one decode step: layer 0 moved 5 experts for all of them.
    let s = movesInit(1, 0.5);
    for (let i = 0; i < 5; i++) s = movesTransfer(s, 0);
    s = movesStep(s, { prefillTokens: 0 });
    assert.equal(movesPerToken(s, 0), 5);
  });

  it('leaves a prefill\'s moves out of the per-step rate, and ignores a layer it does not have', function () {
    let s = movesStep(movesTransfer(movesInit(2, 0.5), 1), { prefillTokens: 0 });
    const before = movesPerToken(s, 1);
    s = movesStep(movesTransfer(movesTransfer(s, 1), 1), { prefillTokens: 12 }); // a 12-token prefill
    assert.equal(movesPerToken(s, 1), before);
    s = movesStep(movesTransfer(movesTransfer(movesTransfer(s, 1), 1), 1), { prefillTokens: 32 }); // a chunk riding with decode tokens
    assert.equal(movesPerToken(s, 1), before);
    s = movesStep(s, { prefillTokens: 0 });
    assert.equal(movesPerToken(s, 1), before / 2, 'the prefill\'s moves did not carry into the next step');
    assert.equal(movesTransfer(s, 5), s);
    assert.throws(() => movesInit(2, 0), /alpha must be in \(0, 1\]/);
  });

  it('counts a decode step\'s demand lookups in tier A per layer (not prefetches, not tier B, not prefill steps)', function () {
    let s = movesInit(2, 0.5);
    assert.ok(Number.isNaN(lookupsPerStep(s, 0)));
    const look = (layer: number, tier: 'A' | 'B' = 'A', prefetch = false) => (s = movesLookup(s, { layer, tier, prefetch }));
    look(0); look(0); look(0); look(1); look(0, 'A', true); look(1, 'B'); look(7);
    s = movesStep(s, { prefillTokens: 0 });
    assert.deepEqual([lookupsPerStep(s, 0), lookupsPerStep(s, 1)], [3, 1]);
    look(0); look(0); look(0); look(0); look(0);
    s = movesStep(s, { prefillTokens: 16 });
    assert.deepEqual([lookupsPerStep(s, 0), lookupsPerStep(s, 1)], [3, 1], 'a prefill step\'s lookups are no decode step\'s');
    look(0);
    s = movesStep(s, { prefillTokens: 0 });
    assert.deepEqual([lookupsPerStep(s, 0), lookupsPerStep(s, 1)], [2, 0.5]);
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

describe('rolling window (the estimators\' immutable windows)', function () {
  it('keeps the last `size` values, oldest first, and never changes a window once made, whichever branch is pushed onto', function () {
    const a = Window.of(3, [1, 2, 3]);
    const b = a.push(4);
    const c = a.push(5); // a branch from a: copies, leaves b alone
    const d = b.push(6);
    assert.deepEqual([a.toArray(), b.toArray(), c.toArray(), d.toArray()], [[1, 2, 3], [2, 3, 4], [2, 3, 5], [3, 4, 6]]);
    assert.deepEqual([...d], [3, 4, 6]);
    assert.deepEqual([d.at(0), d.at(2), d.at(3), d.at(-1)], [3, 6, undefined, undefined]);
    assert.deepEqual([windowMin(d), windowMax(d), windowMin(Window.empty(2), 7)], [3, 6, 7]);
    // A long run compacts its buffer and still holds exactly its last values.
    let w = Window.empty<number>(5);
    const olds: Window<number>[] = [];
    for (let i = 0; i < 1000; i++) {
      w = w.push(i);
      if (i % 97 === 0) olds.push(w);
    }
    assert.deepEqual(w.toArray(), [995, 996, 997, 998, 999]);
    olds.forEach((o, j) => {
      const last = 97 * j;
      assert.deepEqual(o.toArray(), Array.from({ length: Math.min(5, last + 1) }, (_, i) => last - Math.min(5, last + 1) + 1 + i), `the window made at step ${last}`);
    });
    assert.throws(() => Window.empty(0), /whole number ≥ 1/);
  });
});
