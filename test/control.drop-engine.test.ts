// The drop rungs in the data plane and the profiler. The offload engine, on the embedded model's
// experts: skip-moe gives zeros and fetches (and prefetches) nothing; trim gives what the kept
// top-(k − 1) experts give with their weights renormalised, computed here by hand from the
// original weights, and fetches only the kept experts. The importance probe's cosine is checked
// by hand, and `ebserve profile` writes the drop measurements and the layer importance.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { decodeTensor } from '../src/codec/halfs-array.js';
import { loadProfile } from '../src/control/profile.js';
import { ImportanceProbe } from '../src/control/profiler.js';
import type { ExpertEngine } from '../src/offload/expert-engine.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel } from '../src/model/load.js';
import { OffloadExpertEngine, trimRouting } from '../src/offload/engine.js';
import { CopyLink } from '../src/offload/link.js';
import { uniformPlan, type DropState } from '../src/offload/plan.js';
import type { ExpertSource } from '../src/offload/source.js';
import { buildStore, type ExpertStore } from '../src/offload/store.js';

/** One expert's SwiGLU on one token, in doubles from the original weights: down · (silu(gate·h) ⊙ up·h). */
function swigluByHand(src: ExpertSource, layer: number, expert: number, h: Float32Array, d: number): Float64Array {
  const raw = src.readExpert(layer, expert);
  const [gate, up, down] = (['gate', 'up', 'down'] as const).map((m) => decodeTensor(raw[m].bytes, raw[m].dtype));
  const ff = gate.length / d;
  const act = new Float64Array(ff);
  for (let i = 0; i < ff; i++) {
    let g = 0;
    let u = 0;
    for (let j = 0; j < d; j++) {
      g += gate[i * d + j] * h[j];
      u += up[i * d + j] * h[j];
    }
    act[i] = (g / (1 + Math.exp(-g))) * u;
  }
  const out = new Float64Array(d);
  for (let j = 0; j < d; j++) for (let i = 0; i < ff; i++) out[j] += down[j * ff + i] * act[i];
  return out;
}

describe('offload engine: drop rungs (embedded model)', function () {
  this.timeout(60_000);
  let source: ExpertSource;
  let store: ExpertStore;
  let dispose: () => void;
  let d: number;
  before(async function () {
    const m = await loadModel(EMBEDDED_MODEL_DIR);
    dispose = () => m.dispose();
    source = checkpointExperts(m.checkpoint);
    store = await buildStore(source, { bounds: [0.5], boundMode: 'sigma', exact: true });
    d = m.checkpoint.config.hiddenSize;
  });
  after(function () {
    dispose?.();
  });

  const T = 3;
  const ids = Int32Array.from([1, 4, 6, 2, 3, 0]);
  const weights = Float32Array.from([0.6, 0.4, 0.1, 0.9, 0.45, 0.35]);
  const hidden = () => Float32Array.from({ length: T * d }, (_, i) => Math.sin(0.37 * i + 1) * 0.5);

  function engine(layer: number, drop: DropState) {
    const used: number[] = [];
    const plan = { ...uniformPlan(store.numLayers, store.exact, 1), drop: Array.from({ length: store.numLayers }, (_, l): DropState => (l === layer ? drop : 'none')) };
    const e = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * store.expertValues(0, 0) * 4, tierBBytes: 0 }, plan, onExpertUsed: (l, x) => l === layer && used.push(x) });
    return { e, used };
  }

  /** Σ over each token's (kept) experts of weight × that expert's SwiGLU, by hand. */
  function reference(layer: number, h: Float32Array, ids_: Int32Array, w: Float32Array): Float64Array {
    const k = ids_.length / T;
    const out = new Float64Array(T * d);
    for (let t = 0; t < T; t++) {
      const ht = h.subarray(t * d, (t + 1) * d);
      for (let j = 0; j < k; j++) {
        const y = swigluByHand(source, layer, ids_[t * k + j], ht, d);
        for (let i = 0; i < d; i++) out[t * d + i] += w[t * k + j] * y[i];
      }
    }
    return out;
  }
  const close = (got: Float32Array, want: Float64Array) => {
    const scale = Math.max(...Array.from(want, Math.abs));
    assert.ok(scale > 0);
    for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= 1e-4 * scale, `element ${i}: ${got[i]} vs ${want[i]}`);
  };

  it('computes the full top-k as the hand reference (the reference itself is right)', async function () {
    const { e } = engine(2, 'none');
    try {
      close(await e.compute(2, hidden(), ids, weights, T), reference(2, hidden(), ids, weights));
    } finally {
      e.dispose();
    }
  });

  it('trim: each token keeps its higher-weight expert with the pair\'s summed weight, and fetches only those', async function () {
    const { e, used } = engine(3, 'trim');
    try {
      const got = await e.compute(3, hidden(), ids, weights, T);
      // By hand: token 0 keeps expert 1 (0.6 of 1.0), token 1 expert 2 (0.9 of 1.0), token 2 expert 3 (0.45 of 0.8).
      close(got, reference(3, hidden(), Int32Array.from([1, 2, 3]), Float32Array.from([1.0, 1.0, 0.8])));
      assert.deepEqual([...new Set(used)].sort(), [1, 2, 3]);
      // Other layers are untouched by layer 3's rung.
      close(await e.compute(2, hidden(), ids, weights, T), reference(2, hidden(), ids, weights));
    } finally {
      e.dispose();
    }
  });

  it('skip-moe: zeros, with no fetch and no prefetch for that layer', async function () {
    const { e, used } = engine(5, 'skip-moe');
    try {
      e.prefetch!(5, ids);
      assert.equal(e.prefetchStats.issued, 0, 'no prefetch for a skipped layer');
      const got = await e.compute(5, hidden(), ids, weights, T);
      assert.equal(got.length, T * d);
      assert.ok(got.every((x) => x === 0));
      assert.deepEqual(used, []);
      assert.equal(e.prefetchStats.demanded, 0, 'nothing was asked of the fetcher');
      e.prefetch!(4, ids);
      assert.ok(e.prefetchStats.issued > 0, 'other layers still prefetch');
    } finally {
      e.dispose();
    }
  });

  it('trimRouting leaves a top-1 routing as it is, and renormalises to the original sum', function () {
    const one = { ids: Int32Array.from([3, 5]), weights: Float32Array.from([1, 1]) };
    assert.deepEqual(trimRouting(one.ids, one.weights, 2), one);
    const r = trimRouting(Int32Array.from([7, 1, 4]), Float32Array.from([0.2, 0.5, 0.3]), 1);
    assert.deepEqual([...r.ids], [1, 4]);
    assert.ok(Math.abs(r.weights[0] - 0.625) < 1e-6 && Math.abs(r.weights[1] - 0.375) < 1e-6);
  });
});

describe('profiler: importance probe', function () {
  it('averages 1 − cos(state in, state in + MoE output) per layer over tokens', async function () {
    // An inner engine whose output is known: layer 0 adds a copy of the input (cos 1), layer 1 a
    // vector orthogonal to it for token 0 (cos 1/√2) and the negated input for token 1 (state 0: not counted).
    const inner: ExpertEngine = {
      compute: async (layer, h, _ids, _w, T) => {
        const out = new Float32Array(h.length);
        if (layer === 0) out.set(h);
        else {
          out[0] = 0;
          out[1] = 1; // token 0's input is [1, 0]
          out[2] = -h[2];
          out[3] = -h[3];
        }
        return out.subarray(0, T * 2);
      },
      dispose() {},
    };
    const probe = new ImportanceProbe(inner, 2, 2);
    const h = Float32Array.from([1, 0, 0.3, 0.4]);
    await probe.compute(0, h, new Int32Array(4), new Float32Array(4), 2);
    await probe.compute(1, h, new Int32Array(4), new Float32Array(4), 2);
    const imp = probe.importance();
    assert.equal(imp[0], 0);
    assert.ok(Math.abs(imp[1] - (1 - Math.SQRT1_2)) < 1e-6, String(imp[1]));
    assert.deepEqual(probe.tokens, [2, 1]);
  });
});

describe('ebserve profile: drop rungs and layer importance (embedded model)', function () {
  this.timeout(240_000);
  it('writes each layer\'s trim and skip-moe cost and KL, and its importance, into the profile', async function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-drop-profile-'));
    try {
      const out = path.join(dir, 'tiny.yaml');
      await promisify(execFile)(path.resolve('bin/ebserve'), ['profile', '--items', '1', '--experts', '0', '--error-models', 'codec', '--out', out], { maxBuffer: 1 << 24 });
      const p = loadProfile(out);
      const L = 8;
      const drop = p.sensitivity?.drop;
      assert.ok(drop, 'sensitivity.drop written');
      for (const k of ['trim', 'skip_moe', 'trim_kl', 'skip_moe_kl'] as const) assert.equal(drop[k]?.length, L, k);
      // Zeroing a whole MoE block moves the logits more than dropping one of two experts, somewhere.
      assert.ok(drop.skip_moe_kl!.some((x, l) => x > drop.trim_kl![l]), JSON.stringify(drop));
      assert.ok(drop.skip_moe_kl!.every((x) => x > 0), 'skipping any block changes the logits');
      const imp = p.layer_importance!.layers;
      assert.equal(imp.length, L);
      assert.ok(imp.every((x) => x > 0 && x < 1), imp.join(', '));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
