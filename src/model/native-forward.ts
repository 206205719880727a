/**
 * The forward step in the addon (src/native/decoder_cpu.h), layer by layer, for a batch of
 * sequences and any ExpertEngine. Per layer: one addon call runs attention (each sequence over its
 * own KV cache), the post-attention norm and the router for every token of the step, and writes
 * the next layer's predicted routing; the engine is then told what to prefetch for the next layer
 * and computes this layer's routed experts — the union over the whole batch, each expert fetched
 * once — and its output goes into the next call. So the offload engine (device cache, link,
 * decode stream, controller), the CPU engine's resident experts and the tfjs engine all run
 * behind this one forward; the tfjs model stays the reference it is tested against and the path
 * for the architectures it does not cover.
 *
 * What the round trips cost is measured, not guessed: `stats` splits every step's wall time into
 * the addon's own time, the engine's, and the rest (JavaScript between the calls).
 */
import { compress } from '../codec/index.js';
import { native, type RawSymbolMatrix } from '../codec/native.js';
import { bf16IfExact, fusedMatrix, isSymbolMatrix, symbolMatrix } from '../offload/cpu-engine.js';
import type { ExpertEngine } from '../offload/expert-engine.js';
import type { DenseTensorNames, Routing, SequenceStep } from './transformer.js';
import type { ModelConfig } from './types.js';

export interface NativeForwardStats {
  steps: number;
  tokens: number;
  /** Seconds in the addon's calls (dense layers, attention, routers, LM head). */
  nativeSeconds: number;
  /** Seconds from handing a layer to the engine to its output (fetch waits included). */
  expertSeconds: number;
  /** Seconds of the steps' wall time outside both: the JavaScript between the calls. */
  otherSeconds: number;
}

/** Why the native forward cannot run this model, or null when it can. */
export function nativeForwardUnsupported(c: ModelConfig): string | null {
  if (c.sharedExpertFfnSize > 0) return 'shared experts are computed by the TensorFlow.js model only';
  return null;
}

type NativeDecoder = { readonly __decoder: unique symbol };

/**
 * The attention projections held as 8-bit (or 4-bit) symbols, each tensor at its own bound
 * (denseBound), instead of bf16 or f32: half a bf16 tensor's bytes, and with int8Activations the
 * integer product. The routers stay as stored (small, and a routing change moves a token), and so
 * does the LM head: measured on the embedded model's 6,360 canary positions, symbols at its bound
 * kept 98.79 % of the greedy tokens, against 99.87 % for all the attention projections together
 * (an absolute bound is coarse for its many small weights, which bf16 holds to 0.4 % of each).
 */
export interface DenseSymbols {
  int8Activations?: boolean;
  /**
   * The LM head as symbols too (half its bf16 bytes: on OLMoE's shape 103 of 206 MB a token).
   * Off by default for the reason above; a tied head is the embedding's array and stays as stored.
   */
  lmHead?: boolean;
  /**
   * Bits a symbol of the attention projections (default 8): 4 holds a quarter of bf16's bytes at a
   * bound 18× coarser (on N(0, σ) weights eb ≈ σ/4.8, the 4-bit experts' own grid), for models
   * whose agreement allows it. The LM head stays at 8 (llama.cpp keeps its Q4_0 files' output
   * tensor at 6). Measured on OLMoE's shape with 4-bit experts: 4-bit attention kept 17.32 % of the
   * reference's greedy tokens against 58.93 % at 8, and a 4-bit head 54.37 % for no speed measured.
   */
  bits?: 4 | 8;
}

/**
 * A dense tensor's bound for `bits`-bit symbols: its values' |w| at the 1 − 1/256 quantile (of a
 * strided sample) over the largest |n| a symbol holds at a stream's finest rung (x̂ = n·eb; 254 at
 * 8 bits, 14 at 4), so about 1/256 of the values are patches. On N(0, σ) weights eb ≈ σ/88 at 8
 * bits (each weight within 1.1 % of σ), σ/4.8 at 4. Where that quantile is 0 (nearly all zeros),
 * the largest finite |w| over that |n|; 1 for a tensor of zeros (any bound holds them exactly).
 */
export function denseBound(m: Float32Array, bits: 4 | 8 = 8): number {
  const top = bits === 8 ? 254 : 14;
  const step = Math.max(1, Math.floor(m.length / 65536));
  const sample = Float32Array.from({ length: Math.floor(m.length / step) }, (_, i) => Math.abs(m[i * step])).sort();
  const q = sample[Math.min(sample.length - 1, Math.floor(sample.length * (1 - 1 / 256)))];
  if (q > 0 && Number.isFinite(q)) return q / top;
  let max = 0;
  for (const v of m) if (Number.isFinite(v)) max = Math.max(max, Math.abs(v));
  return max > 0 ? max / top : 1;
}

/** What a dense tensor is for: the logs and inspect-model give the bytes of each. */
export type DenseRole = 'attention' | 'router' | 'norm' | 'embeddings' | 'lm_head';

/** Each dense tensor's role, by the model's tensor names (a tied LM head is the embedding: embeddings). */
export function denseRoles(names: DenseTensorNames): Map<string, DenseRole> {
  const roles = new Map<string, DenseRole>([[names.embed, 'embeddings'], [names.norm, 'norm']]);
  if (!roles.has(names.lmHead)) roles.set(names.lmHead, 'lm_head');
  for (const n of names.layers) {
    for (const a of [n.q, n.k, n.v, n.o, n.qBias, n.kBias, n.vBias, n.qNorm, n.kNorm]) if (a) roles.set(a, 'attention');
    roles.set(n.inputNorm, 'norm').set(n.postNorm, 'norm').set(n.router, 'router');
  }
  return roles;
}

/** One dense tensor as the native forward holds it (the plan report and the logs show them). */
export interface DenseTensor {
  name: string;
  role: DenseRole;
  /** symbols: `bits`-bit symbols within `bound` (abs), with `patches` values kept aside exactly; bf16 / f32: as stored. */
  form: 'symbols' | 'bf16' | 'f32';
  bytes: number;
  bits?: 4 | 8;
  bound?: number;
  patches?: number;
}

/** Bytes by role, in words: "attention 268.4 MB (symbols), LM head 206.0 MB (bf16), …". */
export function describeDenseBytes(tensors: readonly DenseTensor[]): string {
  const words: Record<DenseRole, string> = { attention: 'attention', router: 'routers', norm: 'norms', embeddings: 'embeddings', lm_head: 'LM head' };
  return (Object.keys(words) as DenseRole[])
    .map((role) => {
      const of = tensors.filter((t) => t.role === role);
      if (of.length === 0) return '';
      const forms = [...new Set(of.map((t) => t.form))].join(' + ');
      return `${words[role]} ${(of.reduce((n, t) => n + t.bytes, 0) / 1e6).toFixed(1)} MB (${forms})`;
    })
    .filter(Boolean)
    .join(', ');
}

export class NativeForward {
  readonly stats: NativeForwardStats = { steps: 0, tokens: 0, nativeSeconds: 0, expertSeconds: 0, otherSeconds: 0 };
  /** Every dense tensor it holds, once each (a tied LM head is the embedding). */
  readonly tensors: DenseTensor[];
  /** Bytes of the dense weights this forward holds (as held: bf16 bits where exact), rotary tables included. */
  readonly heldBytes: number;
  /** How the dense weights are held, for logs. */
  readonly denseForm: string;
  private readonly handle: NativeDecoder;

  /** Throws when nativeForwardUnsupported(c) says why. */
  constructor(
    private readonly c: ModelConfig,
    read: (name: string) => Float32Array,
    names: DenseTensorNames,
    rotary: [Float32Array, Float32Array],
    private readonly threads = 0,
    dense?: DenseSymbols,
  ) {
    const why = nativeForwardUnsupported(c);
    if (why) throw new Error(`the native forward cannot run this model: ${why}`);
    // Each tensor read once and held once (a tied LM head is the embedding's array, not a second
    // copy); a matrix whose values are all bf16 is held as its bf16 bits.
    const held = new Map<string, Float32Array | Uint16Array | RawSymbolMatrix>();
    const bounds = new Map<string, number>();
    const once = (name: string, toHeld: (m: Float32Array) => Float32Array | Uint16Array | RawSymbolMatrix) => {
      let m = held.get(name);
      if (!m) held.set(name, (m = toHeld(read(name))));
      return m;
    };
    const f32 = (name: string) => once(name, (m) => m) as Float32Array;
    const matrix = (name: string, cols: number) => once(name, (m) => bf16IfExact(m, cols));
    const attentionBits = dense?.bits ?? 8;
    // With `dense`: symbols where the tensor's rows are whole 32-value blocks and its values fit.
    const projection = (name: string, cols: number, bits: 4 | 8) =>
      once(name, (m) => {
        if (!dense || cols % 32) return bf16IfExact(m, cols);
        const bound = denseBound(m, bits);
        const s = symbolMatrix(fusedMatrix(compress(m, { bound, threads: 0 }), m.length / cols, cols), [bits], dense.int8Activations);
        if (s) bounds.set(name, bound);
        return s ?? bf16IfExact(m, cols);
      });
    const spec = Object.freeze({
      d: c.hiddenSize, heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim,
      vocab: c.vocabSize, experts: c.numExperts, topK: c.topK, maxPositions: c.maxPositions, eps: c.rmsNormEps,
      normTopk: c.normTopkProb, qkNorm: c.qkNorm, embed: matrix(names.embed, c.hiddenSize), norm: f32(names.norm),
      lmHead: dense?.lmHead ? projection(names.lmHead, c.hiddenSize, 8) : matrix(names.lmHead, c.hiddenSize),
      cos: rotary[0], sin: rotary[1],
      layers: names.layers.map((n) => ({
        inputNorm: f32(n.inputNorm), postNorm: f32(n.postNorm),
        q: projection(n.q, c.hiddenSize, attentionBits), k: projection(n.k, c.hiddenSize, attentionBits), v: projection(n.v, c.hiddenSize, attentionBits),
        o: projection(n.o, c.numHeads * c.headDim, attentionBits),
        qBias: n.qBias ? f32(n.qBias) : undefined, kBias: n.kBias ? f32(n.kBias) : undefined, vBias: n.vBias ? f32(n.vBias) : undefined,
        qNorm: n.qNorm ? f32(n.qNorm) : undefined, kNorm: n.kNorm ? f32(n.kNorm) : undefined,
        router: matrix(n.router, c.hiddenSize),
      })),
    });
    const roles = denseRoles(names);
    this.tensors = [...held].map(([name, m]) => {
      const role = roles.get(name) ?? 'attention';
      return isSymbolMatrix(m)
        ? { name, role, form: 'symbols', bytes: m.bytes, bits: m.bits, bound: bounds.get(name), patches: m.patches }
        : { name, role, form: m instanceof Uint16Array ? 'bf16' : 'f32', bytes: m.byteLength };
    });
    this.heldBytes = this.tensors.reduce((n, t) => n + t.bytes, rotary[0].byteLength + rotary[1].byteLength);
    const lmHeadSymbols = isSymbolMatrix(spec.lmHead);
    this.denseForm = !dense
      ? 'as stored (bf16 bits where exact, else f32)'
      : `${lmHeadSymbols ? (attentionBits === 8 ? 'attention projections and LM head as 8-bit symbols' : 'attention projections as 4-bit symbols and LM head as 8-bit symbols') : `attention projections as ${attentionBits}-bit symbols`} at per-tensor bounds${dense.int8Activations ? ', activations in 8 bits' : ''}; routers, embeddings${lmHeadSymbols ? '' : ' and LM head'} as stored`;
    this.handle = native.decoderNew(spec) as NativeDecoder;
  }

  /**
   * One step for `seqs` (checked by the caller: MoeTransformer.forwardBatch), experts computed by
   * `engine`; writes and advances each sequence's cache. Returns each sequence's logits ([V], or
   * [T, V] with allLogits). `onRouting` sees every layer's routing of the whole step.
   */
  async step(seqs: SequenceStep[], engine: ExpertEngine, onRouting?: (r: Routing) => void): Promise<Float32Array[]> {
    const start = performance.now();
    const c = this.c;
    const T = seqs.reduce((n, s) => n + s.tokens.length, 0);
    const K = c.topK;
    const out = { hidden: new Float32Array(T * c.hiddenSize), ids: new Int32Array(T * K), weights: new Float32Array(T * K), predicted: new Int32Array(T * K) };
    const segments = seqs.map((s) => ({ count: s.tokens.length, pos0: s.cache.length, allLogits: s.allLogits ?? false, keys: s.cache.keys, values: s.cache.values }));
    const step = native.decoderBegin(this.handle, Int32Array.from(seqs.flatMap((s) => s.tokens)), segments, out, this.threads);
    const resident = engine.resident?.();
    let r: { logits: Float32Array; seconds: number };
    let expert = 0;
    if (resident) {
      // Every expert resident: the whole step in one native call (the round trips to JavaScript
      // between layers had cost OLMoE's shape ~8 ms a token), its routing reported afterwards.
      const L = c.numLayers;
      const n = T * K;
      const routing = { ids: new Int32Array(L * n), weights: new Float32Array(L * n) };
      const run = await native.decoderRun(step, resident.handle, routing);
      resident.computed(routing.ids, L, run.expertSeconds);
      if (onRouting) for (let l = 0; l < L; l++) onRouting({ layer: l, ids: routing.ids.slice(l * n, (l + 1) * n), weights: routing.weights.slice(l * n, (l + 1) * n) });
      r = run;
      expert = run.expertSeconds * 1000;
    } else {
      engine.prefetch?.(0, out.predicted);
      let moe: Float32Array | null = null;
      for (let l = 0; l < c.numLayers; l++) {
        await native.decoderLayer(step, l, moe);
        if (onRouting) onRouting({ layer: l, ids: out.ids.slice(), weights: out.weights.slice() });
        const e0 = performance.now();
        // compute() asks for this layer's experts before it first waits, so the fetches of the ones
        // the prediction missed go on the link ahead of the next layer's prefetches, which are
        // issued here, before this layer's experts compute, so that they overlap them.
        const computed = engine.compute(l, out.hidden, out.ids, out.weights, T);
        if (l + 1 < c.numLayers) engine.prefetch?.(l + 1, out.predicted);
        moe = await computed;
        expert += performance.now() - e0;
      }
      r = await native.decoderLogits(step, moe!);
    }
    for (const s of seqs) s.cache.advance(s.tokens.length);
    const total = (performance.now() - start) / 1000;
    this.stats.steps++;
    this.stats.tokens += T;
    this.stats.nativeSeconds += r.seconds;
    this.stats.expertSeconds += expert / 1000;
    this.stats.otherSeconds += Math.max(0, total - r.seconds - expert / 1000);
    // Each sequence's rows of the logits, in order.
    const V = c.vocabSize;
    const logits: Float32Array[] = [];
    let row = 0;
    for (const s of seqs) {
      const rows = s.allLogits ? s.tokens.length : 1;
      logits.push(r.logits.subarray(row * V, (row + rows) * V));
      row += rows;
    }
    return logits;
  }
}
