// `ebserve profile` on the embedded model, as a user runs it (small settings): it writes a
// profile the loader accepts with a sensitivity row per layer, the study and an SVG plot per error
// model with a line per bound; interrupted, it resumes from its state file instead of starting over.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { loadProfile } from '../src/control/profile.js';
import { plansAtLosses } from '../src/control/profiler.js';

const bin = path.resolve('bin/ebserve');
const ARGS = ['profile', '--items', '1', '--experts', '1', '--error-models', 'codec,gaussian'];

describe('plansAtLosses', function () {
  it('cuts the move sequence where its summed cost first reaches each loss, once per distinct plan', function () {
    const table = [[0.04, 0.01, 0], [0.03, 0.02, 0]];
    const mv = (layer: number, from: number, to: number) => ({ layer, from, to, secondsSaved: 0, accuracyCost: 0 });
    const moves = [mv(0, 2, 1), mv(1, 2, 1), mv(0, 1, 0)]; // costs 0.01, 0.02, 0.03
    assert.deepEqual(plansAtLosses(moves, table, [2, 2], [0.01, 0.02, 0.03, 0.1]), [[1, 2], [1, 1], [0, 1]]);
  });
});

describe('ebserve profile (embedded model)', function () {
  this.timeout(180_000);
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-profile-'));
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('resumes after an interruption, then writes the profile, the study and the plots', async function () {
    const out = path.join(dir, 'tiny.yaml');
    const state = path.join(dir, 'tiny.state.json');
    // First run: stopped once a few measurements are in its state file.
    const first = spawn(bin, [...ARGS, '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        try {
          const s = JSON.parse(fs.readFileSync(state, 'utf8')) as { cells: object };
          if (Object.keys(s.cells).length >= 5) {
            clearInterval(timer);
            first.kill('SIGINT');
            resolve();
          }
        } catch {
          // not written yet
        }
      }, 50);
      first.on('exit', () => {
        clearInterval(timer);
        reject(new Error('the first run ended before it could be interrupted'));
      });
    }).catch((e) => {
      if (!fs.existsSync(out)) throw e;
    });
    await new Promise((r) => first.once('exit', r));
    assert.ok(!fs.existsSync(out), 'the interrupted run wrote no profile');

    const { stderr } = await promisify(execFile)(bin, [...ARGS, '--out', out], { maxBuffer: 1 << 24 });
    assert.match(stderr, /\(\d+ resumed from .*tiny\.state\.json\)/);
    assert.ok(!fs.existsSync(state), 'the state file is removed once the profile is written');

    const p = loadProfile(out);
    assert.equal(p.sensitivity?.layers.length, 8);
    assert.equal(p.sensitivity?.error_model, 'codec');
    for (const row of p.sensitivity!.layers) {
      assert.equal(row.length, 6);
      assert.equal(row[5], 0, 'the exact level costs nothing');
      for (let k = 0; k < 5; k++) assert.ok(row[k] >= row[k + 1], `non-increasing in the level: ${row}`);
    }
    assert.equal(p.modelDir, path.resolve('models/ebserve-moe-8x'));

    const study = JSON.parse(fs.readFileSync(path.join(dir, 'tiny.study.json'), 'utf8')) as { cells: { model: string; target: { kind: string } }[] };
    // 8 layers + 3 groups + 1 expert, 5 rungs, 2 error models.
    assert.equal(study.cells.length, (8 + 3 + 1) * 5 * 2);
    assert.deepEqual([...new Set(study.cells.map((c) => c.target.kind))].sort(), ['expert', 'group', 'layer']);
    // Whole plans along the planner's moves, and the loss scale fitted to them.
    const plans = (study as unknown as { plans: { levels: number[]; predictedLoss: number; measuredLoss: number }[]; lossScale?: number }).plans;
    assert.ok(plans.length >= 1);
    for (const c of plans) {
      assert.equal(c.levels.length, 8);
      assert.ok(c.predictedLoss >= 0 && c.measuredLoss >= 0 && c.measuredLoss <= 1, JSON.stringify(c));
    }
    const pm = plans.reduce((a, c) => a + c.predictedLoss * c.measuredLoss, 0);
    const pp = plans.reduce((a, c) => a + c.predictedLoss * c.predictedLoss, 0);
    if (pm > 0) assert.ok(Math.abs(p.sensitivity!.loss_scale! - Math.min(10, Math.max(0.05, pm / pp))) < 1e-3, `loss scale ${p.sensitivity!.loss_scale}`);
    else assert.equal(p.sensitivity!.loss_scale, undefined);
    for (const model of ['codec', 'gaussian']) {
      const svg = fs.readFileSync(path.join(dir, `tiny-${model}.svg`), 'utf8');
      assert.match(svg, /^<svg /);
      assert.equal(svg.match(/<polyline /g)?.length, 5, 'a line per bound');
    }
  });
});
