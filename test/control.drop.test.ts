// The drop rungs in the control plane, and the layer-importance prior. The planner takes trim /
// skip-moe only once every layer sits at its floor and the target is still missed, only where
// allowed, and never past the loss budget; the controller publishes them in the plan's drop field
// and a failing canary rolls the drop state back and quarantines it; a policy that allows dropping
// on a profile without the measurement is a ConfigError naming the key; where no sensitivity is
// measured the profile's layer importance is the prior, the policy's u-shape only without it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';


import { ConfigError } from '../src/control/config-file.js';
import { Controller, reduce, type ControllerOptions } from '../src/control/controller.js';
import { plannerInput, type ControlState } from '../src/control/decide.js';
import { bandwidthInit } from '../src/control/estimators/bandwidth.js';
import { latencyInit } from '../src/control/estimators/latency.js';
import { missInit } from '../src/control/estimators/miss-rate.js';
import { modelErrorInit } from '../src/control/estimators/model-error.js';
import { movesInit } from '../src/control/estimators/moves.js';
import { stepCostInit } from '../src/control/estimators/step-cost.js';
import { planOf, scaleOf } from '../src/control/drop.js';
import { dropInput, plannerSensitivity } from '../src/control/index.js';
import { planLevels, predictSeconds, SKIP_MOE, TRIM, type PlannerInput } from '../src/control/planner.js';
import { loadPolicy, resolvePolicy } from '../src/control/policy.js';
import { loadProfile } from '../src/control/profile.js';
import { checkPlan, DEFAULT_LADDER } from '../src/offload/plan.js';
import { simulate } from './helpers/controller-run.js';
import type { OffloadSample } from '../src/offload/telemetry.js';

const L = 3;
/** Levels 0 (loosest) … 2 (exact); every layer's floor 0; fetches 2 per step. */
function input(over: Partial<PlannerInput> = {}): PlannerInput {
  return {
    levelBytes: Array.from({ length: L }, () => [10e3, 20e3, 40e3]),
    fetchesPerToken: new Array(L).fill(2),
    bandwidth: 1e6,
    overhead: 0,
    computeSeconds: 0.001,
    slaSeconds: 1,
    headroom: 1,
    sensitivity: Array.from({ length: L }, () => [0.02, 0.01, 0]),
    floor: new Array(L).fill(0),
    ceiling: new Array(L).fill(2),
    ...over,
  };
}
const drops = (allowed: boolean[] = [true, true], trim = [0.03, 0.05, 0.01], skip = [0.2, 0.1, 0.3]) => ({
  sensitivity: trim.map((t, l) => [t, skip[l]]),
  allowed: Array.from({ length: L }, () => [...allowed]),
  trimShare: 0.5,
});

describe('planner: drop rungs', function () {
  // Every layer at level 0 moves 3 × 2 × 10 kB = 60 kB per step: 0.061 s at 1 MB/s.
  const atFloor = 0.001 + (L * 2 * 10e3) / 1e6;

  it('never drops while a level move is left, nor when the floors meet the target', function () {
    const x = input({ slaSeconds: atFloor + 1e-6, drop: drops() });
    const out = planLevels(x);
    assert.deepEqual(out.levels, [0, 0, 0]);
    assert.ok(out.moves.every((m) => m.to >= 0), 'only level moves');
    assert.ok(out.meetsTarget);
  });

  it('past the floors, takes the cheapest drop per byte (trim before skip on a layer), in that order', function () {
    // Trimming a layer saves 10 kB per step (half its fetches): the first trim leaves 0.051 s.
    const out = planLevels(input({ slaSeconds: atFloor - 0.005, drop: drops() }));
    const drops_ = out.moves.filter((m) => m.to < 0);
    assert.deepEqual(drops_.map((m) => [m.layer, m.to]), [[2, TRIM]], 'layer 2 trims cheapest (0.01 per 10 kB)');
    assert.deepEqual(out.levels, [0, 0, TRIM]);
    assert.ok(out.meetsTarget);
    assert.ok(Math.abs(out.predictedSeconds - predictSeconds(input({ drop: drops() }), [0, 0, TRIM])) < 1e-12);
    assert.ok(Math.abs(out.predictedSeconds - (atFloor - 0.01)) < 1e-9, 'a trimmed layer moves half its bytes');
    // A much tighter SLA: everything trims, then skips, cheapest first; a skipped layer costs no link time.
    const all = planLevels(input({ slaSeconds: 0.0011, drop: drops() }));
    assert.deepEqual(all.levels, [SKIP_MOE, SKIP_MOE, SKIP_MOE]);
    assert.ok(Math.abs(all.predictedSeconds - 0.001) < 1e-12);
    const order = all.moves.filter((m) => m.to < 0).map((m) => `${m.layer}:${m.to}`);
    assert.ok(order.indexOf('0:-1') < order.indexOf('0:-2') && order.indexOf('1:-1') < order.indexOf('1:-2'), order.join(' '));
  });

  it('takes only the rungs allowed, and none without a drop input', function () {
    assert.deepEqual(planLevels(input({ slaSeconds: 0.0011 })).levels, [0, 0, 0]);
    const skipOnly = planLevels(input({ slaSeconds: 0.0011, drop: drops([false, true]) }));
    assert.ok(skipOnly.moves.every((m) => m.to !== TRIM));
    assert.deepEqual(skipOnly.levels, [SKIP_MOE, SKIP_MOE, SKIP_MOE]);
    const trimOnly = planLevels(input({ slaSeconds: 0.0011, drop: drops([true, false]) }));
    assert.deepEqual(trimOnly.levels, [TRIM, TRIM, TRIM]);
    assert.equal(trimOnly.meetsTarget, false);
  });

  it('stops at the loss budget: accuracy wins over the SLA', function () {
    // Floors cost 3 × 0.02 = 0.06; trimming layer 2 adds 0.01, layer 0 0.03 more.
    const out = planLevels(input({ slaSeconds: 0.0011, drop: drops(), lossBudget: 0.075 }));
    assert.deepEqual(out.levels, [0, 0, TRIM]);
    assert.ok(out.stoppedByBudget);
    assert.ok(Math.abs(out.predictedLoss - 0.07) < 1e-12);
  });

  it('keeps one move sequence with drops: a lower bandwidth only takes more of it', function () {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 50; trial++) {
      const d = drops([rand() < 0.7, rand() < 0.7], [rand() * 0.05, rand() * 0.05, rand() * 0.05], [rand() * 0.3, rand() * 0.3, rand() * 0.3]);
      const x = input({ drop: d, slaSeconds: 0.005 + rand() * 0.05, overhead: rand() * 1e-4, lossBudget: rand() < 0.5 ? undefined : 0.05 + rand() * 0.3 });
      const fast = planLevels({ ...x, bandwidth: 1e6 * (1 + rand() * 4) });
      const slow = planLevels({ ...x, bandwidth: 1e6 * (0.2 + rand() * 0.8) });
      const key = (m: { layer: number; to: number }) => `${m.layer}:${m.to}`;
      assert.deepEqual(slow.moves.slice(0, fast.moves.length).map(key), fast.moves.map(key), `trial ${trial}`);
      // Every drop move comes after every level move.
      const firstDrop = slow.moves.findIndex((m) => m.to < 0);
      if (firstDrop >= 0) assert.ok(slow.moves.slice(firstDrop).every((m) => m.to < 0), `trial ${trial}: a level move after a drop`);
      if (x.lossBudget !== undefined) assert.ok(slow.predictedLoss <= x.lossBudget + 1e-12);
    }
  });

  it('converts between the scale and plans (a trimmed layer is fetched at its floor)', function () {
    const plan = planOf([2, TRIM, SKIP_MOE], [0, 1, 0], 7);
    assert.deepEqual(plan, { version: 7, levels: [2, 1, 0], drop: ['none', 'trim', 'skip-moe'] });
    assert.deepEqual(scaleOf(plan), [2, TRIM, SKIP_MOE]);
    assert.deepEqual(planOf([2, 1, 0], [0, 0, 0], 1), { version: 1, levels: [2, 1, 0] }, 'no drop field without dropping');
    checkPlan(plan, DEFAULT_LADDER, 3);
    assert.throws(() => checkPlan({ ...plan, drop: ['none', 'trim'] }, DEFAULT_LADDER, 3), /drop names 2 layers/);
    assert.throws(() => checkPlan({ ...plan, drop: ['none', 'cut', 'none'] as never }, DEFAULT_LADDER, 3), /layer 1 drop cut/);
  });
});

describe('controller: drop rungs', function () {
  const token = (seconds: number): OffloadSample => ({ kind: 'token', at: 0, tokens: 1, sequences: 1, prefillTokens: 0, seconds, computeSeconds: 0.001, transferWaitSeconds: seconds - 0.001, decompressWaitSeconds: 0 });
  const transfer = (layer: number): OffloadSample => ({ kind: 'transfer', at: 0, layer, expert: 0, rung: 2, fromRung: 0, bytes: 40e3, seconds: 0.04, link: 'emulated', emulated: true, prefetch: false });
  const miss = (layer: number): OffloadSample => ({ kind: 'cache', at: 0, layer, tier: 'A', result: 'miss', prefetch: false });
  const opts = (over: Partial<ControllerOptions> = {}): ControllerOptions => ({
    levelBytes: Array.from({ length: L }, () => [10e3, 20e3, 40e3]),
    lookupsPerToken: 2,
    sensitivity: Array.from({ length: L }, () => [0.02, 0.01, 0]),
    floor: new Array(L).fill(0),
    ceiling: new Array(L).fill(2),
    hysteresis: { stable_window_ms: 50, tolerance: 0.1, dwell_ms: 0, max_layers_per_decision: L, stale_after_ms: 1000, headroom: 1 },
    decideEveryMs: 10,
    canaryFloor: { top1_agreement: 0.97 },
    quarantineMs: 1000,
    slaSeconds: 0.03,
    bandwidth: { priorBytesPerSecond: 1e6, priorBytes: 0, minBytes: 0 },
    drop: drops(),
    ...over,
  });
  /** A 1 MB/s link, every lookup a miss: at the floors a step still needs 0.061 s, twice the SLA. */
  function slow(c: Controller, at: (ms: number, f: () => void) => void, to: number) {
    for (let t = 1; t < to; t += 2) {
      at(t, () => {
        for (let l = 0; l < L; l++) for (let k = 0; k < 2; k++) {
          c.samples.next(miss(l));
          c.samples.next(transfer(l));
        }
        c.samples.next(token(0.1));
      });
    }
  }

  it('publishes drop rungs in the plan once the floors cannot meet the SLA, and logs them', function () {
    // One layer per decision: the plan loosens in steps, and no step drops a layer while another
    // still has a level to give up (levels before drops across the plan, as the planner takes them).
    const r = simulate(opts({ hysteresis: { ...opts().hysteresis, max_layers_per_decision: 1 } }), (c, at) => slow(c, at, 80), 80);
    const dropped = r.plans.find((p) => p.drop);
    assert.ok(dropped, r.decisions.map((d) => d.reason).join('\n'));
    assert.ok(dropped.drop!.some((d) => d !== 'none'));
    for (const p of r.plans.filter((x) => x.drop)) assert.deepEqual(p.levels, [0, 0, 0], `plan ${p.version} drops before every layer is at its floor: ${JSON.stringify(p)}`);
    const logged = r.decisions.find((d) => d.drop);
    assert.ok(logged && logged.levels.some((lv) => lv < 0), 'the decision log shows the drop rungs');
    // Without the drop input the same run holds at the floors.
    const plain = simulate(opts({ drop: undefined }), (c, at) => slow(c, at, 60), 60);
    assert.ok(plain.plans.every((p) => !p.drop));
    assert.ok(plain.plans.some((p) => p.levels.every((lv) => lv === 0)));
  });

  it('a failing canary restores the last good drop state and quarantines the rung', function () {
    let quarantined: { layer: number; level: number }[] = [];
    let good = 0;
    let bad = 0;
    // One layer per decision, so the plans loosen in steps a canary can tell apart.
    const r = simulate(opts({ hysteresis: { ...opts().hysteresis, max_layers_per_decision: 1 } }), (c, at) => {
      slow(c, at, 140);
      // Pass the first dropping plan, then fail a later one that drops more.
      at(45, () => {
        good = c.plan.version;
        c.canaries.next({ kind: 'canary', at: 0, planVersion: good, top1Agreement: 0.99 });
      });
      at(65, () => {
        bad = c.plan.version;
        c.canaries.next({ kind: 'canary', at: 0, planVersion: bad, top1Agreement: 0.5 });
      });
      at(66, () => (quarantined = c.quarantined()));
    }, 140);
    const goodPlan = r.plans.find((p) => p.version === good)!;
    const rb = r.decisions.find((d) => d.action === 'rollback');
    assert.ok(rb, r.decisions.map((d) => d.reason).join('\n'));
    const after = r.plans.find((p) => p.t === rb.t && p.version > good);
    const failed = r.plans.find((p) => p.version === bad)!;
    assert.ok(goodPlan.drop?.some((d) => d !== 'none'), `the passing plan drops: ${JSON.stringify(goodPlan)}`);
    assert.ok(scaleOf(failed).some((lv, l) => lv < scaleOf(goodPlan)[l]), `the failing plan is looser: ${JSON.stringify(failed)}`);
    assert.ok(after, 'the rollback published a plan');
    assert.deepEqual(scaleOf(after), scaleOf(goodPlan), 'levels and drop state are the last good plan\'s');
    assert.deepEqual(after.drop, goodPlan.drop);
    assert.ok(quarantined.length > 0);
    // Nothing at or below a quarantined rung comes back while it is quarantined.
    for (const p of r.plans.filter((x) => x.t > 65)) for (const { layer, level } of quarantined) assert.ok(scaleOf(p)[layer] > level, `plan ${p.version}: layer ${layer} at ${scaleOf(p)[layer]}`);
  });
});

describe('plannerInput: a dropped layer\'s fetches', function () {
  it('plans with each layer\'s undropped rate: a trimmed layer\'s moves over its share, a skipped one\'s last miss rate', function () {
    // Every layer: 2 lookups, one a miss (rate 0.5); then steps under the plan [skip, trim, 2] move
    // 0, 1 and 2 experts a step.
    let st: ControlState = {
      bandwidth: bandwidthInit({ priorBytesPerSecond: 1e6, priorBytes: 0, minBytes: 0 }), latency: latencyInit(64), misses: missInit(L, 0.5), moves: movesInit(L, 1),
      stepCost: stepCostInit(), modelError: modelErrorInit(), lastSampleAt: 0, samples: 0,
    };
    for (let l = 0; l < L; l++) for (const result of ['miss', 'hit'] as const) st = reduce(st, { kind: 'cache', at: 0, layer: l, tier: 'A', result, prefetch: false }, 0);
    const moved = [0, 1, 2];
    for (let l = 0; l < L; l++) for (let k = 0; k < moved[l]; k++) st = reduce(st, { kind: 'transfer', at: 0, layer: l, expert: k, rung: 2, fromRung: 0, bytes: 40e3, seconds: 0.04, link: 'emulated', emulated: true, prefetch: false }, 1);
    st = reduce(st, { kind: 'token', at: 0, tokens: 1, sequences: 1, prefillTokens: 0, seconds: 0.1, computeSeconds: 0.001, transferWaitSeconds: 0.099, decompressWaitSeconds: 0 }, 1);
    const ctx = {
      levelBytes: input().levelBytes, lookupsPerToken: 2, slaSeconds: 0.05, sensitivity: input().sensitivity, floor: input().floor, ceiling: input().ceiling,
      hysteresis: { stable_window_ms: 0, tolerance: 0, dwell_ms: 0, max_layers_per_decision: 1, stale_after_ms: 1, headroom: 1 }, drop: drops(),
    };
    assert.deepEqual(plannerInput(st, ctx, 1, [SKIP_MOE, TRIM, 2]).fetchesPerToken, [2 * 0.5, 1 / 0.5, 2]);
    assert.deepEqual(plannerInput(st, ctx, 1).fetchesPerToken, [0, 1, 2], 'without the plan: as measured');
  });
});

describe('policy and profile: drop keys and the importance prior', function () {
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-drop-'));
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const write = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
  };
  const policyWith = (drop: string) => loadPolicy(write('p.yaml', `${fs.readFileSync('policies/u-shape.yaml', 'utf8')}\n${drop}\n`));
  const PROFILE = `name: t
link: { prior_bytes_per_second: 1000000 }
device: { experts_per_layer: 2 }
sla: { p95_inter_token_seconds: 0.01 }
`;
  const SENS = `sensitivity:
  error_model: codec
  metric: 1 - top1_agreement
  bound_mode: sigma
  bounds: [0.5, 0.25, 0.125, 0.0625, 0.03125]
  exact: true
  layers: [[0.1, 0.05, 0.02, 0.01, 0, 0], [0.1, 0.05, 0.02, 0.01, 0, 0]]
`;

  it('dropping is off by default; allowed without a measurement it is an error naming the key', function () {
    const plain = loadPolicy('policies/u-shape.yaml');
    assert.equal(dropInput(plain, loadProfile(write('a.yaml', PROFILE)), 2, 2), undefined);
    const allow = policyWith('drop: { trim: true, skip_moe: true }');
    assert.throws(() => dropInput(allow, loadProfile(write('b.yaml', PROFILE + SENS)), 2, 2), (e: Error) => e instanceof ConfigError && /sensitivity\.drop\.trim/.test(e.message) && /sensitivity\.drop\.skip_moe/.test(e.message) && /run ebserve profile/.test(e.message));
    const measured = loadProfile(write('c.yaml', `${PROFILE + SENS}  drop: { trim: [0.01, 0.02], skip_moe: [0.3, 0.4] }\n`));
    const d = dropInput(allow, measured, 2, 2)!;
    assert.deepEqual(d.sensitivity, [[0.01, 0.3], [0.02, 0.4]]);
    assert.deepEqual(d.allowed, [[true, true], [true, true]]);
    assert.equal(d.trimShare, 0.5);
    // Measured for a model of another depth: the error names the key and the layer count.
    assert.throws(() => dropInput(allow, measured, 3, 2), /drop\.trim.*3 layers/);
    // A top-1 model cannot trim: only skip-moe is offered.
    assert.deepEqual(dropInput(allow, measured, 2, 1)!.allowed, [[false, true], [false, true]]);
    assert.throws(() => loadProfile(write('d.yaml', `${PROFILE + SENS}  drop: { trim: [0.01], skip_moe: [0.3, 0.4] }\n`)), /sensitivity\.drop\.trim: expected 2 entries/);
    assert.throws(() => policyWith('drop: { trim: yes please }'), /drop\.trim/);
  });

  it('uses the layer importance as the prior where no sensitivity is measured; the u-shape only without it', function () {
    const policy = loadPolicy('policies/u-shape.yaml');
    const u = plannerSensitivity(policy, loadProfile(write('e.yaml', PROFILE)), 4);
    assert.equal(u.source, 'policy prior');
    assert.deepEqual(u.table, resolvePolicy(policy, 4).prior);
    const imp = [0.4, 0.1, 0.1, 0.2];
    const withImp = loadProfile(write('f.yaml', `${PROFILE}layer_importance: { metric: '1 - cos(moe_in, moe_out)', layers: [${imp.join(', ')}] }\n`));
    const p = plannerSensitivity(policy, withImp, 4);
    assert.equal(p.source, 'layer importance');
    // Layers rank by importance (the u-shape would rank the middle layers first), each row shaped like the bounds.
    for (let l = 0; l < 4; l++) {
      for (let k = 0; k < 5; k++) assert.ok(Math.abs(p.table[l][k] / p.table[0][k] - imp[l] / imp[0]) < 1e-9);
      assert.equal(p.table[l][5], 0, 'exact costs nothing');
      assert.ok(Math.abs(p.table[l][1] / p.table[l][0] - 0.5) < 1e-9);
    }
    // A measured sensitivity wins over the prior; an importance of another depth is not used.
    assert.equal(plannerSensitivity(policy, loadProfile(write('g.yaml', `${PROFILE + SENS}layer_importance: { metric: '1 - cos(moe_in, moe_out)', layers: [0.1, 0.2] }\n`)), 2).source, 'profile');
    assert.equal(plannerSensitivity(policy, withImp, 8).source, 'policy prior');
  });
});
