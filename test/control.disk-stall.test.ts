// A disk that stalls, on the embedded model with its experts on disk (the disk tier), in real
// time: the controller degrades, and the SLA metrics show it.
//
// The experts are in a store file in a temporary folder (a copy of the model's own cache file
// when it has a sound one, else built there), read with direct I/O into a host budget of one
// layer's routed experts (top-k at the store's largest level), behind a device cache (tier A)
// holding a quarter of the experts: decoding misses tier A, the host tier misses too, and the
// store file is read all the time. The stall is injected from here alone: the store's DirectFile
// (DiskExpertStore.file, which its host tier reads through) waits before every read. A move from
// the disk counts that wait in its transfer sample (link 'disk+copy'), so the controller sees a
// slower link, and the steps clients wait on get slower.
//
// The regime is set from this machine's own measurements: the SLA is 3× the p95 decode step
// measured with the disk tier and no stall, at the plan the controller starts with (on a real
// disk the steps' tail is long: a median would put the SLA inside it), and the stall is half the
// SLA (5–30 ms) a read: a step reads the disk in most of its layers, one after another, so a
// stalled step misses the SLA several times over.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { bandwidthEstimate } from '../src/control/estimators/bandwidth.js';
import { p95 } from '../src/control/estimators/latency.js';
import { startControl, type Control, type Decision } from '../src/control/index.js';
import { loadPolicy, resolvePolicy } from '../src/control/policy.js';
import type { Profile } from '../src/control/profile.js';
import { generate } from '../src/model/generate.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import { DiskExpertStore } from '../src/offload/disk-store.js';
import { createOffload, minHostBudget, type Offload } from '../src/offload/index.js';
import { DEFAULT_LADDER } from '../src/offload/plan.js';
import { defaultCacheDir, ensureStoreFile, storeFileName } from '../src/offload/store-file.js';
import { TelemetryBus } from '../src/offload/telemetry.js';

const PROMPT = 'It was the best of times, it was';
const TOP_K = 2;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('control over the disk tier: a disk that stalls (embedded model, real time)', function () {
  this.timeout(120_000);
  let dir: string;
  let layers: number;
  let experts: number;
  let decodedBytes: number;
  let hostBytes: number;
  before(async function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-disk-stall-'));
    const m = await loadModel(EMBEDDED_MODEL_DIR);
    try {
      const source = checkpointExperts(m.checkpoint);
      // The model's cache file, when there, saves compressing again: copied here (never written
      // there), and checked as any cache file is; without it the store file is built here.
      const cached = storeFileName(defaultCacheDir(EMBEDDED_MODEL_DIR), source.hash, DEFAULT_LADDER);
      if (fs.existsSync(cached)) fs.copyFileSync(cached, storeFileName(dir, source.hash, DEFAULT_LADDER));
      const f = await ensureStoreFile(source, DEFAULT_LADDER, dir);
      const probe = DiskExpertStore.open(f.file, { checkpointHash: source.hash, ladder: DEFAULT_LADDER }, { budgetBytes: 1 });
      try {
        layers = probe.numLayers;
        experts = probe.numExperts;
        decodedBytes = probe.expertValues(0, 0) * 4;
        hostBytes = minHostBudget(probe, TOP_K);
      } finally {
        probe.close();
      }
    } finally {
      m.dispose();
    }
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Decodes for as long as `busy()` says. */
  async function decodeWhile(m: LoadedModel, busy: () => boolean): Promise<void> {
    while (busy()) await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
  }

  it('degrades when the disk stalls: p95 over the SLA, a lower bandwidth estimate, a looser plan; back under the SLA once the disk recovers', async function () {
    const bus = new TelemetryBus();
    const t0 = performance.now();
    const now = () => performance.now() - t0;
    // What the disk path says: every read of the store file, and every move that waited for one.
    const reads: number[] = [];
    const diskMoves: { t: number; seconds: number; link: string }[] = [];
    bus.on((s) => {
      if (s.kind === 'read') reads.push(now());
      if (s.kind === 'transfer' && s.link.startsWith('disk+')) diskMoves.push({ t: now(), seconds: s.seconds, link: s.link });
    });
    const policy = loadPolicy('policies/u-shape.yaml');
    const { ceiling, floor } = resolvePolicy(policy, layers);
    const tierAExperts = experts * layers / 4;
    let offload: Offload | undefined;
    const m = await loadModel(EMBEDDED_MODEL_DIR, {
      engine: async (checkpoint) => {
        offload = await createOffload(checkpointExperts(checkpoint), {
          cacheDir: dir,
          budget: { tierABytes: tierAExperts * decodedBytes, tierBBytes: 0 },
          hostBudget: { bytes: hostBytes, minExperts: TOP_K },
          telemetry: bus,
          plan: { version: 1, levels: [...ceiling] },
          progress: false,
          // Every read on the path of the step that waits for it: the moves' samples time the
          // disk path itself, not also what a prefetch overlapped.
          prefetch: false,
          log: () => {},
        });
        return offload.engine;
      },
    });
    let control: Control | undefined;
    let phase = 'calibrate';
    let done: Promise<void> = Promise.resolve();
    try {
      const store = offload!.opened.store;
      assert.ok(store instanceof DiskExpertStore, 'the experts are on disk');
      assert.equal(offload!.opened.from, 'cache', 'the store file made in before() is the one read');

      // The stall: every read of the store file waits `stallMs` first (0: none).
      let stallMs = 0;
      const file = store.file;
      const read = file.read.bind(file);
      file.read = async (offset: number, length: number) => {
        if (stallMs > 0) await sleep(stallMs);
        return read(offset, length);
      };

      // 1. This machine's decode step with the disk tier, at the plan the controller starts with.
      for (let i = 0; i < 3; i++) await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
      const steps: number[] = [];
      let bytes = 0;
      let seconds = 0;
      // Reads between two steps' ends, counted for the decode steps (not the prompts').
      let decodeReads = 0;
      let readsAt = reads.length;
      const off = bus.on((s) => {
        if (s.kind === 'token') {
          if (s.prefillTokens === 0) {
            steps.push(s.seconds);
            decodeReads += reads.length - readsAt;
          }
          readsAt = reads.length;
        }
        if (s.kind === 'transfer') {
          bytes += s.bytes;
          seconds += s.seconds;
        }
      });
      for (let i = 0; i < 4; i++) await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
      off();
      // The disk is read while decoding, not only while warming up.
      const readsPerStep = decodeReads / steps.length;
      assert.ok(readsPerStep >= 2, `the store file is read while decoding: ${readsPerStep.toFixed(2)} reads per decode step`);
      steps.sort((a, b) => a - b);
      const median = steps[Math.floor(steps.length / 2)];
      const calP95 = steps[Math.ceil(0.95 * steps.length) - 1];
      const sla = 3 * calP95;
      const stall = Math.min(30, Math.max(5, Math.round(sla * 500)));

      // 2. The controller, with the default policy's ladder and quick hysteresis.
      policy.control = { ...policy.control, decide_every_ms: 100, stable_window_ms: 1000, dwell_ms: 200, max_layers_per_decision: 2, stale_after_ms: 5000, tolerance: 0.1, headroom: 0.9 };
      policy.canaries = { ...policy.canaries, every_ms: 0 };
      const profile: Profile = {
        file: 'disk-stall', name: 'disk-stall', link: { prior_bytes_per_second: bytes / seconds }, device: { experts_per_layer: tierAExperts / layers }, sla: { p95_inter_token_seconds: sla },
      };
      control = startControl({ policy, profile, store, engine: offload!.engine, telemetry: bus, topK: TOP_K });
      const c = control.controller;
      const decisions: (Decision & { t: number })[] = [];
      c.decisions$.subscribe((d) => decisions.push({ ...d, t: now() }));
      const measuredP95 = () => p95(c.state$.value.latency);
      const bandwidth = () => bandwidthEstimate(c.state$.value.bandwidth);
      const looserThan = (levels: number[]) => c.plan.levels.some((lv, l) => lv < levels[l]);
      const last = (from: number) => decisions.filter((d) => d.t >= from && d.action !== 'hold').slice(-4).map((d) => `${d.action}: ${d.reason}`).join(' | ') || decisions.at(-1)?.reason;
      const what = `SLA ${(sla * 1000).toFixed(1)} ms (median step ${(median * 1000).toFixed(1)} ms, p95 ${(calP95 * 1000).toFixed(1)} ms, ${readsPerStep.toFixed(2)} reads a step), stall ${stall} ms a read`;

      // The bandwidth estimate, sampled every 100 ms from here on: on a real disk a single slow
      // move pulls it down for a moment (the estimator leans low), so phases compare medians.
      const bwSamples: { t: number; bw: number }[] = [];
      const sampler = setInterval(() => bwSamples.push({ t: now(), bw: bandwidth() }), 100);
      const bwMedian = (from: number, to: number) => {
        const xs = bwSamples.filter((x) => x.t >= from && x.t < to).map((x) => x.bw).sort((x, y) => x - y);
        return xs.length ? xs[Math.floor(xs.length / 2)] : NaN;
      };
      try {
        // 3. Before the stall: p95 meets the SLA, and the plan has room to loosen. At least 2 s of
        // decoding (the p95 window, 64 steps, filled), then up to 8 s more for the plan to be at
        // the tight end too (every layer at most one level below its ceiling), or failing that up
        // to 10 s more for it to have room. It may not stay there: with the experts on a real disk
        // one slow move pulls the bandwidth estimate down for a moment, the predicted p95 jumps
        // over the SLA and a few layers loosen until the stable window lets them back (seen here
        // with no stall at all: several such degrades a minute).
        phase = 'steady';
        done = decodeWhile(m, () => phase !== 'end');
        const steady = now();
        await sleep(2000);
        const tightEnd = () => c.plan.levels.every((lv, l) => lv >= ceiling[l] - 1);
        const room = () => c.plan.levels.some((lv, l) => lv > floor[l]);
        const ready = () => measuredP95() <= sla && (tightEnd() || (now() - steady > 10_000 && room()));
        while (!ready() && now() - steady < 20_000) await sleep(50);
        const pre = { t: now(), levels: [...c.plan.levels], p95: measuredP95() };
        assert.ok(pre.p95 <= sla, `before the stall p95 ${pre.p95} s meets the ${what}: ${last(steady)}`);
        assert.ok(room(), `before the stall the plan has room to loosen: ${c.plan.levels} (floor ${floor}, ceiling ${ceiling}): ${last(steady)}`);
        const bwBefore = bwMedian(steady, pre.t);

        // 4. The disk stalls: at least 3 s, and up to 15 s for the controller to loosen the plan to
        // the policy's floors and the measured p95 to show the stall.
        stallMs = stall;
        const degraded = () => decisions.find((d) => d.t > pre.t && d.action === 'degrade');
        const atFloor = () => c.plan.levels.every((lv, l) => lv === floor[l]);
        while (now() - pre.t < 3000 || (!(degraded() && atFloor() && measuredP95() > sla) && now() - pre.t < 15_000)) await sleep(100);
        const end = { t: now(), p95: measuredP95(), levels: [...c.plan.levels] };
        // The store file was read all along the stall (the stall is on the disk path).
        const stalledReads = reads.filter((t) => t > pre.t).length;
        assert.ok(stalledReads >= 10, `the store file was read during the stall: ${stalledReads} reads`);
        assert.ok(reads.some((t) => t > end.t - 1000), `still read in the stall's last second (last read ${(reads.at(-1)! - pre.t).toFixed(0)} ms into it)`);
        // The controller degrades, saying why. A degrade alone would prove little here (the disk's
        // noise brings some with no stall, see 3.); what the stall alone brings is the rest: the
        // plan at the policy's floors, no tightening while it lasts, the SLA metrics below.
        const first = degraded();
        assert.ok(first, `a degrade during the stall (${what}): ${last(pre.t)}`);
        assert.match(first.reason, /p95 [\d.]+ s .*over the SLA/);
        assert.ok(first.changes.length > 0 && first.changes.every((ch) => ch.to < ch.from), `the degrade loosens: ${JSON.stringify(first.changes)}`);
        assert.ok(looserThan(pre.levels), `looser plan at the end of the stall: ${end.levels} (was ${pre.levels})`);
        // No plan meets the SLA at the stalled disk's speed: the planner goes as loose as the policy allows.
        assert.deepEqual(end.levels, floor, `at the policy's floors by the end of the stall (was ${pre.levels})`);
        const ups = decisions.filter((d) => d.t > first.t && d.action === 'upgrade');
        assert.deepEqual(ups.map((d) => d.reason), [], 'no tightening while the disk stalls');
        // The SLA metrics show it: the measured p95 over the SLA, the bandwidth estimate down.
        assert.ok(end.p95 > sla, `measured p95 ${end.p95} s over the ${what}`);
        const bwDuring = bwMedian(pre.t + 500, end.t);
        assert.ok(bwDuring < bwBefore / 2, `bandwidth estimate fell: median ${bwBefore.toExponential(3)} B/s before the stall, ${bwDuring.toExponential(3)} B/s during it`);
        // Why: the moves from the disk (link disk+copy) counted the stall in their time.
        const slowMoves = diskMoves.filter((x) => x.t > pre.t && x.seconds >= stall / 1000);
        assert.ok(slowMoves.length >= 20, `moves from the disk (${diskMoves[0]?.link}) counted the stall: ${slowMoves.length} took ≥ ${stall} ms`);

        // 5. The disk recovers: up to 15 s for the measured p95 to come back under the SLA.
        stallMs = 0;
        const recover = now();
        while (!(measuredP95() <= sla) && now() - recover < 15_000) await sleep(100);
        assert.ok(measuredP95() <= sla, `p95 ${measuredP95()} s back under the ${what} after the stall: ${last(recover)}`);
      } finally {
        clearInterval(sampler);
      }
    } finally {
      phase = 'end';
      await done.catch(() => {}); // the decode loop must end before the model is freed
      control?.stop();
      m.dispose();
      if (offload?.opened.store instanceof DiskExpertStore) offload.opened.store.close();
    }
  });
});
