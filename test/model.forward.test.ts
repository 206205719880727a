// The forward pass against an independent float64 reference, on random small configurations that
// exercise what each architecture adds: grouped KV heads (Mixtral), q/k/v biases and a gated
// shared expert (Qwen2-MoE), per-head q/k norms and a head dim apart from d/H (Qwen3-MoE),
// full-width q/k norms without top-k renormalisation (OLMoE), tied embeddings.
import assert from 'node:assert/strict';

import { initBackend } from '../src/model/backend.js';
import { ResidentExpertEngine } from '../src/model/engine.js';
import { KvCache } from '../src/model/kv-cache.js';
import { MoeTransformer, type DenseTensorNames } from '../src/model/transformer.js';
import type { ModelConfig } from '../src/model/types.js';
import { rng } from './codec/data.js';
import { referenceLogits } from './model/reference.js';

function config(over: Partial<ModelConfig>): ModelConfig {
  return {
    arch: 'mixtral', vocabSize: 37, hiddenSize: 16, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 4,
    numExperts: 5, topK: 2, normTopkProb: true, expertFfnSize: 12, sharedExpertFfnSize: 0, ropeTheta: 10000,
    rmsNormEps: 1e-5, maxPositions: 32, tieWordEmbeddings: false, attentionBias: false, qkNorm: 'none', tokenizer: 'bytes',
    ...over,
  };
}

/** Random weights under synthetic names, for config `c`. */
function randomModel(c: ModelConfig, seed: number) {
  const r = rng(seed);
  const w = new Map<string, Float32Array>();
  const mat = (name: string, rows: number, cols: number) =>
    w.set(name, Float32Array.from({ length: rows * cols }, () => ((r() - 0.5) * 2) / Math.sqrt(cols)));
  const vec = (name: string, n: number, around = 1) => w.set(name, Float32Array.from({ length: n }, () => around + (r() - 0.5) * 0.4));
  const d = c.hiddenSize;
  const qw = c.numHeads * c.headDim;
  const kw = c.numKvHeads * c.headDim;
  mat('embed', c.vocabSize, d);
  vec('norm', d);
  if (!c.tieWordEmbeddings) mat('lm_head', c.vocabSize, d);
  const names: DenseTensorNames = { embed: 'embed', norm: 'norm', lmHead: c.tieWordEmbeddings ? 'embed' : 'lm_head', layers: [] };
  for (let l = 0; l < c.numLayers; l++) {
    const p = `l${l}.`;
    vec(p + 'in', d);
    vec(p + 'post', d);
    mat(p + 'q', qw, d);
    mat(p + 'k', kw, d);
    mat(p + 'v', kw, d);
    mat(p + 'o', d, qw);
    mat(p + 'router', c.numExperts, d);
    const L: DenseTensorNames['layers'][number] = { inputNorm: p + 'in', postNorm: p + 'post', q: p + 'q', k: p + 'k', v: p + 'v', o: p + 'o', router: p + 'router' };
    if (c.attentionBias) {
      vec(p + 'qb', qw, 0);
      vec(p + 'kb', kw, 0);
      vec(p + 'vb', kw, 0);
      Object.assign(L, { qBias: p + 'qb', kBias: p + 'kb', vBias: p + 'vb' });
    }
    if (c.qkNorm !== 'none') {
      vec(p + 'qn', c.qkNorm === 'head' ? c.headDim : qw);
      vec(p + 'kn', c.qkNorm === 'head' ? c.headDim : kw);
      Object.assign(L, { qNorm: p + 'qn', kNorm: p + 'kn' });
    }
    if (c.sharedExpertFfnSize) {
      const f = c.sharedExpertFfnSize;
      mat(p + 'sg', 1, d);
      mat(p + 's.gate', f, d);
      mat(p + 's.up', f, d);
      mat(p + 's.down', d, f);
      Object.assign(L, { sharedGate: p + 'sg', shared: { gate: p + 's.gate', up: p + 's.up', down: p + 's.down' } });
    }
    for (let e = 0; e < c.numExperts; e++) {
      mat(`${p}e${e}.gate`, c.expertFfnSize, d);
      mat(`${p}e${e}.up`, c.expertFfnSize, d);
      mat(`${p}e${e}.down`, d, c.expertFfnSize);
    }
    names.layers.push(L);
  }
  const read = (name: string) => {
    const t = w.get(name);
    if (!t) throw new Error(`no tensor ${name}`);
    return t;
  };
  const experts = (l: number, e: number) => ({ gate: read(`l${l}.e${e}.gate`), up: read(`l${l}.e${e}.up`), down: read(`l${l}.e${e}.down`) });
  return { read, names, experts };
}

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

  for (const [what, over] of CASES) {
    it(`matches the float64 reference within 1e-4, full and incremental: ${what}`, async function () {
      const c = config(over);
      const m = randomModel(c, 42);
      const engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, m.experts);
      const model = new MoeTransformer(c, m.read, m.names, engine);
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
