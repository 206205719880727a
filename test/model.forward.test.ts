// The forward pass against an independent float64 reference, on random small configurations that
// exercise what each architecture adds: grouped KV heads (Mixtral), q/k/v biases and a gated
// shared expert (Qwen2-MoE), per-head q/k norms and a head dim apart from d/H (Qwen3-MoE),
// full-width q/k norms without top-k renormalisation (OLMoE), tied embeddings.
import assert from 'node:assert/strict';

import * as tf from '@tensorflow/tfjs';

import { initBackend } from '../src/model/backend.js';
import { ResidentExpertEngine } from '../src/model/engine.js';
import { KvCache } from '../src/model/kv-cache.js';
import { NativeForward, nativeForwardUnsupported } from '../src/model/native-forward.js';
import { MoeTransformer, predictRouting, rotaryTables } from '../src/model/transformer.js';
import type { ModelConfig } from '../src/model/types.js';
import { rng } from './codec/data.js';
import { randomModel, smallConfig as config } from './model/random-model.js';
import { referenceLogits } from './model/reference.js';

function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

const CASES: [string, Partial<ModelConfig>][] = [
  ['Mixtral: grouped KV heads, top-k renormalised', {}],
  ['Qwen2-MoE: q/k/v biases, gated shared expert, no renormalisation', { arch: 'qwen2_moe', numKvHeads: 4, attentionBias: true, sharedExpertFfnSize: 20, normTopkProb: false }],
  ['Qwen3-MoE: per-head q/k norms, head dim 8 with d/H = 4', { arch: 'qwen3_moe', headDim: 8, qkNorm: 'head', topK: 3 }],
  ['OLMoE: full-width q/k norms, tied embeddings, no renormalisation', { arch: 'olmoe', qkNorm: 'full', normTopkProb: false, tieWordEmbeddings: true, numKvHeads: 4 }],
];

describe('MoE forward pass', function () {
  before(async function () {
    await initBackend();
  });

  // Each case on the TensorFlow.js forward, and on the native forward where it covers the
  // architecture (every case but Qwen2-MoE's shared expert).
  const paths = (c: ModelConfig) => ['TensorFlow.js', ...(nativeForwardUnsupported(c) ? [] : ['native'])];
  for (const [what, over] of CASES) for (const path of paths(config(over))) {
    it(`matches the float64 reference within 1e-4, full and incremental, ${path} forward: ${what}`, async function () {
      const c = config(over);
      const m = randomModel(c, 42);
      const engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, m.experts);
      const model = new MoeTransformer(c, m.read, m.names, engine);
      if (path === 'native') model.useNativeForward(new NativeForward(c, m.read, m.names, rotaryTables(c.headDim, c.maxPositions, c.ropeTheta)));
      const r = rng(3);
      const tokens = Array.from({ length: 11 }, () => Math.floor(r() * c.vocabSize));
      const ref = referenceLogits(c, m.read, m.names, m.experts, tokens);
      const width = c.numKvHeads * c.headDim;

      // The whole prompt at once.
      const all = await model.forward(tokens, new KvCache(c.numLayers, width, c.maxPositions), true);
      for (let t = 0; t < tokens.length; t++) {
        const e = relError(all.subarray(t * c.vocabSize, (t + 1) * c.vocabSize), ref[t]);
        assert.ok(e <= 1e-4, `position ${t}: relative error ${e}`);
      }
      // A prefix, then one token at a time through the cache.
      const cache = new KvCache(c.numLayers, width, c.maxPositions);
      await model.forward(tokens.slice(0, 4), cache);
      for (let t = 4; t < tokens.length; t++) {
        const logits = await model.forward([tokens[t]], cache);
        const e = relError(logits, ref[t]);
        assert.ok(e <= 1e-4, `incremental position ${t}: relative error ${e}`);
      }
      assert.equal(cache.length, tokens.length);
      model.dispose();
      engine.dispose();
    });
  }

  it('attends over a cache of 2 MiB or more on both cores, as on one (a long context, native forward)', async function () {
    // 8 KV heads of 128: 1,024 floats a position, so from position 256 on the keys and values a
    // position attends over hold ≥ 2 MiB and the step's (position, head) tasks go to the pool.
    const c = config({ hiddenSize: 32, numHeads: 8, numKvHeads: 8, headDim: 128, numLayers: 1, maxPositions: 300 });
    const m = randomModel(c, 7);
    const engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, m.experts);
    const forward = new NativeForward(c, m.read, m.names, rotaryTables(c.headDim, c.maxPositions, c.ropeTheta));
    const r = rng(11);
    const tokens = Array.from({ length: 300 }, () => Math.floor(r() * c.vocabSize));
    const width = c.numKvHeads * c.headDim;
    const ref = referenceLogits(c, m.read, m.names, m.experts, tokens);
    // The whole prompt in one step (every position's attention on the pool), then one token a step
    // (on the calling thread alone below position 256, on the pool from it): both the reference's.
    const [whole] = await forward.step([{ tokens, cache: new KvCache(c.numLayers, width, c.maxPositions), allLogits: true }], engine);
    const cache = new KvCache(c.numLayers, width, c.maxPositions);
    for (let t = 0; t < tokens.length; t++) {
      const [one] = await forward.step([{ tokens: [tokens[t]], cache }], engine);
      assert.ok(relError(whole.subarray(t * c.vocabSize, (t + 1) * c.vocabSize), ref[t]) <= 1e-4, `whole prompt, position ${t}`);
      assert.ok(relError(one, ref[t]) <= 1e-4, `one token a step, position ${t}`);
    }
    engine.dispose();
  });

  it('refuses tokens outside the vocabulary and positions past the context', async function () {
    const c = config({ maxPositions: 6 });
    const m = randomModel(c, 1);
    const engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, m.experts);
    const model = new MoeTransformer(c, m.read, m.names, engine);
    const width = c.numKvHeads * c.headDim;
    await assert.rejects(model.forward([c.vocabSize], new KvCache(c.numLayers, width, 6)), /outside the vocabulary/);
    await assert.rejects(model.forward([1, 2, 3, 4, 5, 6, 7], new KvCache(c.numLayers, width, 6)), /context is 6 positions/);
    model.dispose();
    engine.dispose();
  });
});

describe('prefetch hints', function () {
  before(async function () {
    await initBackend();
  });

  it("predicts with each layer's own norm and router: the top-k of tfjs's routing logits", function () {
    const c = config({ numExperts: 6, topK: 2 });
    const d = c.hiddenSize;
    const r = rng(9);
    const T = 7;
    const hidden = Float32Array.from({ length: T * d }, () => r() * 2 - 1);
    const norm = Float32Array.from({ length: d }, () => 0.5 + r());
    const router = Float32Array.from({ length: c.numExperts * d }, () => r() * 2 - 1);
    const ids = predictRouting({ norm, router }, hidden, T, d, c.topK, c.rmsNormEps);
    const want = tf.tidy(() => {
      const h = tf.tensor2d(hidden, [T, d]);
      const n = tf.mul(h, tf.rsqrt(tf.add(tf.mean(tf.square(h), -1, true), c.rmsNormEps)));
      return tf.topk(tf.matMul(tf.mul(n, tf.tensor1d(norm)), tf.tensor2d(router, [c.numExperts, d]), false, true), c.topK).indices.dataSync();
    });
    assert.deepEqual(Array.from(ids), Array.from(want));
  });

  it('hints every layer after the layer before asked for its experts, before they compute; layer 0 from the token embeddings', async function () {
    const c = config({});
    const m = randomModel(c, 5);
    const inner = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, m.experts);
    const events: string[] = [];
    const hints: Int32Array[] = [];
    const engine = {
      // As an engine that fetches: it asks for its experts in the call, computes after its first await.
      compute: (l: number, h: Float32Array, ids: Int32Array, w: Float32Array, T: number) => {
        events.push(`ask ${l}`);
        return Promise.resolve().then(() => (events.push(`compute ${l}`), inner.compute(l, h, ids, w, T)));
      },
      prefetch: (l: number, ids: Int32Array) => (events.push(`hint ${l}`), (hints[l] = ids)),
      dispose: () => inner.dispose(),
    };
    const model = new MoeTransformer(c, m.read, m.names, engine);
    const tokens = [3, 1, 4];
    await model.forward(tokens, new KvCache(c.numLayers, c.numKvHeads * c.headDim, c.maxPositions));
    // Layer l + 1's hint comes after layer l asked for its experts (their fetches go first),
    // before layer l computes them.
    const order = ['hint 0'];
    for (let l = 0; l < c.numLayers; l++) order.push(`ask ${l}`, ...(l + 1 < c.numLayers ? [`hint ${l + 1}`] : []), `compute ${l}`);
    assert.deepEqual(events, order);
    const d = c.hiddenSize;
    const embed = m.read(m.names.embed);
    const x0 = new Float32Array(tokens.length * d);
    tokens.forEach((t, i) => x0.set(embed.subarray(t * d, (t + 1) * d), i * d));
    const n0 = m.names.layers[0];
    assert.deepEqual(Array.from(hints[0]), Array.from(predictRouting({ norm: m.read(n0.postNorm), router: m.read(n0.router) }, x0, tokens.length, d, c.topK, c.rmsNormEps)));
  });
});
