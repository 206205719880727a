// The controller's timing, in virtual time (RxJS TestScheduler): it decides at most once per
// period on the freshest state; it degrades at once but upgrades only after a stable window; a
// layer keeps a level for its dwell time; the watchdog freezes the plan when telemetry stops;
// a dry run decides and reports but changes nothing; freeze holds; a failing canary rolls back
// and quarantines. The decision rules themselves (decide.ts) are exercised through the same runs.
// With batches: reduce() counts a step by its shape, and at a larger batch the same link
// leaves less of the SLA, so the controller degrades where a lone sequence would hold.
import assert from 'node:assert/strict';

import { Controller, reduce, type ControllerOptions } from '../src/control/controller.js';
import { decide } from '../src/control/decide.js';
import type { PrecisionPlan } from '../src/offload/plan.js';
import type { OffloadSample } from '../src/offload/telemetry.js';
import { simulate } from './helpers/controller-run.js';

const L = 4;
const LEVELS = 4; // 0 loosest … 3 tightest
const base = (over: Partial<ControllerOptions> = {}): ControllerOptions => ({
  levelBytes: Array.from({ length: L }, () => [10e3, 20e3, 40e3, 80e3]),
  lookupsPerToken: 2,
  sensitivity: Array.from({ length: L }, (_, l) => [0.08, 0.04, 0.02, 0].map((s) => s * (l + 1))), // deeper layers costlier
  floor: new Array(L).fill(0),
  ceiling: new Array(L).fill(LEVELS - 1),
  hysteresis: { stable_window_ms: 50, tolerance: 0.1, dwell_ms: 0, max_layers_per_decision: L, stale_after_ms: 1000, headroom: 1 },
  decideEveryMs: 10,
  canaryFloor: { top1_agreement: 0.97 },
  quarantineMs: 100,
  slaSeconds: 0.05,
  bandwidth: { priorBytesPerSecond: 8e6, priorBytes: 0, minBytes: 0 },
  ...over,
});

const token = (seconds: number): OffloadSample => ({ kind: 'token', at: 0, tokens: 1, sequences: 1, prefillTokens: 0, seconds, computeSeconds: 0.01, transferWaitSeconds: seconds - 0.01, decompressWaitSeconds: 0 });
const transfer = (bytesPerSecond: number, layer = 0): OffloadSample => ({ kind: 'transfer', at: 0, layer, expert: 0, rung: 3, fromRung: 0, bytes: 80e3, seconds: 80e3 / bytesPerSecond, link: 'emulated', emulated: true, prefetch: false });
/** A step of `batch` decode sequences (compute 10 ms + 4 ms per further sequence) whose experts moved at `bps`. */
const compute = (batch: number) => 0.01 + 0.004 * (batch - 1);
function batchStep(c: Controller, batch: number, bps: number) {
  for (let l = 0; l < L; l++) for (let k = 0; k < 2; k++) c.samples.next(transfer(bps, l));
  const link = (2 * L * 80e3) / bps;
  c.samples.next({ kind: 'token', at: 0, tokens: batch, sequences: batch, prefillTokens: 0, seconds: compute(batch) + link, computeSeconds: compute(batch), transferWaitSeconds: link, decompressWaitSeconds: 0 });
}
const miss = (layer: number): OffloadSample => ({ kind: 'cache', at: 0, layer, tier: 'A', result: 'miss', prefetch: false });


/** Telemetry of a slow link: every lookup misses (two per layer), tokens take `seconds`, one every 2 ms. */
function slowTokens(c: Controller, at: (ms: number, f: () => void) => void, from: number, to: number, seconds: number, bps: number) {
  for (let t = from; t < to; t += 2) {
    at(t, () => {
      for (let l = 0; l < L; l++) {
        c.samples.next(miss(l));
        c.samples.next(transfer(bps, l));
        c.samples.next(miss(l));
        c.samples.next(transfer(bps, l));
      }
      c.samples.next(token(seconds));
    });
  }
}

describe('reduce (a step by its shape)', function () {
  const fresh = () => {
    const c = new Controller(base());
    const st = c.state$.value;
    c.stop();
    return st;
  };
  const step = (tokens: number, sequences: number, prefillTokens: number): OffloadSample => ({
    kind: 'token', at: 0, tokens, sequences, prefillTokens, seconds: 0.03, computeSeconds: 0.02, transferWaitSeconds: 0.01, decompressWaitSeconds: 0,
  });
  const moved = (st: ReturnType<typeof fresh>) => reduce(reduce(st, transfer(8e6, 1), 0), transfer(8e6, 1), 0);

  it('counts a batched decode step (8 tokens, 8 sequences, no prompt tokens) as a decode step', function () {
    const asked: number[] = [];
    const st = reduce(moved(fresh()), step(8, 8, 0), 1, (_, tokens) => (asked.push(tokens), 0.03));
    assert.deepEqual(st.latency.steps.toArray(), [0.03]);
    assert.deepEqual(st.latency.weights.toArray(), [8], 'eight gaps clients saw');
    assert.deepEqual(st.stepCost.tokens.toArray(), [8]);
    assert.equal(st.moves.perToken[1], 2, 'the batch\'s moves, once per step');
    assert.deepEqual(asked, [8], 'the model\'s prediction for it is at its own tokens');
    assert.deepEqual(st.modelError.ratios.toArray(), [1]);
  });

  it('leaves a prefill step out, and counts a step with a chunk and decode sequences as a gap but not for the moves', function () {
    const asked: number[] = [];
    const predict = (_: unknown, tokens: number) => (asked.push(tokens), 0.03);
    const prefill = reduce(moved(fresh()), step(12, 1, 12), 1, predict);
    assert.deepEqual([prefill.latency.steps.length, prefill.stepCost.tokens.length, prefill.modelError.ratios.length], [0, 0, 0]);
    assert.ok(Number.isNaN(prefill.moves.perToken[1]), 'not a decode step\'s moves');
    assert.deepEqual(prefill.moves.pending, [0, 0, 0, 0], 'its moves do not carry into the next step');
    assert.equal(prefill.samples, 3);
    // Seven decode sequences and a 32-token chunk of a joining prompt, in one step.
    const mixed = reduce(moved(fresh()), step(39, 8, 32), 1, predict);
    assert.deepEqual([mixed.latency.steps.toArray(), mixed.latency.weights.toArray(), mixed.stepCost.tokens.toArray()], [[0.03], [7], [39]]);
    assert.ok(Number.isNaN(mixed.moves.perToken[1]));
    assert.deepEqual(asked, [39]);
  });
});

describe('controller (virtual time)', function () {
  it('decides at most once per period, on the freshest state', function () {
    const r = simulate(base(), (c, at) => slowTokens(c, at, 1, 95, 0.04, 8e6), 100);
    assert.deepEqual(r.decisions.map((d) => d.t), [10, 20, 30, 40, 50, 60, 70, 80, 90]);
    // Ten samples arrive between ticks; each decision saw the last of them.
    const counted = r.decisions.map((d) => d.inputs?.p95Seconds);
    assert.ok(counted.every((p) => p === 0.04), `${counted}`);
  });

  it('degrades at the first tick after p95 goes over the SLA, in the planner\'s order', function () {
    // 4 layers × 2 fetches × 80 kB at 8 MB/s = 80 ms of link per token at the top level.
    const r = simulate(base(), (c, at) => slowTokens(c, at, 1, 60, 0.09, 8e6), 60);
    const first = r.decisions.find((d) => d.action === 'degrade');
    assert.ok(first, r.decisions.map((d) => d.reason).join('\n'));
    assert.equal(first.t, 10);
    assert.ok(first.changes.every((ch) => ch.to < ch.from));
    // The shallowest layer is the cheapest to loosen here: it moves first and furthest.
    const plan = r.plans[r.plans.length - 1].levels;
    assert.ok(plan[0] <= plan[L - 1], `${plan}`);
  });

  it('degrades on the model\'s prediction when the link slows, before the measured p95 has moved', function () {
    const r = simulate(base(), (c, at) => {
      slowTokens(c, at, 1, 100, 0.02, 1e9); // a fast link: the model learns how far off it is
      slowTokens(c, at, 101, 102, 0.2, 1e6); // one step's moves on a link 1000× slower
    }, 115);
    assert.ok(r.decisions.filter((d) => d.t < 101).every((d) => d.action === 'hold'), 'nothing to do on the fast link');
    const first = r.decisions.find((d) => d.action === 'degrade');
    assert.ok(first, r.decisions.map((d) => `${d.t} ${d.reason}`).join('\n'));
    assert.equal(first.t, 110, 'the first tick after the slow moves');
    assert.ok(first.inputs!.p95Seconds! < 0.05, `measured p95 ${first.inputs!.p95Seconds} still under the SLA`);
    assert.ok(first.inputs!.predictedP95Seconds > 0.05, `predicted p95 ${first.inputs!.predictedP95Seconds} over it`);
  });

  it('at a larger batch degrades on the same link where a lone sequence holds, then holds on a plan that fits', function () {
    // A fast link for 100 ms (the model learns its error), then one step's moves at 20 MB/s: 32 ms
    // of link a step at the tightest plan. With one sequence (10 ms of compute) that fits the
    // 50 ms SLA; with eight (38 ms) it does not. The measured p95 is under the SLA either way.
    const run = (batch: number) =>
      simulate(base(), (c, at) => {
        for (let t = 1; t < 100; t += 2) at(t, () => batchStep(c, batch, 1e9));
        at(101, () => batchStep(c, batch, 2e7));
      }, 125);
    const lone = run(1);
    assert.ok(lone.decisions.every((d) => d.action === 'hold'), lone.decisions.map((d) => `${d.t} ${d.reason}`).join('\n'));
    assert.equal(lone.plans.length, 1);
    assert.ok(lone.decisions.at(-1)!.inputs!.predictedP95Seconds < 0.05 * 0.9);

    const busy = run(8);
    const first = busy.decisions.find((d) => d.action !== 'hold');
    assert.ok(first, busy.decisions.map((d) => `${d.t} ${d.reason}`).join('\n'));
    assert.equal(first.action, 'degrade');
    assert.equal(first.t, 110, 'the first tick after the slow moves');
    assert.equal(first.inputs!.tokensPerStep, 8);
    assert.ok(Math.abs(first.inputs!.computeSeconds! - compute(8)) < 1e-9, `${first.inputs!.computeSeconds}`);
    assert.ok(first.inputs!.p95Seconds! < 0.05, `measured p95 ${first.inputs!.p95Seconds} still under the SLA`);
    assert.ok(first.inputs!.predictedP95Seconds > 0.05, `predicted p95 ${first.inputs!.predictedP95Seconds} over it`);
    const after = busy.decisions.filter((d) => d.t > first.t);
    assert.ok(after.length && after.every((d) => d.action === 'hold'), 'holds once the plan fits');
    assert.ok(after.at(-1)!.inputs!.predictedP95Seconds <= 0.05, `${after.at(-1)!.inputs!.predictedP95Seconds}`);
    assert.ok(busy.plans.at(-1)!.levels.some((lv) => lv < LEVELS - 1));
  });

  it('trusts a measured p95 under the SLA over a model whose error it does not know yet', function () {
    // At 8e6 B/s the model predicts 170 ms a step; the steps measure 20 ms. Until 8 steps have
    // shown how far off it is, the measurement wins; after, the model's error is 0.25 (its clamp).
    const r = simulate(base(), (c, at) => slowTokens(c, at, 1, 60, 0.02, 8e6), 60);
    assert.ok(r.decisions.every((d) => d.action === 'hold'), r.decisions.map((d) => `${d.t} ${d.reason}`).join('\n'));
    assert.equal(r.decisions[0].inputs!.modelErrorP95, 1, 'the first tick: error not known');
    assert.ok(r.decisions[0].inputs!.predictedP95Seconds > 0.05, 'the uncalibrated prediction is over the SLA');
    assert.equal(r.plans.length, 1);
  });

  it('acts on a p95 just over the SLA, and holds inside the tolerance band below it', function () {
    // 4e7 B/s: the model predicts 42 ms for the tightest plan; steps measure 52.5 ms (5 % over the SLA) or 48 ms.
    const over = simulate(base(), (c, at) => slowTokens(c, at, 1, 60, 0.0525, 4e7), 60);
    const d = over.decisions.find((x) => x.action === 'degrade');
    assert.ok(d, over.decisions.map((x) => `${x.t} ${x.reason}`).join('\n'));
    assert.ok(d.inputs!.p95Seconds! < 0.05 * 1.1, 'inside what a band around the SLA would have tolerated');
    const inside = simulate(base(), (c, at) => slowTokens(c, at, 1, 60, 0.048, 4e7), 60);
    assert.ok(inside.decisions.every((x) => x.action === 'hold'), inside.decisions.map((x) => `${x.t} ${x.reason}`).join('\n'));
    assert.match(inside.decisions[inside.decisions.length - 1].reason, /within the tolerance band below the SLA/);
    assert.equal(inside.plans.length, 1, 'no plan but the first');
  });

  it('upgrades toward the safest target its stable window saw, not the latest', function () {
    // The state of a fast link, where the planner's target is the tightest plan.
    const c = new Controller(base());
    for (let i = 0; i < 20; i++) {
      for (let l = 0; l < L; l++) for (let k = 0; k < 2; k++) c.samples.next(transfer(1e9, l));
      c.samples.next(token(0.012));
    }
    const state = c.state$.value;
    const o = base();
    c.stop();
    const ctx = {
      now: 1000, state, levels: [0, 0, 0, 0], lastChange: new Array<number>(L).fill(-Infinity), slaSeconds: o.slaSeconds, hysteresis: o.hysteresis,
      levelBytes: o.levelBytes, lookupsPerToken: o.lookupsPerToken, sensitivity: o.sensitivity, floor: o.floor, ceiling: o.ceiling, frozen: false,
    };
    // A window that began 100 ms ago and saw, at a dip, a target of [1, 2, 1, 2]:
    const up = decide({ ...ctx, tighterSince: 900, safestTarget: [1, 2, 1, 2] });
    assert.equal(up.decision.action, 'upgrade', up.decision.reason);
    assert.deepEqual(up.decision.inputs!.targetLevels, [3, 3, 3, 3], 'today\'s target is the tightest plan');
    assert.deepEqual(up.decision.levels, [1, 2, 1, 2], 'the window\'s safest target is what it moves to');
    assert.equal(up.safestTarget, null, 'a new window starts after the upgrade');
    // A window just opened: it waits, and carries the safest target on.
    const wait = decide({ ...ctx, tighterSince: 990, safestTarget: [2, 3, 3, 1] });
    assert.equal(wait.decision.action, 'hold');
    assert.deepEqual(wait.safestTarget, [2, 3, 3, 1]);
    assert.equal(wait.tighterSince, 990);
  });

  it('loosens no further than its loss budget, and says why it holds over the SLA', function () {
    // The same slow link as above; a budget of 0.05 allows loosening layer 0 to level 1 (0.04)
    // but not to level 0 (0.08), nor layer 1 one level (0.04 + 0.04).
    const r = simulate(base({ lossBudget: 0.05 }), (c, at) => slowTokens(c, at, 1, 60, 0.09, 8e6), 60);
    const plan = r.plans[r.plans.length - 1].levels;
    assert.deepEqual(plan, [1, 3, 3, 3]);
    const last = r.decisions[r.decisions.length - 1];
    assert.equal(last.action, 'hold');
    assert.match(last.reason, /more loss than the accuracy floor allows \(budget 0.05\)/);
    assert.ok(last.inputs!.targetLoss <= 0.05);
  });

  it('upgrades only after the stable window, then waits a window again', function () {
    const start: PrecisionPlan = { version: 1, levels: [0, 0, 0, 0] };
    // Fast tokens from t = 1 on: the target is tighter; the window is 50 ms.
    const r = simulate(base({ initialPlan: start }), (c, at) => slowTokens(c, at, 1, 200, 0.01, 1e9), 200);
    const ups = r.decisions.filter((d) => d.action === 'upgrade');
    assert.ok(ups.length >= 1, r.decisions.map((d) => `${d.t} ${d.reason}`).join('\n'));
    assert.equal(ups[0].t, 60, 'first tick at which the tighter target has held 50 ms (since t = 10)');
    const waits = r.decisions.filter((d) => d.t > 10 && d.t < 60);
    assert.ok(waits.every((d) => d.action === 'hold' && /stable window/.test(d.reason)));
    if (ups.length > 1) assert.ok(ups[1].t - ups[0].t >= 50, 'a new window after each upgrade');
  });

  it('keeps a layer at its level for the dwell time', function () {
    const opts = base({ hysteresis: { ...base().hysteresis, dwell_ms: 40, max_layers_per_decision: 1 } });
    const r = simulate(opts, (c, at) => slowTokens(c, at, 1, 120, 0.2, 2e6), 120);
    const changes = r.decisions.flatMap((d) => d.changes.map((ch) => ({ t: d.t, layer: ch.layer })));
    for (let l = 0; l < L; l++) {
      const ts = changes.filter((ch) => ch.layer === l).map((ch) => ch.t);
      for (let i = 1; i < ts.length; i++) assert.ok(ts[i] - ts[i - 1] >= 40, `layer ${l} changed at ${ts}`);
    }
    assert.ok(r.decisions.every((d) => d.changes.length <= 1), 'at most one layer per decision');
  });

  it('freezes the plan when telemetry goes stale, and resumes when it flows again', function () {
    const opts = base({ hysteresis: { ...base().hysteresis, stale_after_ms: 30 } });
    const r = simulate(opts, (c, at) => {
      slowTokens(c, at, 1, 4, 0.01, 1e9); // a fast link, then silence, then a slow one
      slowTokens(c, at, 100, 130, 0.2, 2e6);
    }, 140);
    const stale = r.decisions.filter((d) => /telemetry stale/.test(d.reason)).map((d) => d.t);
    assert.deepEqual(stale, [40, 50, 60, 70, 80, 90]); // samples resume at 100, before that frame's tick
    assert.ok(r.plans.every((p) => p.t < 40 || p.t >= 100), 'no plan published while stale');
    assert.ok(r.decisions.some((d) => d.t >= 100 && d.action === 'degrade'), 'decides again once samples flow');
  });

  it('in dry run decides and reports, but publishes no plan', function () {
    const r = simulate(base({ dryRun: true }), (c, at) => slowTokens(c, at, 1, 60, 0.09, 8e6), 60);
    const d = r.decisions.find((x) => x.action === 'degrade');
    assert.ok(d && d.dryRun, 'a degrade was decided, marked dry run');
    assert.equal(r.plans.length, 1, 'only the initial plan');
  });

  it('holds while frozen by an operator', function () {
    const r = simulate(base(), (c, at) => {
      at(0, () => c.freeze());
      slowTokens(c, at, 1, 60, 0.09, 8e6);
      at(35, () => c.unfreeze());
    }, 60);
    assert.ok(r.decisions.filter((d) => d.t < 35).every((d) => d.action === 'hold' && /frozen/.test(d.reason)));
    assert.ok(r.decisions.some((d) => d.t > 35 && d.action === 'degrade'));
  });

  it('rolls back to the last good plan on a failing canary and quarantines what loosened', function () {
    let q: { layer: number; level: number }[] = [];
    const r = simulate(base({ quarantineMs: 1000 }), (c, at) => {
      slowTokens(c, at, 1, 300, 0.09, 8e6);
      at(15, () => c.canaries.next({ kind: 'canary', at: 0, planVersion: c.plan.version, top1Agreement: 0.9 }));
      at(16, () => (q = c.quarantined()));
    }, 60);
    const rb = r.decisions.find((d) => d.action === 'rollback');
    assert.ok(rb, r.decisions.map((d) => d.reason).join('\n'));
    assert.equal(rb.t, 15);
    assert.deepEqual(rb.levels, [3, 3, 3, 3], 'the first plan was the last good one');
    assert.ok(q.length > 0, 'something was quarantined');
    // After the rollback no quarantined (layer, level) or anything looser comes back.
    for (const p of r.plans.filter((x) => x.t > 15)) for (const { layer, level } of q) assert.ok(p.levels[layer] > level, `plan ${p.version}: layer ${layer} at ${p.levels[layer]}`);
    assert.equal(r.controller.counts.rollbacks, 1);
  });
});
