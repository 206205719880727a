/**
 * The whole forward pass in the addon (src/native/decoder_cpu.h), for models whose layers it
 * covers: RMSNorm, grouped-query attention with rotary positions (q/k/v biases allowed), a top-k
 * router and routed SwiGLU experts computed by the CPU engine (dense or fused). One call per step
 * on a worker thread instead of ~100 TensorFlow.js ops per layer; the tfjs model stays the
 * reference it is tested against and the path for every other architecture.
 */
import { native } from '../codec/native.js';
import type { CpuExpertEngine } from '../offload/cpu-engine.js';
import type { KvCache } from './kv-cache.js';
import type { DenseTensorNames, Routing } from './transformer.js';
import type { ModelConfig } from './types.js';

export interface NativeStep {
  logits: Float32Array;
  routing: Routing[];
  /** Seconds in the routed experts and in everything else, measured in the addon. */
  expertSeconds: number;
  otherSeconds: number;
}

export interface NativeForwardStats {
  steps: number;
  tokens: number;
  expertSeconds: number;
  otherSeconds: number;
}

/** Why the native forward cannot run this model, or null when it can. */
export function nativeForwardUnsupported(c: ModelConfig): string | null {
  if (c.qkNorm !== 'none') return `query/key norms (${c.qkNorm}) are computed by the TensorFlow.js model only`;
  if (c.sharedExpertFfnSize > 0) return 'shared experts are computed by the TensorFlow.js model only';
  return null;
}

type NativeDecoder = { readonly __decoder: unique symbol };

export class NativeForward {
  readonly stats: NativeForwardStats = { steps: 0, tokens: 0, expertSeconds: 0, otherSeconds: 0 };
  private readonly handle: NativeDecoder;

  /** Throws when nativeForwardUnsupported(c) says why. */
  constructor(
    private readonly c: ModelConfig,
    read: (name: string) => Float32Array,
    names: DenseTensorNames,
    experts: CpuExpertEngine,
    rotary: [Float32Array, Float32Array],
    private readonly threads = 0,
  ) {
    const why = nativeForwardUnsupported(c);
    if (why) throw new Error(`the native forward cannot run this model: ${why}`);
    const spec = Object.freeze({
      d: c.hiddenSize, heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim, ff: c.expertFfnSize,
      vocab: c.vocabSize, experts: c.numExperts, topK: c.topK, maxPositions: c.maxPositions, eps: c.rmsNormEps,
      normTopk: c.normTopkProb, embed: read(names.embed), norm: read(names.norm), lmHead: read(names.lmHead),
      cos: rotary[0], sin: rotary[1],
      layers: names.layers.map((n, l) => ({
        inputNorm: read(n.inputNorm), postNorm: read(n.postNorm), q: read(n.q), k: read(n.k), v: read(n.v), o: read(n.o),
        qBias: n.qBias ? read(n.qBias) : undefined, kBias: n.kBias ? read(n.kBias) : undefined, vBias: n.vBias ? read(n.vBias) : undefined,
        router: read(n.router),
        experts: experts.layer(l).map((x) => [x.gate, x.up, x.down]),
      })),
    });
    this.handle = native.decoderNew(spec) as NativeDecoder;
  }

  /** Runs `tokens` at positions cache.length.. (writing the cache) without advancing it. */
  async step(tokens: number[], cache: KvCache, allLogits: boolean): Promise<NativeStep> {
    const T = tokens.length;
    const r = await native.decoderForwardAsync(this.handle, Int32Array.from(tokens), cache.length, allLogits, cache.keys, cache.values, this.threads);
    const K = this.c.topK;
    const routing = Array.from({ length: this.c.numLayers }, (_, l) => ({
      layer: l,
      ids: r.ids.subarray(l * T * K, (l + 1) * T * K),
      weights: r.weights.subarray(l * T * K, (l + 1) * T * K),
    }));
    this.stats.steps++;
    this.stats.tokens += T;
    this.stats.expertSeconds += r.expertSeconds;
    this.stats.otherSeconds += r.otherSeconds;
    return { logits: r.logits, routing, expertSeconds: r.expertSeconds, otherSeconds: r.otherSeconds };
  }
}
