// The offload engine on the embedded model: served through the store, the link and the device
// cache at the exact level it gives the all-resident model's tokens; at looser levels every
// expert weight the model was handed is within that level's bound of the original; the budget
// holds; one expert asked for by many at once crosses the link once; a tightened plan moves only
// the missing residual rungs; a tier-A miss that hits tier B costs no transfer; every forward step
// reports its time split.
import assert from 'node:assert/strict';


import { decodeTensor } from '../src/codec/halfs-array.js';
import { generate } from '../src/model/generate.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import type { NativeExpert } from '../src/offload/cpu-engine.js';
import { OffloadExpertEngine } from '../src/offload/engine.js';
import { deviceBudget, matricesOf } from '../src/offload/fetcher.js';
import { CopyLink } from '../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan } from '../src/offload/plan.js';
import { MATRICES, type ExpertSource } from '../src/offload/source.js';
import { buildStore, type ExpertStore } from '../src/offload/store.js';
import { TelemetryBus, type OffloadSample } from '../src/offload/telemetry.js';

const PROMPT = 'Call me Ishmael. Some years ago';

describe('offload engine (embedded model)', function () {
  let resident: LoadedModel;
  let source: ExpertSource;
  let store: ExpertStore;
  let decodedBytes: number;
  const originals = new Map<string, Float32Array>();
  before(async function () {
    resident = await loadModel(EMBEDDED_MODEL_DIR, { nativeForward: false }); // the TensorFlow.js reference
    source = checkpointExperts(resident.checkpoint);
    store = await buildStore(source, DEFAULT_LADDER);
    decodedBytes = store.expertValues(0, 0) * 4;
  });
  after(function () {
    resident?.dispose();
  });

  /** The embedded model with an offload engine over `store`; samples land in `samples`. */
  async function offloaded(opts: { tierA: number; tierB: number; prefetch?: boolean; compute?: 'tfjs' | 'cpu' }) {
    const bus = new TelemetryBus();
    const samples: OffloadSample[] = [];
    bus.on((s) => samples.push(s));
    let engine!: OffloadExpertEngine;
    const m = await loadModel(EMBEDDED_MODEL_DIR, {
      engine: () =>
        (engine = new OffloadExpertEngine({
          store, link: new CopyLink(), budget: { tierABytes: opts.tierA * decodedBytes, tierBBytes: opts.tierB }, telemetry: bus, prefetch: opts.prefetch, compute: opts.compute,
        })),
    });
    return { m, engine, samples };
  }

  function original(layer: number, expert: number, which: (typeof MATRICES)[number]): Float32Array {
    const key = `${layer}/${expert}/${which}`;
    if (!originals.has(key)) {
      const t = source.readExpert(layer, expert)[which];
      originals.set(key, decodeTensor(t.bytes, t.dtype));
    }
    return originals.get(key)!;
  }

  it('gives the all-resident model\'s greedy tokens at the exact level, through a cache of 2× the active experts', async function () {
    const want = await generate(resident.model, resident.tokenizer, PROMPT, { maxTokens: 32 });
    const { m, engine } = await offloaded({ tierA: 2 * 2 * 8, tierB: 0, compute: 'tfjs' });
    try {
      engine.setPlan(uniformPlan(8, store.exact, 1));
      const got = await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 32 });
      assert.equal(got.text, want.text);
      assert.equal(engine.fetcher.form, 'tfjs');
      assert.ok(engine.fetcher.stats.transfers > 0, 'experts crossed the link');
    } finally {
      m.dispose();
    }
  });

  it("gives the same tokens when the CPU engine multiplies from the cache's f32 buffers", async function () {
    const want = await generate(resident.model, resident.tokenizer, PROMPT, { maxTokens: 32 });
    const { m, engine } = await offloaded({ tierA: 2 * 2 * 8, tierB: 0, compute: 'cpu' });
    try {
      engine.setPlan(uniformPlan(8, store.exact, 1));
      const got = await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 32 });
      assert.equal(got.text, want.text);
      assert.equal(engine.fetcher.form, 'f32');
      assert.ok(engine.fetcher.stats.transfers > 0, 'experts crossed the link');
    } finally {
      m.dispose();
    }
  });

  it('hands the model only weights within the planned level\'s bound of the originals', async function () {
    let checked = 0;
    const levels = [0, 2, 1, 4, 3, 0, 2, 1]; // a mixed plan: every layer its own level
    const bus = new TelemetryBus();
    let engine!: OffloadExpertEngine;
    const m = await loadModel(EMBEDDED_MODEL_DIR, {
      engine: () =>
        (engine = new OffloadExpertEngine({
          store, link: new CopyLink(), budget: { tierABytes: 16 * decodedBytes, tierBBytes: 4e6 }, telemetry: bus,
          plan: { version: 1, levels },
          onExpertUsed: (layer, expert, h) => {
            assert.ok(h.level >= levels[layer], `layer ${layer}: handed level ${h.level}, planned ${levels[layer]}`);
            const stored = store.expert(layer, expert);
            const matrices = matricesOf(h.weights); // f32 in the checkpoint's layout, as the CPU engine reads them
            for (const which of MATRICES) {
              const got = matrices[which];
              const x = original(layer, expert, which);
              const eb = h.level === store.exact ? 0 : stored[which].bounds[h.level];
              let worst = 0;
              for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(got[i] - x[i]));
              assert.ok(worst <= eb, `layer ${layer} expert ${expert} ${which}: error ${worst} > bound ${eb}`);
            }
            checked++;
          },
        })),
    });
    try {
      await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 8 });
      assert.ok(checked >= 8 * 2 * 8, `${checked} expert uses checked`);
    } finally {
      m.dispose();
    }
  });

  it('never holds more than its budget in either tier, with prefetch racing the layers', async function () {
    const { m, engine, samples } = await offloaded({ tierA: 3, tierB: 5 * 60_000 });
    try {
      engine.setPlan(uniformPlan(8, 2, 1));
      let worstA = 0;
      let worstB = 0;
      const watch = () => {
        worstA = Math.max(worstA, engine.fetcher.tierA.used);
        worstB = Math.max(worstB, engine.fetcher.tierB.used);
      };
      samples.length = 0;
      const timer = setInterval(watch, 0);
      try {
        await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 12, onText: watch });
      } finally {
        clearInterval(timer);
      }
      for (const s of samples) if (s.kind === 'decompress') watch();
      assert.ok(worstA <= engine.fetcher.tierA.budgetBytes, `tier A peaked at ${worstA}`);
      assert.ok(worstB <= engine.fetcher.tierB.budgetBytes, `tier B peaked at ${worstB}`);
      assert.ok(engine.fetcher.tierA.evictions > 0, 'a 3-expert tier A must evict');
    } finally {
      m.dispose();
    }
  });

  it('moves one expert once when many ask for it at the same time', async function () {
    const { m, engine, samples } = await offloaded({ tierA: 4, tierB: 0 });
    try {
      const handles = await Promise.all(Array.from({ length: 6 }, () => engine.fetcher.acquire(3, 5, 2)));
      assert.equal(samples.filter((s) => s.kind === 'transfer').length, 1);
      assert.equal(engine.fetcher.stats.transfers, 1);
      assert.ok(handles.every((h) => h.weights === handles[0].weights), 'all share the one decoded copy');
      handles.forEach((h) => h.release());
    } finally {
      m.dispose();
    }
  });

  it('tightens a cached expert by moving only the missing residual rungs', async function () {
    const { m, engine, samples } = await offloaded({ tierA: 4, tierB: 1e6 });
    try {
      (await engine.fetcher.acquire(2, 1, 1)).release();
      (await engine.fetcher.acquire(2, 1, 3)).release();
      const moves = samples.filter((s) => s.kind === 'transfer');
      assert.equal(moves.length, 2);
      assert.equal(moves[0].bytes, store.levelBytes(2, 1, 1));
      assert.equal(moves[1].fromRung, 2);
      assert.equal(moves[1].bytes, store.levelBytes(2, 1, 3) - store.levelBytes(2, 1, 1));
      // Looser than what is held: a tier-A hit, nothing moves.
      (await engine.fetcher.acquire(2, 1, 0)).release();
      assert.equal(samples.filter((s) => s.kind === 'transfer').length, 2);
    } finally {
      m.dispose();
    }
  });

  it('hands out exactly the planned level with strictLevels, from the rungs tier B holds', async function () {
    const engine = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 4 * decodedBytes, tierBBytes: 1e6 }, strictLevels: true });
    try {
      const tight = await engine.fetcher.acquire(1, 2, 3);
      assert.equal(tight.level, 3);
      tight.release();
      const loose = await engine.fetcher.acquire(1, 2, 1);
      assert.equal(loose.level, 1, 'not the tighter copy it holds');
      loose.release();
      assert.equal(engine.fetcher.stats.transfers, 1, 'rungs 0..1 came from tier B');
    } finally {
      engine.dispose();
    }
  });

  it('serves a tier-A miss from tier B with a decompression and no transfer', async function () {
    const { m, engine, samples } = await offloaded({ tierA: 1, tierB: 1e6 });
    try {
      (await engine.fetcher.acquire(0, 0, 2)).release();
      (await engine.fetcher.acquire(0, 1, 2)).release(); // evicts (0, 0) from tier A
      samples.length = 0;
      (await engine.fetcher.acquire(0, 0, 2)).release();
      const kinds = samples.map((s) => (s.kind === 'cache' ? `${s.tier}:${s.result}` : s.kind));
      assert.deepEqual(kinds, ['A:miss', 'B:hit', 'decompress']);
    } finally {
      m.dispose();
    }
  });

  it('decodes a miss into the buffers of an evicted expert, at a codec level and at the exact level, with the right values', async function () {
    for (const level of [2, store.exact]) {
      const { m, engine } = await offloaded({ tierA: 1, tierB: 0, compute: 'cpu' });
      try {
        const first = await engine.fetcher.acquire(0, 0, level);
        const evicted = matricesOf(first.weights);
        first.release();
        // (0, 1) decodes, then evicts (0, 0), whose buffers become spare; (0, 2) decodes into them.
        (await engine.fetcher.acquire(0, 1, level)).release();
        const third = await engine.fetcher.acquire(0, 2, level);
        const got = matricesOf(third.weights);
        assert.ok(MATRICES.every((w) => [evicted.gate, evicted.up, evicted.down].includes(got[w])), `level ${level}: recycled buffers`);
        for (const w of MATRICES) {
          const x = original(0, 2, w);
          const eb = level === store.exact ? 0 : store.expert(0, 2)[w].bounds[level];
          for (let i = 0; i < x.length; i++) assert.ok(Math.abs(got[w][i] - x[i]) <= eb, `level ${level} ${w}[${i}]`);
        }
        third.release();
      } finally {
        m.dispose();
      }
    }
  });

  it('reports every forward step with its time split, and prefetch only when asked', async function () {
    for (const prefetch of [true, false]) {
      const { m, engine, samples } = await offloaded({ tierA: 32, tierB: 0, prefetch });
      try {
        const g = await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 6 });
        const steps = samples.filter((s) => s.kind === 'token');
        assert.equal(steps.length, g.completionTokens, 'a prefill and one step per further token');
        for (const s of steps) {
          assert.ok(s.computeSeconds >= 0 && s.transferWaitSeconds >= 0 && s.decompressWaitSeconds >= 0);
          assert.ok(Math.abs(s.computeSeconds + s.transferWaitSeconds + s.decompressWaitSeconds - s.seconds) < 1e-6);
        }
        assert.equal(engine.prefetchStats.issued > 0, prefetch);
        if (prefetch) assert.ok(samples.some((s) => s.kind === 'transfer' && s.prefetch), 'prefetch moved experts');
      } finally {
        m.dispose();
      }
    }
  });

  it('keeps each layer within its share of tier A when the budget is split per layer', async function () {
    const sizes = [2, 3, 2, 4, 2, 3, 2, 5];
    const budget = deviceBudget({ expertsByLayer: sizes }, store);
    let engine!: OffloadExpertEngine;
    const m = await loadModel(EMBEDDED_MODEL_DIR, { engine: () => (engine = new OffloadExpertEngine({ store, link: new CopyLink(), budget, prefetch: false })) });
    try {
      const tierA = engine.fetcher.tierA;
      const heldBy = (l: number) => tierA.keys().filter((k) => Math.floor(k / store.numExperts) === l).length;
      const most = new Array(8).fill(0);
      m.model.onRouting = () => {
        for (let l = 0; l < 8; l++) {
          assert.ok(tierA.usedBy(l) <= budget.tierALayerBytes![l], `layer ${l}: ${tierA.usedBy(l)} of ${budget.tierALayerBytes![l]} bytes`);
          most[l] = Math.max(most[l], heldBy(l));
        }
      };
      await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 24 });
      assert.deepEqual(most, sizes, 'every layer filled its own share, and no more');
      assert.ok(tierA.evictions > 0, 'the shares were tight enough to evict');
    } finally {
      m.dispose();
    }
  });

  it('tells the planner what an expert holds in tier A at each level: the entries it makes, fused, symbols or f32', async function () {
    for (const form of ['fused', 'symbols', 'f32'] as const) {
      for (const level of [0, 3, store.exact]) {
        let engine!: OffloadExpertEngine;
        const m = await loadModel(EMBEDDED_MODEL_DIR, {
          engine: () => (engine = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * decodedBytes, tierBBytes: 0 }, prefetch: false, compute: 'cpu', tierAForm: form, plan: uniformPlan(8, level) })),
        });
        try {
          await generate(m.model, m.tokenizer, PROMPT, { maxTokens: 4 });
          const tierA = engine.fetcher.tierA;
          for (let l = 0; l < 8; l++) {
            const keys = tierA.keys().filter((k) => Math.floor(k / store.numExperts) === l);
            assert.ok(keys.length > 0);
            const held = keys.reduce((a, k) => a + tierA.peek(k)!.bytes, 0) / keys.length;
            const told = engine.fetcher.heldBytesByLevel(l)[level];
            if (form === 'f32') assert.equal(told, decodedBytes);
            // The embedded model's experts fit 8 bits at every codec level of the default ladder,
            // and 4 at its loosest.
            if (form === 'symbols' && level !== store.exact) {
              const width = level === 0 ? 4 : 8;
              assert.ok(keys.every((k) => ((tierA.peek(k)!.weights as NativeExpert).gate as { bits?: number }).bits === width), `layer ${l} level ${level}: held as ${width}-bit symbols`);
              assert.ok(told < decodedBytes / (level === 0 ? 7 : 3.5), `symbols: ${told} bytes an expert`);
            }
            assert.ok(Math.abs(held / told - 1) < 0.05, `${form} layer ${l} level ${level}: entries hold ${held} bytes, the planner is told ${told}`);
          }
        } finally {
          m.dispose();
        }
      }
    }
  });

  it('refuses a plan that does not fit the ladder or the depth', async function () {
    const { m, engine } = await offloaded({ tierA: 4, tierB: 0 });
    try {
      assert.throws(() => engine.setPlan({ version: 2, levels: [0, 1] }), /names 2 layers; the model has 8/);
      assert.throws(() => engine.setPlan(uniformPlan(8, store.levels)), /layer 0 level 6 is not one of 0..5/);
    } finally {
      m.dispose();
    }
  });
});

describe('device budget from a profile', function () {
  const store = { numLayers: 8, expertValues: () => 1000 };

  it('counts decoded experts per layer into tier A bytes', function () {
    assert.deepEqual(deviceBudget({ expertsPerLayer: 2 }, store), { tierABytes: 2 * 8 * 4000, tierBBytes: 0 });
    assert.deepEqual(deviceBudget({ expertsPerLayer: 3, tierBBytes: 5000 }, store), { tierABytes: 3 * 8 * 4000, tierBBytes: 5000 });
  });

  it('splits a byte budget between the tiers, a quarter to tier B by default', function () {
    assert.deepEqual(deviceBudget({ deviceMemoryBudgetBytes: 1000 }, store), { tierABytes: 750, tierBBytes: 250 });
    assert.deepEqual(deviceBudget({ deviceMemoryBudgetBytes: 1000, tierBFraction: 0 }, store), { tierABytes: 1000, tierBBytes: 0 });
  });

  it('splits tier A per layer by experts_by_layer: exact counts alone, proportions of a byte budget', function () {
    const sizes = [2, 2, 3, 3, 4, 4, 8, 6];
    const alone = deviceBudget({ expertsByLayer: sizes, tierBBytes: 500 }, store);
    assert.deepEqual(alone, { tierABytes: 32 * 4000, tierBBytes: 500, tierALayerBytes: sizes.map((n) => n * 4000) });
    const split = deviceBudget({ deviceMemoryBudgetBytes: 64_000, expertsByLayer: sizes }, store);
    assert.equal(split.tierABytes, 48_000);
    assert.deepEqual(split.tierALayerBytes, sizes.map((n) => Math.floor((48_000 * n) / 32)));
    assert.throws(() => deviceBudget({ expertsByLayer: [2, 2] }, store), /experts by layer must be 8 whole numbers ≥ 1 \(one per layer\), got \[2, 2\]/);
    assert.throws(() => deviceBudget({ expertsPerLayer: 2, expertsByLayer: sizes }, store), /not both/);
  });

  it('refuses a budget it cannot read, naming what is wrong', function () {
    assert.throws(() => deviceBudget({}, store), /device memory budget bytes > 0 or experts per layer/);
    assert.throws(() => deviceBudget({ expertsPerLayer: 0 }, store), /whole number ≥ 1, got 0/);
    assert.throws(() => deviceBudget({ deviceMemoryBudgetBytes: 1000, tierBFraction: 1 }, store), /tier B fraction must be in \[0, 1\), got 1/);
  });
});
