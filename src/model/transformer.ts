/**
 * The MoE decoder's forward pass: embedding, N blocks of RMSNorm → rotary self-attention with
 * grouped KV heads and a KV cache → RMSNorm → MoE (softmax router, top-k, SwiGLU experts through
 * an ExpertEngine, optional shared expert with its sigmoid gate) → final norm → LM head.
 * Dense parts run on TensorFlow.js; routed experts go through the engine.
 *
 * Shapes: T new tokens, S = cached + new positions, d hidden, H query heads, G = H / KV query
 * heads per KV head, hd head dim, E experts, k experts per token, V vocabulary.
 * Conventions (Hugging Face): rotary on the two halves of hd (rotate_half), inv_freq_i =
 * θ^(−2i/hd); RMSNorm x · rsqrt(mean(x²) + ε) · w; Linear weights stored [out, in].
 */
import * as tf from '@tensorflow/tfjs';

import { swiglu, swigluTensors, type ExpertEngine, type StepShape, type SwigluTensors } from '../offload/expert-engine.js';
import type { KvCache } from './kv-cache.js';
import type { NativeForward } from './native-forward.js';
import type { ModelConfig } from './types.js';

/** Checkpoint names of one layer's dense tensors (optional ones as the architecture has them). */
export interface LayerTensorNames {
  inputNorm: string;
  q: string;
  k: string;
  v: string;
  o: string;
  qBias?: string;
  kBias?: string;
  vBias?: string;
  qNorm?: string;
  kNorm?: string;
  postNorm: string;
  router: string;
  sharedGate?: string;
  shared?: { gate: string; up: string; down: string };
}

export interface DenseTensorNames {
  embed: string;
  norm: string;
  /** The LM head, or the embedding's name when they are tied. */
  lmHead: string;
  layers: LayerTensorNames[];
}

interface DenseLayer {
  inputNorm: tf.Tensor1D;
  postNorm: tf.Tensor1D;
  wq: tf.Tensor2D; // [d, H·hd]
  wk: tf.Tensor2D; // [d, KV·hd]
  wv: tf.Tensor2D;
  wo: tf.Tensor2D; // [H·hd, d]
  bq?: tf.Tensor1D;
  bk?: tf.Tensor1D;
  bv?: tf.Tensor1D;
  qNorm?: tf.Tensor1D;
  kNorm?: tf.Tensor1D;
  router: tf.Tensor2D; // [d, E]
  sharedGate?: tf.Tensor2D; // [d, 1]
  shared?: SwigluTensors;
}

/** One sequence's share of a forward step (see MoeTransformer.forwardBatch). */
export interface SequenceStep {
  /** New tokens, at positions cache.length.. (at least one). */
  tokens: number[];
  /** This sequence's own cache: written and advanced by the step. */
  cache: KvCache;
  /** Logits of every new position [T, V] instead of the last one's [V]. */
  allLogits?: boolean;
  /** These tokens are (a chunk of) a prompt, not a decode token (default: more than one token). */
  prefill?: boolean;
}

/**
 * Throws a RangeError naming what is wrong with one sequence of a step: no tokens, a token
 * outside the vocabulary, or positions past the context.
 */
export function checkSequence(c: ModelConfig, s: SequenceStep): void {
  const T = s.tokens.length;
  if (T === 0) throw new RangeError('forward needs at least one token');
  const context = Math.min(c.maxPositions, s.cache.maxPositions);
  if (s.cache.length + T > context) throw new RangeError(`context is ${context} positions; ${s.cache.length + T} asked`);
  for (const tok of s.tokens) if (!(Number.isInteger(tok) && tok >= 0 && tok < c.vocabSize)) throw new RangeError(`token ${tok} outside the vocabulary of ${c.vocabSize}`);
}

/** What a step holds, as the engines' telemetry reports it. */
export function stepShape(seqs: SequenceStep[]): StepShape {
  let tokens = 0;
  let prefillTokens = 0;
  for (const s of seqs) {
    tokens += s.tokens.length;
    if (s.prefill ?? s.tokens.length > 1) prefillTokens += s.tokens.length;
  }
  return { tokens, sequences: seqs.length, prefillTokens };
}

/** The routing decision of one layer for T tokens: ids and weights, [T, k] each. */
export interface Routing {
  layer: number;
  ids: Int32Array;
  weights: Float32Array;
}

/** The dense weights as TensorFlow.js tensors (the TensorFlow.js pass's). */
interface DenseTensors {
  layers: DenseLayer[];
  norm: tf.Tensor1D;
  lmHeadT: tf.Tensor2D; // [d, V]
}

function denseTensors(c: ModelConfig, read: (name: string) => Float32Array, names: DenseTensorNames): DenseTensors {
  const d = c.hiddenSize;
  const t2 = (name: string, rows: number, cols: number) =>
    tf.tidy(() => tf.tensor2d(read(name), [rows, cols]).transpose() as tf.Tensor2D);
  const t1 = (name: string) => tf.tensor1d(read(name));
  return {
    norm: t1(names.norm),
    lmHeadT: t2(names.lmHead, c.vocabSize, d),
    layers: names.layers.map((n) => ({
      inputNorm: t1(n.inputNorm),
      postNorm: t1(n.postNorm),
      wq: t2(n.q, c.numHeads * c.headDim, d),
      wk: t2(n.k, c.numKvHeads * c.headDim, d),
      wv: t2(n.v, c.numKvHeads * c.headDim, d),
      wo: t2(n.o, d, c.numHeads * c.headDim),
      bq: n.qBias ? t1(n.qBias) : undefined,
      bk: n.kBias ? t1(n.kBias) : undefined,
      bv: n.vBias ? t1(n.vBias) : undefined,
      qNorm: n.qNorm ? t1(n.qNorm) : undefined,
      kNorm: n.kNorm ? t1(n.kNorm) : undefined,
      router: t2(n.router, c.numExperts, d),
      sharedGate: n.sharedGate ? t2(n.sharedGate, 1, d) : undefined,
      shared: n.shared
        ? swigluTensors({ gate: read(n.shared.gate), up: read(n.shared.up), down: read(n.shared.down) }, d, c.sharedExpertFfnSize)
        : undefined,
    })),
  };
}

export class MoeTransformer {
  /**
   * Built on the first TensorFlow.js pass: with the native forward serving, the addon holds the
   * dense weights and these f32 tensors would be a second copy of all of them (on OLMoE's shape
   * about 1.5 GB) that nothing reads.
   */
  private tensors?: DenseTensors;
  private readonly embed: Float32Array; // [V, d], host: a lookup is a row copy
  private readonly cos: Float32Array; // [maxPositions, hd]
  private readonly sin: Float32Array;
  /** Each layer's post-attention norm and router [E, d] in host memory, for prefetch predictions. */
  private readonly hostRouting: { norm: Float32Array; router: Float32Array }[];
  /** Called with every layer's routing (usage statistics, prefetch). */
  onRouting?: (r: Routing) => void;
  /** Runs every pass in the addon instead (see useNativeForward). */
  private native?: NativeForward;

  constructor(
    readonly config: ModelConfig,
    read: (name: string) => Float32Array,
    names: DenseTensorNames,
    private readonly experts: ExpertEngine,
  ) {
    const c = config;
    this.embed = read(names.embed);
    this.hostRouting = names.layers.map((n) => ({ norm: read(n.postNorm), router: read(n.router) }));
    [this.cos, this.sin] = rotaryTables(c.headDim, c.maxPositions, c.ropeTheta);
    this.readDense = () => {
      this.tensors ??= denseTensors(c, read, names);
      return this.tensors;
    };
  }

  private readonly readDense: () => DenseTensors;

  /**
   * Runs `tokens` (T of them) at positions cache.length.. and appends them to the cache.
   * Returns the logits of the last position [V], or of every new position [T, V] with allLogits.
   * `engine` computes this pass's experts instead of the model's own (the canary runner scores a
   * plan on its own engine while serving goes on with the dense weights shared).
   */
  async forward(tokens: number[], cache: KvCache, allLogits = false, engine: ExpertEngine = this.experts): Promise<Float32Array> {
    return (await this.forwardBatch([{ tokens, cache, allLogits }], engine))[0];
  }

  /**
   * One forward step for a batch of sequences, each with its own new tokens and KV cache (a
   * prompt chunk, or one decode token): every sequence's tokens at positions cache.length.., its
   * cache advanced. Returns each sequence's logits, as forward() would. Every sequence is checked
   * before anything runs (checkSequence): a bad one fails the call and writes nothing. The
   * experts a step's tokens route to are fetched once per layer for the whole batch.
   */
  async forwardBatch(seqs: SequenceStep[], engine: ExpertEngine = this.experts): Promise<Float32Array[]> {
    if (seqs.length === 0) throw new RangeError('a forward step needs at least one sequence');
    seqs.forEach((s) => checkSequence(this.config, s));
    if (new Set(seqs.map((s) => s.cache)).size !== seqs.length) throw new RangeError('two sequences of one step share a KV cache');
    const shape = stepShape(seqs);
    if (this.native) return this.forwardNative(this.native, seqs, shape, engine);
    engine.beginForward?.(shape);
    // TensorFlow.js runs the sequences one after another within the step: it is the reference
    // and the path for architectures the native forward does not cover, not the fast one.
    const out: Float32Array[] = [];
    for (const s of seqs) out.push(await this.forwardOne(s.tokens, s.cache, s.allLogits ?? false, engine));
    engine.endForward?.(shape);
    return out;
  }

  private async forwardOne(tokens: number[], cache: KvCache, allLogits: boolean, engine: ExpertEngine): Promise<Float32Array> {
    const c = this.config;
    const dense = this.readDense();
    const T = tokens.length;
    const d = c.hiddenSize;
    const x0 = new Float32Array(T * d);
    tokens.forEach((tok, t) => x0.set(this.embed.subarray(tok * d, tok * d + d), t * d));
    // Layer 0 has no layer before it to overlap: its router on the embeddings predicts it (measured
    // on the embedded model: 277 of its 280 experts in a decode run), while its attention runs.
    if (engine.prefetch) this.prefetchNext(engine, 0, x0, T);
    let x = tf.tensor2d(x0, [T, d]);
    for (let l = 0; l < c.numLayers; l++) {
      const L = dense.layers[l];
      const afterAttn: tf.Tensor2D = tf.tidy(() => tf.add(x, this.attention(l, L, rmsNorm(x, L.inputNorm, c.rmsNormEps), cache, T)));
      x.dispose();
      const h = tf.tidy(() => rmsNorm(afterAttn, L.postNorm, c.rmsNormEps));
      const hint = engine.prefetch && l + 1 < c.numLayers ? (afterAttn.dataSync() as Float32Array) : undefined;
      const moe = await this.moe(engine, l, L, h, T, hint && (() => this.prefetchNext(engine, l + 1, hint, T)));
      x = tf.tidy(() => tf.add(afterAttn, moe) as tf.Tensor2D);
      tf.dispose([afterAttn, h, moe]);
    }
    cache.advance(T);
    const logits = tf.tidy(() => {
      const last = allLogits ? x : x.slice([T - 1, 0], [1, d]);
      return tf.matMul(rmsNorm(last as tf.Tensor2D, dense.norm, c.rmsNormEps), dense.lmHeadT);
    });
    x.dispose();
    const out = (await logits.data()) as Float32Array;
    logits.dispose();
    return out;
  }

  /**
   * From now on every pass runs in the addon, its experts computed by whichever engine it names
   * (the model's own, or the canary runner's); undefined goes back to TensorFlow.js.
   */
  useNativeForward(native: NativeForward | undefined): void {
    this.native = native;
  }

  get nativeForward(): NativeForward | undefined {
    return this.native;
  }

  private async forwardNative(native: NativeForward, seqs: SequenceStep[], shape: StepShape, engine: ExpertEngine): Promise<Float32Array[]> {
    engine.beginForward?.(shape);
    const out = await native.step(seqs, engine, this.onRouting);
    engine.endForward?.(shape);
    return out;
  }

  /** Self-attention of the T new positions over the cache; writes their keys and values to it. */
  private attention(l: number, L: DenseLayer, h: tf.Tensor2D, cache: KvCache, T: number): tf.Tensor2D {
    const c = this.config;
    const { numHeads: H, numKvHeads: KV, headDim: hd } = c;
    const pos0 = cache.length;
    let q = tf.matMul(h, L.wq) as tf.Tensor2D;
    let k = tf.matMul(h, L.wk) as tf.Tensor2D;
    let v = tf.matMul(h, L.wv) as tf.Tensor2D;
    if (L.bq) q = tf.add(q, L.bq);
    if (L.bk) k = tf.add(k, L.bk);
    if (L.bv) v = tf.add(v, L.bv);
    if (c.qkNorm === 'full') {
      q = rmsNorm(q, L.qNorm!, c.rmsNormEps);
      k = rmsNorm(k, L.kNorm!, c.rmsNormEps);
    }
    let q3 = q.reshape([T, H, hd]) as tf.Tensor3D;
    let k3 = k.reshape([T, KV, hd]) as tf.Tensor3D;
    if (c.qkNorm === 'head') {
      q3 = rmsNorm(q3, L.qNorm!, c.rmsNormEps);
      k3 = rmsNorm(k3, L.kNorm!, c.rmsNormEps);
    }
    const cos = tf.tensor3d(this.cos.subarray(pos0 * hd, (pos0 + T) * hd), [T, 1, hd]);
    const sin = tf.tensor3d(this.sin.subarray(pos0 * hd, (pos0 + T) * hd), [T, 1, hd]);
    q3 = rotate(q3, cos, sin, hd);
    k3 = rotate(k3, cos, sin, hd);
    cache.write(l, k3.dataSync() as Float32Array, v.dataSync() as Float32Array, T);
    const S = pos0 + T;
    const keys = tf.tensor3d(cache.keys[l].subarray(0, S * KV * hd), [S, KV, hd]);
    const values = tf.tensor3d(cache.values[l].subarray(0, S * KV * hd), [S, KV, hd]);
    // [H, T, hd] queries against [H, S, hd] keys: each KV head serves G = H / KV query heads.
    const group = (t: tf.Tensor3D) => (H === KV ? t : tf.reshape(tf.tile(tf.expandDims(t, 2), [1, 1, H / KV, 1]), [S, H, hd]));
    const qh = tf.transpose(q3, [1, 0, 2]);
    const kh = tf.transpose(group(keys), [1, 0, 2]);
    const vh = tf.transpose(group(values), [1, 0, 2]);
    const scores = tf.add(tf.mul(tf.matMul(qh, kh, false, true), 1 / Math.sqrt(hd)), causalMask(T, S, pos0));
    const ctx = tf.matMul(tf.softmax(scores), vh); // [H, T, hd]
    return tf.matMul(tf.transpose(ctx, [1, 0, 2]).reshape([T, H * hd]) as tf.Tensor2D, L.wo) as tf.Tensor2D;
  }

  /**
   * Tells the engine which experts layer `next` will likely route to: its router applied to the
   * current hidden state (normalised as `next` will normalise it), so their transfer and
   * decompression can overlap this layer's compute.
   */
  private prefetchNext(engine: ExpertEngine, next: number, hidden: Float32Array, T: number): void {
    // In plain JS on the host copy: as tfjs ops on wasm (norm, product, top-k, a read back) the
    // predictions cost more than the d × E products themselves; moving them here took a decode
    // step of the embedded model from 36–43 ms to 27–29 ms.
    engine.prefetch!(next, predictRouting(this.hostRouting[next], hidden, T, this.config.hiddenSize, this.config.topK, this.config.rmsNormEps));
  }

  /** Routes T hidden states [T, d] to their top-k experts and returns the combined output. */
  /** `hintNext` issues the next layer's prefetch: after this layer asked for its experts, before they compute. */
  private async moe(engine: ExpertEngine, l: number, L: DenseLayer, h: tf.Tensor2D, T: number, hintNext?: () => void): Promise<tf.Tensor2D> {
    const c = this.config;
    const probs = tf.tidy(() => tf.softmax(tf.matMul(h, L.router)));
    const { values, indices } = tf.topk(probs, c.topK);
    const w = (await values.data()) as Float32Array;
    const ids = (await indices.data()) as Int32Array;
    tf.dispose([probs, values, indices]);
    if (c.normTopkProb) {
      for (let t = 0; t < T; t++) {
        let sum = 0;
        for (let j = 0; j < c.topK; j++) sum += w[t * c.topK + j];
        for (let j = 0; j < c.topK; j++) w[t * c.topK + j] /= sum;
      }
    }
    this.onRouting?.({ layer: l, ids, weights: w });
    const computing = engine.compute(l, (await h.data()) as Float32Array, ids, w, T);
    hintNext?.();
    const routed = await computing;
    return tf.tidy(() => {
      const out = tf.tensor2d(routed, [T, c.hiddenSize]);
      if (!L.shared) return out;
      const gate = tf.sigmoid(tf.matMul(h, L.sharedGate!));
      return tf.add(out, tf.mul(gate, swiglu(h, L.shared))) as tf.Tensor2D;
    });
  }

  /** Frees the dense tensors, where a TensorFlow.js pass built them (the engine is the caller's). */
  dispose(): void {
    const t = this.tensors;
    if (!t) return;
    const all: tf.Tensor[] = [t.norm, t.lmHeadT];
    for (const L of t.layers) {
      all.push(L.inputNorm, L.postNorm, L.wq, L.wk, L.wv, L.wo, L.router);
      for (const x of [L.bq, L.bk, L.bv, L.qNorm, L.kNorm, L.sharedGate]) if (x) all.push(x);
      if (L.shared) all.push(L.shared.gateT, L.shared.upT, L.shared.downT);
    }
    tf.dispose(all);
    this.tensors = undefined;
  }
}

/**
 * The top-k experts of `router` [E, d] for each of T hidden states [T, d] after an RMS norm with
 * weights `norm` (what the layer's own routing computes, in float64; ties go to the lower expert).
 */
export function predictRouting(w: { norm: Float32Array; router: Float32Array }, hidden: Float32Array, T: number, d: number, k: number, eps: number): Int32Array {
  const E = w.router.length / d;
  const ids = new Int32Array(T * k);
  const x = new Float64Array(d);
  const logits = new Float64Array(E);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += hidden[t * d + i] * hidden[t * d + i];
    const inv = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) x[i] = hidden[t * d + i] * inv * w.norm[i];
    for (let e = 0; e < E; e++) {
      let z = 0;
      for (let i = 0; i < d; i++) z += x[i] * w.router[e * d + i];
      logits[e] = z;
    }
    for (let j = 0; j < k; j++) {
      let best = -1;
      for (let e = 0; e < E; e++) {
        let taken = false;
        for (let q = 0; q < j; q++) if (ids[t * k + q] === e) taken = true;
        if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
      }
      ids[t * k + j] = best;
    }
  }
  return ids;
}

/** x · rsqrt(mean(x², last axis) + ε) · w. */
function rmsNorm<T extends tf.Tensor>(x: T, w: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps))), w)) as T;
}

/** Hugging Face's rotary embedding: x · cos + rotate_half(x) · sin, on [T, n, hd]. */
function rotate(x: tf.Tensor3D, cos: tf.Tensor3D, sin: tf.Tensor3D, hd: number): tf.Tensor3D {
  const half = hd / 2;
  const [T, n] = x.shape;
  const x1 = tf.slice(x, [0, 0, 0], [T, n, half]);
  const x2 = tf.slice(x, [0, 0, half], [T, n, half]);
  return tf.add(tf.mul(x, cos), tf.mul(tf.concat([tf.neg(x2), x1], 2), sin)) as tf.Tensor3D;
}

/** cos and sin of position · inv_freq, [positions, hd] with both halves equal. */
export function rotaryTables(hd: number, positions: number, theta: number): [Float32Array, Float32Array] {
  const cos = new Float32Array(positions * hd);
  const sin = new Float32Array(positions * hd);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < hd / 2; i++) {
      const angle = p * theta ** ((-2 * i) / hd);
      cos[p * hd + i] = cos[p * hd + i + hd / 2] = Math.cos(angle);
      sin[p * hd + i] = sin[p * hd + i + hd / 2] = Math.sin(angle);
    }
  }
  return [cos, sin];
}

/** [T, S] additive mask: new position t (absolute pos0 + t) sees keys 0..pos0 + t. */
function causalMask(T: number, S: number, pos0: number): tf.Tensor2D {
  const m = new Float32Array(T * S);
  for (let t = 0; t < T; t++) for (let s = pos0 + t + 1; s < S; s++) m[t * S + s] = -1e30;
  return tf.tensor2d(m, [T, S]);
}
