// Policies and profiles: the shipped files load and resolve; every kind of bad file gives a
// ConfigError naming the file, the field and what was expected; `ebserve check-config` says the
// same on stderr with exit code 1, and describes a good pair.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import { ConfigError } from '../src/control/config-file.js';
import { loadPolicy, resolvePolicy } from '../src/control/policy.js';
import { plannerSensitivity } from '../src/control/index.js';
import { checkProfileForModel, loadProfile } from '../src/control/profile.js';
import { ebserve } from './helpers/ebserve.js';

const POLICY = YAML.parse(fs.readFileSync('policies/u-shape.yaml', 'utf8'));
const PROFILE = YAML.parse(fs.readFileSync('profiles/cpu.yaml', 'utf8'));

describe('policies and profiles', function () {
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-config-'));
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const write = (name: string, value: unknown) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, typeof value === 'string' ? value : YAML.stringify(value));
    return f;
  };
  /** Asserts that loading fails with a ConfigError naming the file and `field` with `expected`. */
  const fails = (load: (f: string) => unknown, f: string, field: string, expected: RegExp) => {
    assert.throws(() => load(f), (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.equal(e.file, f);
      const p = e.problems.find((x) => x.field === field);
      assert.ok(p, `no problem named ${field}: ${e.message}`);
      assert.match(p.message, expected);
      assert.ok(e.message.includes(`${f}: ${field}`), e.message);
      return true;
    });
  };
  const policyWith = (change: (p: any) => void) => {
    const p = structuredClone(POLICY);
    change(p);
    return p;
  };

  it('loads the shipped policies and resolves u-shape to tight middle layers, loose ends', function () {
    for (const f of fs.readdirSync('policies').filter((x) => x.endsWith('.yaml'))) loadPolicy(path.join('policies', f));
    const r = resolvePolicy(loadPolicy('policies/u-shape.yaml'), 8);
    assert.deepEqual(r.group, ['shallow', 'shallow', 'middle', 'middle', 'middle', 'middle', 'deep', 'deep']);
    assert.deepEqual(r.floor, [0, 0, 1, 1, 1, 1, 0, 0]);
    assert.deepEqual(r.ceiling, new Array(8).fill(5));
    assert.ok(r.prior[3][0] > r.prior[0][0], 'loosening the middle costs more');
    r.prior.forEach((row) => assert.equal(row[5], 0, 'the exact level costs nothing'));
  });

  it('loads the shipped profiles, resolving the model folder against the profile\'s own', function () {
    for (const f of fs.readdirSync('profiles').filter((x) => x.endsWith('.yaml'))) loadProfile(path.join('profiles', f));
    const f = write('p.yaml', { ...PROFILE, model: '../m' });
    assert.equal(loadProfile(f).modelDir, path.resolve(dir, '..', 'm'));
  });

  it('names a wrong type', function () {
    fails(loadPolicy, write('a.yaml', policyWith((p) => (p.control.dwell_ms = 'soon'))), 'control.dwell_ms', /expected milliseconds/);
    fails(loadProfile, write('b.yaml', { ...PROFILE, sla: { p95_inter_token_seconds: -1 } }), 'sla.p95_inter_token_seconds', /expected a number > 0/);
  });

  it('takes tier A as f32, fused or symbols (8-bit activations with symbols only), and names any other form', function () {
    for (const form of ['f32', 'fused', 'symbols']) assert.equal(loadProfile(write(`t-${form}.yaml`, { ...PROFILE, device: { ...PROFILE.device, tier_a_form: form } })).device.tier_a_form, form);
    fails(loadProfile, write('t-int4.yaml', { ...PROFILE, device: { ...PROFILE.device, tier_a_form: 'int4' } }), 'device.tier_a_form', /expected f32, fused or symbols/);
    assert.equal(loadProfile(write('t-int8.yaml', { ...PROFILE, device: { ...PROFILE.device, tier_a_form: 'symbols', int8_activations: true } })).device.int8_activations, true);
    fails(loadProfile, write('t-int8-fused.yaml', { ...PROFILE, device: { ...PROFILE.device, tier_a_form: 'fused', int8_activations: true } }), 'device.int8_activations', /expected only with tier_a_form: symbols .*not fused/);
    fails(loadProfile, write('t-int8-yes.yaml', { ...PROFILE, device: { ...PROFILE.device, tier_a_form: 'symbols', int8_activations: 'yes' } }), 'device.int8_activations', /expected true or false/);
  });

  it('names an unknown field (a typo)', function () {
    fails(loadPolicy, write('c.yaml', policyWith((p) => (p.control.dwel_ms = 5))), 'control', /unknown field dwel_ms/);
    fails(loadProfile, write('d.yaml', { ...PROFILE, slaa: {} }), '', /unknown field slaa/);
  });

  it('names a floor above its ceiling, and a floor that is not one of the ladder\'s bounds', function () {
    fails(loadPolicy, write('e.yaml', policyWith((p) => Object.assign(p.groups[1], { floor: 0.0625, ceiling: 0.25 }))), 'groups.1.floor', /no tighter than the ceiling/);
    fails(loadPolicy, write('f.yaml', policyWith((p) => (p.groups[0].floor = 0.3))), 'groups.0.floor', /one of the ladder's bounds \(0.5, 0.25, 0.125, 0.0625, 0.03125\) or "exact", got 0.3/);
  });

  it('names an empty ladder and one that is not powers of two apart, loosest first', function () {
    fails(loadPolicy, write('g.yaml', policyWith((p) => (p.ladder.bounds = []))), 'ladder.bounds', /at least one bound/);
    fails(loadPolicy, write('h.yaml', policyWith((p) => (p.ladder.bounds = [0.1, 0.3]))), 'ladder.bounds', /loosest first, each a power of two/);
    fails(loadPolicy, write('i.yaml', policyWith((p) => (p.ladder.bounds = [0.5, 0.2]))), 'ladder.bounds', /power of two/);
  });

  it('names groups that leave depth uncovered', function () {
    fails(loadPolicy, write('j.yaml', policyWith((p) => (p.groups[1].from = 0.3))), 'groups.1.from', /expected 0.25/);
    fails(loadPolicy, write('k.yaml', policyWith((p) => (p.groups[2].to = 0.9))), 'groups.2.to', /end at 1/);
  });

  it('names a device budget given both ways or not at all, and sensitivity rows of the wrong length', function () {
    fails(loadProfile, write('l.yaml', { ...PROFILE, device: { experts_per_layer: 2, memory_budget_bytes: 1e6 } }), 'device', /exactly one of experts_per_layer and memory_budget_bytes/);
    const sensitivity = { error_model: 'codec', metric: '1 - top1_agreement', bound_mode: 'sigma', bounds: [0.5, 0.25], exact: true, layers: [[0.1, 0.05, 0], [0.1, 0]] };
    fails(loadProfile, write('m.yaml', { ...PROFILE, sensitivity }), 'sensitivity.layers.1', /expected 3 levels/);
    fails(loadProfile, write('m2.yaml', { ...PROFILE, sensitivity: { ...sensitivity, layers: [[0.1, 0.05, 0], [0.1, 0.05, 0]], loss_scale: 0 } }), 'sensitivity.loss_scale', /expected a number > 0/);
  });

  it('takes tier A per layer (device.experts_by_layer), naming a list that is not whole numbers ≥ 1 or comes with experts_per_layer', function () {
    const sizes = [2, 2, 3, 3, 4, 4, 8, 6];
    assert.deepEqual(loadProfile(write('s1.yaml', { ...PROFILE, device: { ...PROFILE.device, experts_by_layer: sizes } })).device.experts_by_layer, sizes, 'with a byte budget');
    assert.deepEqual(loadProfile(write('s2.yaml', { ...PROFILE, device: { experts_by_layer: sizes, tier_b_bytes: 1000 } })).device.experts_by_layer, sizes, 'alone');
    fails(loadProfile, write('s3.yaml', { ...PROFILE, device: { experts_by_layer: [2, 2.5, 3] } }), 'device.experts_by_layer.1', /expected a whole number of experts/);
    fails(loadProfile, write('s4.yaml', { ...PROFILE, device: { experts_by_layer: [2, 0] } }), 'device.experts_by_layer.1', /expected a whole number of experts ≥ 1/);
    fails(loadProfile, write('s5.yaml', { ...PROFILE, device: { experts_by_layer: 4 } }), 'device.experts_by_layer', /expected a list of whole numbers, one per layer/);
    fails(loadProfile, write('s6.yaml', { ...PROFILE, device: { experts_per_layer: 2, experts_by_layer: sizes } }), 'device.experts_by_layer', /either experts_per_layer .* or experts_by_layer, not both/);
  });

  it('checks device.experts_by_layer against the model: one entry per layer, each from top-k to all experts', function () {
    const model = { numLayers: 8, numExperts: 8, topK: 2 };
    const withSizes = (name: string, sizes: number[]) => loadProfile(write(name, { ...PROFILE, device: { ...PROFILE.device, experts_by_layer: sizes } }));
    assert.doesNotThrow(() => checkProfileForModel(withSizes('t1.yaml', [2, 2, 3, 3, 4, 4, 8, 6]), model));
    fails((f) => checkProfileForModel(loadProfile(f), model), write('t2.yaml', { ...PROFILE, device: { ...PROFILE.device, experts_by_layer: [2, 2, 3] } }), 'device.experts_by_layer', /expected 8 entries, one per layer of the model, got 3/);
    fails((f) => checkProfileForModel(loadProfile(f), model), write('t3.yaml', { ...PROFILE, device: { ...PROFILE.device, experts_by_layer: [2, 1, 3, 3, 4, 4, 8, 6] } }), 'device.experts_by_layer.1', /at least the model's top-k \(2\).*got 1/);
    fails((f) => checkProfileForModel(loadProfile(f), model), write('t4.yaml', { ...PROFILE, device: { ...PROFILE.device, experts_by_layer: [2, 2, 3, 3, 4, 4, 9, 6] } }), 'device.experts_by_layer.6', /at most the model's 8 experts per layer, got 9/);
    assert.doesNotThrow(() => checkProfileForModel(loadProfile('profiles/cpu.yaml'), model), 'nothing to check without the key');
  });

  it('names a YAML syntax error with its line, and a missing file', function () {
    fails(loadPolicy, write('n.yaml', 'name: x\nladder: [1, 2\n'), '', /not valid YAML.*line/);
    fails(loadPolicy, path.join(dir, 'nothing.yaml'), '', /no such file/);
  });

  describe('ebserve check-config', function () {

    it('accepts the default policy and profile', async function () {
      const r = await ebserve('check-config');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /u-shape\.yaml: ok/);
      assert.match(r.stdout, /cpu\.yaml: ok/);
    });

    it('refuses a policy that allows drop rungs with a profile that has not measured them, naming the key; accepts the measured one', async function () {
      const f = write('drop.yaml', policyWith((p) => {
        p.drop = { trim: true, skip_moe: true };
      }));
      const none = await ebserve('check-config', '--policy', f);
      assert.equal(none.code, 1);
      assert.match(none.stderr, /cpu\.yaml: sensitivity\.drop\.trim: the policy .* allows drop\.trim, but this profile has no measurement of it/);
      assert.match(none.stderr, /sensitivity\.drop\.skip_moe/);
      const measured = await ebserve('check-config', '--policy', f, '--profile', 'profiles/tiny-moe.yaml');
      assert.equal(measured.code, 0, measured.stderr);
      assert.match(measured.stdout, /drop rungs allowed past the loosest level: trim, skip_moe/);
    });

    it('prints every problem with file and field, and exits 1', async function () {
      const f = write('bad.yaml', policyWith((p) => {
        p.groups[0].floor = 0.3;
        p.control.headroom = 2;
        p.canaries.max_share = 1;
      }));
      const r = await ebserve('check-config', '--policy', f);
      assert.equal(r.code, 1);
      assert.ok(r.stderr.includes(`${f}: control.headroom: expected a number in (0, 1]`), r.stderr);
      assert.ok(r.stderr.includes(`${f}: canaries.max_share: expected a number in (0, 1)`), r.stderr);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    });
  });
});

describe('planner sensitivity from a profile', function () {
  const policy = loadPolicy('policies/u-shape.yaml');
  const base = loadProfile('profiles/cpu.yaml');
  const b = policy.ladder.bounds;
  const withRows = (layers: number[][]) => ({ ...base, sensitivity: { error_model: 'codec' as const, metric: '1 - top1_agreement' as const, bound_mode: policy.ladder.bound_mode, bounds: b, exact: policy.ladder.exact, layers } });

  it('fits each measured row to cost ∝ bound, keeping the exact level free', function () {
    const exact = [0.2, 0.1, 0.05, 0.025, 0.0125, 0];
    const noisy = [0.06, 0.02, 0.002, 0.002, 0, 0]; // a few flips at the tight levels
    const { table, source } = plannerSensitivity(policy, withRows([exact, noisy, ...new Array(6).fill(exact)]), 8);
    assert.equal(source, 'profile');
    table[0].forEach((v, k) => assert.ok(Math.abs(v - exact[k]) < 1e-12, `level ${k}: ${v}`));
    for (let k = 0; k + 1 < b.length; k++) assert.ok(Math.abs(table[1][k] / table[1][k + 1] - 2) < 1e-9, 'halves per rung');
    assert.equal(table[1][5], 0);
    assert.ok(table[1][0] < table[0][0], 'the tolerant layer stays the cheaper one');
  });

  it('scales the fitted rows by the profile\'s measured loss scale', function () {
    const rows = new Array(8).fill([0.2, 0.1, 0.05, 0.025, 0.0125, 0]);
    const plain = plannerSensitivity(policy, withRows(rows), 8).table;
    const scaled = withRows(rows);
    scaled.sensitivity = { ...scaled.sensitivity, loss_scale: 0.5 } as typeof scaled.sensitivity;
    const half = plannerSensitivity(policy, scaled, 8).table;
    half.forEach((row, l) => row.forEach((v, k) => assert.ok(Math.abs(v - 0.5 * plain[l][k]) < 1e-12, `layer ${l} level ${k}`)));
  });

  it('falls back to the policy\'s prior when the profile measured another ladder or depth', function () {
    const other = { ...withRows(new Array(8).fill([0.2, 0.1, 0.05, 0.025, 0.0125, 0])) };
    other.sensitivity!.bounds = [1, 0.5, 0.25, 0.125, 0.0625];
    assert.equal(plannerSensitivity(policy, other, 8).source, 'policy prior');
    assert.equal(plannerSensitivity(policy, withRows(new Array(4).fill([0.2, 0.1, 0.05, 0.025, 0.0125, 0])), 8).source, 'policy prior');
  });
});
