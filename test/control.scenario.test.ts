// The whole loop on the embedded model, in real time, with an emulated link: the controller
// reads the offload engine's telemetry and sets its plan. When the link's bandwidth falls 4× the
// plan loosens within a few decision ticks and p95 comes back under the SLA; when it recovers
// the plan tightens again, but only after the stable window; a canary run below the floor rolls
// the plan back at once and the quarantine holds.
//
// The regime is set from this machine's own measurements, so it is the same on a fast or a slow
// machine: the starting bandwidth makes the tightest plan's link cost 3× its compute time per
// token, and the SLA is 2× the median step measured there; after the drop the link alone costs
// 12× compute, which only a looser plan can bring back under the SLA.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { CanaryRunner, type TextCanary } from '../src/control/canaries.js';
import { loadPolicy } from '../src/control/policy.js';
import { startControl, type Control, type Decision } from '../src/control/index.js';
import type { Profile } from '../src/control/profile.js';
import { generate } from '../src/model/generate.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import { OffloadExpertEngine } from '../src/offload/engine.js';
import { CopyLink, EmulatedLink } from '../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan } from '../src/offload/plan.js';
import { buildStore, type ExpertStore } from '../src/offload/store.js';
import { TelemetryBus } from '../src/offload/telemetry.js';
import { canaryTarget } from '../src/serve/canary-target.js';

const PROMPT = 'It was the best of times, it was';

describe('control loop scenario (embedded model, emulated link, real time)', function () {
  this.timeout(120_000);
  let store: ExpertStore;
  let decodedBytes: number;
  before(async function () {
    const m = await loadModel(EMBEDDED_MODEL_DIR);
    store = await buildStore(checkpointExperts(m.checkpoint), DEFAULT_LADDER);
    decodedBytes = store.expertValues(0, 0) * 4;
    m.dispose();
  });

  /** Decodes for as long as `busy()` says. */
  async function decodeWhile(m: LoadedModel, busy: () => boolean): Promise<void> {
    while (busy()) await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
  }

  it('loosens on a 4× bandwidth drop, meets the SLA again, tightens after the stable window on recovery, and rolls back on a failing canary', async function () {
    // 1. This machine's compute per token and the exact plan's link bytes per token (2× cache).
    const bus = new TelemetryBus();
    let bytes = 0;
    let steps = 0;
    let compute = 0;
    bus.on((s) => {
      if (s.kind === 'transfer') bytes += s.bytes;
      if (s.kind === 'token' && s.prefillTokens === 0) {
        steps++;
        compute += s.computeSeconds;
      }
    });
    const link = new EmulatedLink({ bytesPerSecond: 1e12 });
    const engine = new OffloadExpertEngine({ store, link, budget: { tierABytes: 32 * decodedBytes, tierBBytes: 0 }, telemetry: bus, plan: uniformPlan(8, store.exact) });
    const m = await loadModel(EMBEDDED_MODEL_DIR, { engine: () => engine });
    let control: Control | undefined;
    let phase = 'calibrate';
    let done: Promise<void> = Promise.resolve();
    try {
      for (let i = 0; i < 4; i++) await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
      const tc = compute / steps;
      const bytesPerToken = bytes / steps;
      const b0 = bytesPerToken / (3 * tc);
      // The SLA: 2× the median step this plan measures at b0 (a median: one noisy step must not set it).
      link.setBandwidth(b0);
      const steady: number[] = [];
      const offSteady = bus.on((s) => s.kind === 'token' && s.prefillTokens === 0 && steady.push(s.seconds));
      for (let i = 0; i < 4; i++) await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
      offSteady();
      steady.sort((a, b) => a - b);
      const sla = 2 * steady[Math.floor(steady.length / 2)];

      // 2. The controller, with the default policy's ladder and quick hysteresis.
      const policy = loadPolicy('policies/u-shape.yaml');
      policy.control = { ...policy.control, decide_every_ms: 100, stable_window_ms: 1000, dwell_ms: 200, max_layers_per_decision: 2, stale_after_ms: 5000, tolerance: 0.1, headroom: 0.9 };
      policy.canaries = { ...policy.canaries, every_ms: 0, floor: { top1_agreement: 0.999 }, quarantine_ms: 60_000 };
      const profile: Profile = {
        file: 'scenario', name: 'scenario', link: { prior_bytes_per_second: b0 }, device: { experts_per_layer: 4 }, sla: { p95_inter_token_seconds: sla },
      };
      link.setBandwidth(b0);
      control = startControl({ policy, profile, store, engine, telemetry: bus, topK: 2 });
      const c = control.controller;
      const decisions: (Decision & { t: number })[] = [];
      const t0 = performance.now();
      const now = () => performance.now() - t0;
      c.decisions$.subscribe((d) => decisions.push({ ...d, t: now() }));
      const p95Between = (from: number, to: number) => {
        const xs = decisions.filter((d) => d.t >= from && d.t < to && d.inputs?.p95Seconds != null).map((d) => d.inputs!.p95Seconds!);
        return xs.length ? xs[xs.length - 1] : NaN;
      };
      const tightest = [...c.plan.levels];

      // 3. Steady, then the drop, then recovery.
      phase = 'steady';
      done = decodeWhile(m, () => phase !== 'end' && phase !== 'again');
      await new Promise((r) => setTimeout(r, 2000));
      // (No assertion on the steady phase: on a loaded machine a noise spike may rightly loosen a layer.)
      const drop = now();
      phase = 'drop';
      link.setBandwidth(b0 / 4);
      // Long enough to loosen (a few ticks) and for the p95 window (64 steps) to turn over.
      await new Promise((r) => setTimeout(r, 8000));
      const firstDegrade = decisions.find((d) => d.t > drop && d.action === 'degrade');
      assert.ok(firstDegrade, `the plan loosened (SLA ${sla.toFixed(4)} s): ${decisions.filter((d) => d.t > drop).slice(-3).map((d) => `${d.action}: ${d.reason}`).join(' | ')}`);
      const ticks = Math.round((firstDegrade.t - drop) / 100);
      assert.ok(ticks <= 20, `loosened after ${ticks} ticks`);
      assert.ok(c.plan.levels.some((lv, l) => lv < tightest[l]), `looser plan: ${c.plan.levels}`);
      // Back within the SLA: the controller keeps loosening while p95 misses, so on a loaded
      // machine (a slower p95 window, noisy steps) this may take longer than the 8 s above; up to
      // 20 s more, judged on the p95 of the last 1.5 s.
      const settle = now();
      let late = p95Between(now() - 1500, now());
      while (!(late <= sla * 1.1) && now() - settle < 20_000) {
        await new Promise((r) => setTimeout(r, 250));
        late = p95Between(now() - 1500, now());
      }
      assert.ok(
        late <= sla * 1.1,
        `p95 ${late} s back within the SLA ${sla} s (+10 %) after loosening: ${decisions.filter((d) => d.t > drop && d.action !== 'hold').slice(-4).map((d) => `${d.action}: ${d.reason}`).join(' | ')}`,
      );

      const recover = now();
      phase = 'recover';
      link.setBandwidth(b0);
      // A stable window (1 s) of p95 under the band: 5 s on a quiet machine; on a loaded one the
      // p95 may sit inside the tolerance band a while, so up to 15 s more (the whole suite, run
      // in one process on this 2-core machine, once saw none within the 5 s).
      await new Promise((r) => setTimeout(r, 5000));
      for (const until = now() + 15_000; now() < until && !decisions.some((d) => d.t > recover && d.action === 'upgrade'); ) {
        await new Promise((r) => setTimeout(r, 250));
      }
      const ups = decisions.filter((d) => d.t > recover && d.action === 'upgrade');
      assert.ok(ups.length > 0, `tightened again: ${decisions.filter((d) => d.t > recover).map((d) => d.reason).slice(-4).join(' | ')}`);
      // Every upgrade follows a full stable window: no other change in the second before it.
      for (const u of decisions.filter((d) => d.action === 'upgrade')) {
        const recent = decisions.filter((d) => d.t > u.t - 1000 && d.t < u.t && d.action !== 'hold');
        assert.deepEqual(recent.map((d) => d.action), [], `upgrade at ${u.t.toFixed(0)} ms came within the stable window of another change`);
      }

      // 4. Down again; once the plan has loosened, a canary run of it against a floor of 99.9 %.
      const drop2 = now();
      link.setBandwidth(b0 / 4);
      // Up to 20 s: on a loaded machine the p95 window (64 steps) turns over slowly at a quarter
      // of the bandwidth, and the plan the recovery tightened must be seen to miss first.
      while (!c.plan.levels.some((lv, l) => lv < tightest[l]) && now() - drop2 < 20_000) await new Promise((r) => setTimeout(r, 100));
      phase = 'end';
      await done;
      assert.ok(
        c.plan.levels.some((lv, l) => lv < tightest[l]),
        `loosened again after the second drop: ${decisions.filter((d) => d.t > drop2).slice(-4).map((d) => `${d.action}: ${d.reason}`).join(' | ')}`,
      );
      const strict = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * decodedBytes, tierBBytes: 0 }, prefetch: false, strictLevels: true });
      const reference = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * decodedBytes, tierBBytes: 0 }, prefetch: false, strictLevels: true, plan: uniformPlan(8, store.exact) });
      try {
        const text = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as TextCanary);
        const runner = new CanaryRunner({ target: canaryTarget(m), engine: strict, referenceEngine: reference, text, items: 6 });
        const result = await runner.score(c.plan);
        assert.ok(result.top1Agreement < 0.999, `a looser plan scores below 99.9 %: ${result.top1Agreement}`);
        const before = decisions.length;
        c.canaries.next(result);
        const rollback = decisions.slice(before).find((d) => d.action === 'rollback');
        assert.ok(rollback, 'rolled back on the canary');
        assert.ok(c.plan.levels.every((lv, l) => lv >= c.log().filter((d) => d.action === 'rollback')[0].levels[l]), 'back to the last good plan');
        const q = c.quarantined();
        assert.ok(q.length > 0, 'the loosened layers are quarantined');
        // Still at the low bandwidth: the controller may loosen other layers, never to a quarantined level.
        phase = 'again';
        const again = decodeWhile(m, () => phase === 'again');
        await new Promise((r) => setTimeout(r, 2500));
        phase = 'end';
        await again;
        for (const { layer, level } of q) assert.ok(c.plan.levels[layer] > level, `layer ${layer} stays above quarantined level ${level}: ${c.plan.levels}`);
      } finally {
        strict.dispose();
        reference.dispose();
      }
    } finally {
      phase = 'end';
      await done.catch(() => {}); // the decode loop must end before the model is freed
      control?.stop();
      m.dispose();
    }
  });
});
