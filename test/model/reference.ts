// An independent reference of the MoE decoder: plain loops over arrays in float64, no cache, no
// TensorFlow.js. The runtime (src/model/transformer.ts) must agree with it. Written from the
// Hugging Face definitions, not from the runtime's code.
import type { DenseTensorNames } from '../../src/model/transformer.js';
import type { ModelConfig } from '../../src/model/types.js';

type Read = (name: string) => Float32Array;
export type ExpertRead = (layer: number, expert: number) => { gate: Float32Array; up: Float32Array; down: Float32Array };

/** y = W x for W stored [out, in] (+ bias). */
function linear(W: Float32Array, x: Float64Array, out: number, bias?: Float32Array): Float64Array {
  const n = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = bias ? bias[o] : 0;
    for (let i = 0; i < n; i++) s += W[o * n + i] * x[i];
    y[o] = s;
  }
  return y;
}

function rmsnorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ms = 0;
  for (const v of x) ms += v * v;
  const r = 1 / Math.sqrt(ms / x.length + eps);
  return x.map((v, i) => v * r * w[i]);
}

const silu = (v: number) => v / (1 + Math.exp(-v));

function swiglu(x: Float64Array, gate: Float32Array, up: Float32Array, down: Float32Array, ff: number): Float64Array {
  const g = linear(gate, x, ff);
  const u = linear(up, x, ff);
  return linear(down, g.map((v, i) => silu(v) * u[i]), x.length);
}

/** rotate_half rotary embedding of one head vector at position p. */
function rope(v: Float64Array, p: number, theta: number): Float64Array {
  const hd = v.length;
  const out = new Float64Array(hd);
  for (let i = 0; i < hd / 2; i++) {
    const a = p * Math.pow(theta, (-2 * i) / hd);
    const [c, s] = [Math.cos(a), Math.sin(a)];
    out[i] = v[i] * c - v[i + hd / 2] * s;
    out[i + hd / 2] = v[i + hd / 2] * c + v[i] * s;
  }
  return out;
}

/** Logits [T, V] for every position of `tokens`, recomputed from scratch. */
export function referenceLogits(c: ModelConfig, read: Read, names: DenseTensorNames, experts: ExpertRead, tokens: number[]): Float64Array[] {
  const d = c.hiddenSize;
  const { numHeads: H, numKvHeads: KV, headDim: hd } = c;
  const embed = read(names.embed);
  let xs = tokens.map((t) => Float64Array.from(embed.subarray(t * d, t * d + d)));
  for (let l = 0; l < c.numLayers; l++) {
    const n = names.layers[l];
    const hs = xs.map((x) => rmsnorm(x, read(n.inputNorm), c.rmsNormEps));
    const qs: Float64Array[][] = [];
    const ks: Float64Array[][] = [];
    const vs: Float64Array[][] = [];
    hs.forEach((h, p) => {
      let q = linear(read(n.q), h, H * hd, n.qBias ? read(n.qBias) : undefined);
      let k = linear(read(n.k), h, KV * hd, n.kBias ? read(n.kBias) : undefined);
      const v = linear(read(n.v), h, KV * hd, n.vBias ? read(n.vBias) : undefined);
      if (c.qkNorm === 'full') {
        q = rmsnorm(q, read(n.qNorm!), c.rmsNormEps);
        k = rmsnorm(k, read(n.kNorm!), c.rmsNormEps);
      }
      const head = (a: Float64Array, j: number) => a.slice(j * hd, (j + 1) * hd);
      const norm = (a: Float64Array, w: string | undefined) => (c.qkNorm === 'head' ? rmsnorm(a, read(w!), c.rmsNormEps) : a);
      qs.push(Array.from({ length: H }, (_, j) => rope(norm(head(q, j), n.qNorm), p, c.ropeTheta)));
      ks.push(Array.from({ length: KV }, (_, j) => rope(norm(head(k, j), n.kNorm), p, c.ropeTheta)));
      vs.push(Array.from({ length: KV }, (_, j) => head(v, j)));
    });
    xs = xs.map((x, p) => {
      const ctx = new Float64Array(H * hd);
      for (let j = 0; j < H; j++) {
        const g = Math.floor(j / (H / KV)); // the KV head query head j shares
        const scores = Array.from({ length: p + 1 }, (_, s) => {
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += qs[p][j][i] * ks[s][g][i];
          return dot / Math.sqrt(hd);
        });
        const m = Math.max(...scores);
        const e = scores.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let s = 0; s <= p; s++) for (let i = 0; i < hd; i++) ctx[j * hd + i] += (e[s] / z) * vs[s][g][i];
      }
      const attn = linear(read(n.o), ctx, d);
      return x.map((v, i) => v + attn[i]);
    });
    xs = xs.map((x) => {
      const h = rmsnorm(x, read(n.postNorm), c.rmsNormEps);
      const logits = linear(read(n.router), h, c.numExperts);
      const m = Math.max(...logits);
      const e = logits.map((v) => Math.exp(v - m));
      const z = e.reduce((a, b) => a + b, 0);
      const probs = Array.from(e, (v, i) => [v / z, i]).sort((a, b) => b[0] - a[0]).slice(0, c.topK);
      const sum = c.normTopkProb ? probs.reduce((a, [p]) => a + p, 0) : 1;
      const out = Float64Array.from(x);
      for (const [p, i] of probs) {
        const ex = experts(l, i);
        const y = swiglu(h, ex.gate, ex.up, ex.down, c.expertFfnSize);
        for (let j = 0; j < d; j++) out[j] += (p / sum) * y[j];
      }
      if (n.shared) {
        const gate = 1 / (1 + Math.exp(-linear(read(n.sharedGate!), h, 1)[0]));
        const y = swiglu(h, read(n.shared.gate), read(n.shared.up), read(n.shared.down), c.sharedExpertFfnSize);
        for (let j = 0; j < d; j++) out[j] += gate * y[j];
      }
      return out;
    });
  }
  return xs.map((x) => linear(read(names.lmHead), rmsnorm(x, read(names.norm), c.rmsNormEps), c.vocabSize));
}
