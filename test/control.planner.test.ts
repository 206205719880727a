// The planner, a pure function: with ample bandwidth every layer sits at its ceiling; it loosens
// the layer whose move costs the least accuracy per second saved; floors and ceilings always hold;
// lower bandwidth never gives a tighter plan and a looser SLA never a looser one (property tests
// over seeded random inputs); fed by the controller's estimators, it predicts more compute at a
// larger batch and never plans tighter for one.
import assert from 'node:assert/strict';

import { reduce } from '../src/control/controller.js';
import { plannedTokens, plannerInput, type ControlState } from '../src/control/decide.js';
import { bandwidthInit } from '../src/control/estimators/bandwidth.js';
import { latencyInit } from '../src/control/estimators/latency.js';
import { missInit } from '../src/control/estimators/miss-rate.js';
import { modelErrorInit } from '../src/control/estimators/model-error.js';
import { movesInit } from '../src/control/estimators/moves.js';
import { stepCostInit } from '../src/control/estimators/step-cost.js';
import { capacityMissShare, fetchesAt, planLevels, predictLoss, predictSeconds, type PlannerInput } from '../src/control/planner.js';
import { rng } from './codec/data.js';

/** A random but well-formed input: bytes grow with the level, sensitivity falls to 0 at the top. */
function randomInput(seed: number): PlannerInput {
  const r = rng(seed);
  const L = 2 + Math.floor(r() * 10);
  const N = 2 + Math.floor(r() * 5);
  const levelBytes: number[][] = [];
  const sensitivity: number[][] = [];
  const floor: number[] = [];
  const ceiling: number[] = [];
  for (let l = 0; l < L; l++) {
    let b = 1e4 + r() * 5e4;
    levelBytes.push(Array.from({ length: N }, () => (b += 5e3 + r() * 4e4)));
    const w = r() * 2;
    sensitivity.push(Array.from({ length: N }, (_, k) => (k === N - 1 ? 0 : w * 2 ** (N - 1 - k) * (0.5 + r()))).map((v, k, a) => Math.max(v, ...a.slice(k + 1))));
    const lo = Math.floor(r() * N);
    floor.push(Math.min(lo, N - 1));
    ceiling.push(lo + Math.floor(r() * (N - lo)));
  }
  return {
    levelBytes, sensitivity, floor, ceiling,
    fetchesPerToken: Array.from({ length: L }, () => (r() < 0.1 ? 0 : r() * 2)),
    bandwidth: 1e6 + r() * 1e8,
    overhead: r() < 0.5 ? 0 : r() * 1e-4,
    computeSeconds: 0.005 + r() * 0.02,
    slaSeconds: 0.01 + r() * 0.2,
    // Half the inputs carry a loss budget: the properties below must hold with one too.
    lossBudget: r() < 0.5 ? undefined : r() * L,
    // And half a tier A too small for some plans (shared or split per layer), measured at a random plan.
    capacity: r() < 0.5 ? undefined : {
      bytes: L * 8 * 4e4 * (0.5 + r()),
      layerBytes: r() < 0.5 ? undefined : Array.from({ length: L }, () => 8 * 4e4 * (0.5 + r())),
      heldBytes: levelBytes.map((row) => row.map((b) => b * (r() < 0.3 ? 0 : 1) + 1e4)),
      experts: 8,
      lookupsPerStep: Array.from({ length: L }, () => r() * 3),
      measuredAt: floor.map((f, l) => f + Math.floor(r() * (N - f))),
    },
  };
}

const tighterOrEqual = (a: number[], b: number[]) => a.every((lv, l) => lv >= b[l]);

describe('planner', function () {
  const two: PlannerInput = {
    levelBytes: [[100, 200, 400], [100, 200, 400]],
    fetchesPerToken: [1, 1],
    bandwidth: 1e4, // 400 bytes: 40 ms
    overhead: 0,
    computeSeconds: 0.01,
    slaSeconds: 1,
    headroom: 1,
    sensitivity: [[0.5, 0.1, 0], [0.05, 0.01, 0]], // layer 1 is ten times more tolerant
    floor: [0, 0],
    ceiling: [2, 2],
  };

  it('keeps every layer at its ceiling when the link is fast enough', function () {
    const p = planLevels(two);
    assert.deepEqual(p.levels, [2, 2]);
    assert.deepEqual(p.moves, []);
    assert.ok(p.meetsTarget);
  });

  it('loosens the tolerant layer first, one level at a time, until the prediction meets the target', function () {
    const p = planLevels({ ...two, slaSeconds: 0.075 }); // 10 ms + 40 + 40 = 90 ms at the ceiling
    assert.deepEqual(p.moves.map((m) => [m.layer, m.from, m.to]), [[1, 2, 1]]);
    assert.deepEqual(p.levels, [2, 1]);
    assert.equal(p.predictedSeconds, predictSeconds({ ...two }, [2, 1]));
    const q = planLevels({ ...two, slaSeconds: 0.045 });
    assert.deepEqual(q.levels, [1, 0], 'layer 1 to its floor before layer 0 pays');
  });

  it('says when even the floors miss the target, and stays at the floors', function () {
    const p = planLevels({ ...two, slaSeconds: 0.001 });
    assert.deepEqual(p.levels, [0, 0]);
    assert.equal(p.meetsTarget, false);
  });

  it('takes no move past the loss budget, and says the budget stopped it', function () {
    // At 45 ms the SLA wants [1, 0] (loss 0.1 + 0.05); a budget of 0.12 allows layer 1's two moves only.
    const p = planLevels({ ...two, slaSeconds: 0.045, lossBudget: 0.12 });
    assert.deepEqual(p.levels, [2, 0]);
    assert.equal(p.meetsTarget, false);
    assert.equal(p.stoppedByBudget, true);
    assert.ok(Math.abs(p.predictedLoss - 0.05) < 1e-12);
    const free = planLevels({ ...two, slaSeconds: 0.045, lossBudget: 1 });
    assert.deepEqual(free.levels, [1, 0]);
    assert.equal(free.stoppedByBudget, false);
    assert.ok(free.meetsTarget);
    assert.throws(() => planLevels({ ...two, lossBudget: -1 }), /loss budget must be ≥ 0, got -1/);
  });

  it('never touches a layer that fetches nothing', function () {
    const p = planLevels({ ...two, fetchesPerToken: [1, 0], slaSeconds: 0.02 });
    assert.equal(p.levels[1], 2);
  });

  it('predicts more compute at a larger batch, and plans no tighter for it', function () {
    // The controller's estimators after steps of 1 and of 8 sequences (compute 10 ms + 4 ms per
    // further token), every step moving one 400-byte expert per layer at 10 kB/s.
    const init: ControlState = {
      bandwidth: bandwidthInit({ priorBytesPerSecond: 1e4, priorBytes: 0, minBytes: 0 }), latency: latencyInit(64), misses: missInit(2), moves: movesInit(2),
      stepCost: stepCostInit(), modelError: modelErrorInit(), lastSampleAt: 0, samples: 0,
    };
    const compute = (b: number) => 0.01 + 0.004 * (b - 1);
    let st = init;
    for (let i = 0; i < 20; i++) {
      const b = i % 2 ? 8 : 1;
      for (let l = 0; l < 2; l++) st = reduce(st, { kind: 'transfer', at: 0, layer: l, expert: 0, rung: 2, fromRung: 0, bytes: 400, seconds: 0.04, link: 'emulated', emulated: true, prefetch: false }, i);
      st = reduce(st, { kind: 'token', at: 0, tokens: b, sequences: b, prefillTokens: 0, seconds: compute(b) + 0.08, computeSeconds: compute(b), transferWaitSeconds: 0.08, decompressWaitSeconds: 0 }, i);
    }
    const ctx = { ...two, lookupsPerToken: 1, hysteresis: { stable_window_ms: 0, tolerance: 0, dwell_ms: 0, max_layers_per_decision: 2, stale_after_ms: 1, headroom: 1 } };
    const one = plannerInput(st, ctx, 1);
    const eight = plannerInput(st, ctx, 8);
    assert.ok(Math.abs(one.computeSeconds - compute(1)) < 1e-12 && Math.abs(eight.computeSeconds - compute(8)) < 1e-12, `${one.computeSeconds} ${eight.computeSeconds}`);
    assert.deepEqual(eight.fetchesPerToken, one.fetchesPerToken, 'the link\'s part is per step at any batch');
    assert.ok(predictSeconds(eight, [2, 2]) > predictSeconds(one, [2, 2]));
    // Most gaps clients saw were in the batches of 8: that is the batch planned at.
    assert.equal(plannedTokens(st), 8);
    assert.equal(plannerInput(st, ctx).computeSeconds, eight.computeSeconds);
    // A fetch costs the fixed overhead (the shortest move seen, 40 ms) + its bytes at 10 kB/s:
    // 160 ms of link a step at [2, 2]. With 10 ms of compute that fits 180 ms; with 38 ms it does not.
    const at = (x: PlannerInput, sla: number) => planLevels({ ...x, slaSeconds: sla }).levels;
    assert.deepEqual(at(one, 0.18), [2, 2]);
    assert.deepEqual(at(eight, 0.18), [2, 1], 'the larger batch leaves the link less of the SLA');
    for (const sla of [0.05, 0.1, 0.15, 0.18, 0.2, 0.3]) assert.ok(tighterOrEqual(at(one, sla), at(eight, sla)), `SLA ${sla}`);
  });

  it('counts tier A\'s capacity: a plan whose experts do not fit predicts their misses, and is not chosen while one that fits meets the SLA', function () {
    // 4 experts a layer; tier A holds 1,600 bytes: every expert at level 1 (2 × 4 × 200), half of
    // them at level 2. Measured at [1, 1]: everything fits, nothing moves.
    const x: PlannerInput = {
      ...two, fetchesPerToken: [0, 0], slaSeconds: 0.02,
      capacity: { bytes: 1600, heldBytes: two.levelBytes, experts: 4, lookupsPerStep: [2, 2], measuredAt: [1, 1] },
    };
    assert.deepEqual(capacityMissShare(x, [1, 1]), [0, 0]);
    assert.deepEqual(capacityMissShare(x, [2, 2]), [0.5, 0.5]);
    assert.deepEqual(capacityMissShare(x, [2, 1]), [1 - 1600 / 2400, 1 - 1600 / 2400]);
    assert.deepEqual(fetchesAt(x, [1, 1]), [0, 0], 'the measured plan: as measured');
    assert.deepEqual(fetchesAt(x, [2, 2]), [1, 1], 'half of 2 lookups a layer miss');
    // [2, 2]: 10 ms + 2 × 1 fetch × 400 bytes at 10 kB/s = 90 ms. Without the capacity the
    // planner saw no fetch at any plan and stayed at the ceiling.
    assert.ok(Math.abs(predictSeconds(x, [2, 2]) - 0.09) < 1e-12);
    assert.deepEqual(planLevels({ ...x, capacity: undefined }).levels, [2, 2]);
    const p = planLevels(x);
    assert.ok(p.meetsTarget);
    assert.ok(capacityMissShare(x, p.levels).every((m) => m === 0), `[${p.levels}] overflows tier A`);
    // The tolerant layer goes first (to its floor: each of its moves frees tier A for both
    // layers), then layer 0 once, and every expert fits.
    assert.deepEqual(p.moves.map((m) => [m.layer, m.from, m.to]), [[1, 2, 1], [1, 1, 0], [0, 2, 1]]);
    // Split per layer (800 bytes each), only the layer over its share misses: layer 1's first
    // move fits it, and its second would save nothing.
    const split = { ...x, capacity: { ...x.capacity!, layerBytes: [800, 800] } };
    assert.deepEqual(capacityMissShare(split, [2, 1]), [0.5, 0]);
    assert.deepEqual(planLevels(split).levels, [1, 1]);
    // Measured while thrashing at [2, 2] (1 of 2 lookups moved, plus 0.25 the capacity does not
    // explain): the same plan predicted at [1, 1] keeps only the 0.25.
    const thrashing = { ...x, fetchesPerToken: [1.25, 1.25], capacity: { ...x.capacity!, measuredAt: [2, 2] } };
    assert.deepEqual(fetchesAt(thrashing, [1, 1]), [0.25, 0.25]);
    assert.deepEqual(fetchesAt(thrashing, [2, 2]), [1.25, 1.25]);
    assert.throws(() => planLevels({ ...x, capacity: { ...x.capacity!, heldBytes: [[1, 2]] } }), /capacity.heldBytes has 1 layers, levelBytes 2/);
  });

  it('is told tier A\'s capacity by the controller: lookups per step as measured, at the plan served', function () {
    let st: ControlState = {
      bandwidth: bandwidthInit({ priorBytesPerSecond: 1e4, priorBytes: 0, minBytes: 0 }), latency: latencyInit(64), misses: missInit(2), moves: movesInit(2),
      stepCost: stepCostInit(), modelError: modelErrorInit(), lastSampleAt: 0, samples: 0,
    };
    const tierA = { bytes: 1600, heldBytes: two.levelBytes, experts: 4 };
    const ctx = { ...two, lookupsPerToken: 2, tierA, hysteresis: { stable_window_ms: 0, tolerance: 0, dwell_ms: 0, max_layers_per_decision: 2, stale_after_ms: 1, headroom: 1 } };
    // Before any step: top-k's expected union over the tokens planned at (4 experts, top-2, 1 token: 2).
    assert.deepEqual(plannerInput(st, ctx, 1, [1, 1]).capacity?.lookupsPerStep, [2, 2]);
    assert.ok(Math.abs(plannerInput(st, ctx, 2, [1, 1]).capacity!.lookupsPerStep[0] - 4 * (1 - 0.5 ** 2)) < 1e-12);
    for (const [layer, expert] of [[0, 0], [0, 1], [0, 2], [1, 3]]) st = reduce(st, { kind: 'cache', at: 0, layer, tier: 'A', result: expert % 2 ? 'hit' : 'miss', prefetch: false }, 0);
    st = reduce(st, { kind: 'token', at: 0, tokens: 1, sequences: 1, prefillTokens: 0, seconds: 0.01, computeSeconds: 0.01, transferWaitSeconds: 0, decompressWaitSeconds: 0 }, 0);
    const x = plannerInput(st, ctx, 1, [1, 0]);
    assert.deepEqual(x.capacity, { ...tierA, lookupsPerStep: [3, 1], measuredAt: [1, 0] });
    assert.equal(plannerInput(st, { ...ctx, tierA: undefined }, 1, [1, 0]).capacity, undefined);
  });

  it('refuses inputs that do not fit together, naming what', function () {
    assert.throws(() => planLevels({ ...two, floor: [0] }), /floor has 1 layers, levelBytes 2/);
    assert.throws(() => planLevels({ ...two, floor: [2, 0], ceiling: [1, 2] }), /layer 0 floor 2 and ceiling 1/);
    assert.throws(() => planLevels({ ...two, bandwidth: 0 }), /bandwidth must be > 0/);
  });

  describe('properties (300 seeded random inputs each)', function () {
    it('respects every floor and ceiling', function () {
      for (let seed = 1; seed <= 300; seed++) {
        const x = randomInput(seed);
        const p = planLevels(x);
        p.levels.forEach((lv, l) => assert.ok(lv >= x.floor[l] && lv <= x.ceiling[l], `seed ${seed} layer ${l}: ${lv} outside [${x.floor[l]}, ${x.ceiling[l]}]`));
        assert.equal(p.meetsTarget, p.predictedSeconds <= p.targetSeconds);
      }
    });

    it('with ample bandwidth gives the tightest allowed plan', function () {
      for (let seed = 1; seed <= 300; seed++) {
        const x = randomInput(seed);
        assert.deepEqual(planLevels({ ...x, bandwidth: 1e18, computeSeconds: 0 }).levels, x.ceiling, `seed ${seed}`);
      }
    });

    it('never gives a tighter plan for lower bandwidth', function () {
      for (let seed = 1; seed <= 300; seed++) {
        const x = randomInput(seed);
        const hi = planLevels(x).levels;
        for (const f of [0.9, 0.5, 0.25, 0.1]) {
          const lo = planLevels({ ...x, bandwidth: x.bandwidth * f }).levels;
          assert.ok(tighterOrEqual(hi, lo), `seed ${seed} ×${f}: [${lo}] is tighter somewhere than [${hi}]`);
        }
      }
    });

    it('keeps the predicted loss within the budget, and is the unbudgeted plan when that fits', function () {
      for (let seed = 1; seed <= 300; seed++) {
        const x = randomInput(seed);
        const free = planLevels({ ...x, slaSeconds: x.slaSeconds / 4, lossBudget: undefined });
        for (const f of [0, 0.25, 0.5, 1]) {
          const budget = f * free.predictedLoss + predictLoss(x.sensitivity, x.ceiling);
          const p = planLevels({ ...x, slaSeconds: x.slaSeconds / 4, lossBudget: budget });
          assert.ok(p.predictedLoss <= budget + 1e-9, `seed ${seed}: loss ${p.predictedLoss} over ${budget}`);
          assert.ok(Math.abs(p.predictedLoss - predictLoss(x.sensitivity, p.levels)) < 1e-9);
          assert.ok(tighterOrEqual(p.levels, free.levels), `seed ${seed}: a budget gave a looser plan`);
          if (free.predictedLoss <= budget) assert.deepEqual(p.levels, free.levels, `seed ${seed}: budget ${budget} fits, yet the plan changed`);
        }
      }
    });

    it('never gives a looser plan for a looser SLA', function () {
      for (let seed = 1; seed <= 300; seed++) {
        const x = randomInput(seed);
        const tight = planLevels(x).levels;
        for (const f of [1.1, 1.5, 2, 4]) {
          const loose = planLevels({ ...x, slaSeconds: x.slaSeconds * f }).levels;
          assert.ok(tighterOrEqual(loose, tight), `seed ${seed} ×${f}: [${loose}] is looser somewhere than [${tight}]`);
        }
      }
    });
  });
});
