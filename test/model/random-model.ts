// Small random models for tests: a configuration with every size tiny, and weights under
// synthetic tensor names (the forward pass takes any names; the loader's own tests cover the
// architectures' real ones).
import type { DenseTensorNames } from '../../src/model/transformer.js';
import type { ModelConfig } from '../../src/model/types.js';
import { rng } from '../codec/data.js';

export function smallConfig(over: Partial<ModelConfig>): ModelConfig {
  return {
    arch: 'mixtral', vocabSize: 37, hiddenSize: 16, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 4,
    numExperts: 5, topK: 2, normTopkProb: true, expertFfnSize: 12, sharedExpertFfnSize: 0, ropeTheta: 10000,
    rmsNormEps: 1e-5, maxPositions: 32, tieWordEmbeddings: false, attentionBias: false, qkNorm: 'none', tokenizer: 'bytes',
    ...over,
  };
}

/** Random weights under synthetic names, for config `c`. */
export function randomModel(c: ModelConfig, seed: number) {
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

