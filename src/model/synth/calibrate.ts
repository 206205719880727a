/**
 * Router calibration: makes a random-weight MoE route like a trained one.
 *
 * Why. With random N(0, σ) weights the hidden states at a router share one direction (most of
 * their energy from the second layer on), so a random router's logits carry a per-expert offset
 * that is the same for every token: the same few experts win everywhere (measured in issue 23:
 * load entropy 3.4–3.9 bits of 6, 0.8–0.95 of a token's experts reused from the previous token).
 * A trained MoE balances its load (auxiliary losses) and reuses experts only moderately.
 *
 * How, per layer, on that layer's own router input (H [T, d], the post-attention norm of T
 * calibration tokens, after the layers before it were calibrated):
 *   1. remove the common direction u = mean(H)/|mean(H)| from every router row: R1 = R0 (I − u uᵀ);
 *      every expert's logit then has mean 0 over the tokens;
 *   2. whiten the logits Z = H R1ᵀ [T, E]: W = (ZᵀZ/T)^(−1/2), so no expert's logit is larger or
 *      correlated with another's — the experts become exchangeable and the load even;
 *   3. locality (optional): in the whitened space, the directions' lag-1 autocorrelations ρ_i
 *      (eigen-decomposition of the symmetrised lag-1 covariance) tell slow directions (context)
 *      from fast ones (the token itself); scaling direction i by exp(γ ρ_i) trades reuse of the
 *      previous token's experts against balance. γ = 0 unless --locality asks for a reuse share,
 *      then γ is searched so the reuse is as close to the target as the entropy floor allows;
 *   4. equalise each expert's logit std and scale it to a trained model's spread τ (only the
 *      softmax weights depend on τ, never which experts win);
 * so the new router is R = Aᵀ R1 with A = W · M(γ) · D · τ, rounded to bf16 as written, and the
 * statistics are measured on the logits of that bf16 router — exactly what the checkpoint computes.
 *
 * τ is measured, not guessed: the per-token standard deviation of router logits across experts in
 * the project's trained model (models/ebserve-moe-8x) on the canary text, RMS over its layers —
 * see TRAINED_LOGIT_SPREAD and the test that re-measures it.
 */
import fs from 'node:fs';
import path from 'node:path';

import { nativeExpertLayer, type NativeExpert } from '../../offload/cpu-engine.js';
import type { ExpertEngine } from '../../offload/expert-engine.js';
import type { Checkpoint } from '../checkpoint.js';
import { EMBEDDED_MODEL_DIR } from '../embedded.js';
import { KvCache } from '../kv-cache.js';
import { loadModel } from '../load.js';
import { expertName, routerName } from '../names.js';
import { matMul, symmetricEigen, symmetricFunction } from './linalg.js';
import { floatToBf16, bf16ToFloat } from './random.js';

/**
 * The per-token std of router logits across experts in the trained embedded model, on the canary
 * text (RMS over its 8 layers, 8 windows of 256 bytes): measureLogitSpread() gives 1.386 (per layer
 * 0.44–2.07; 30 windows give the same to 3 digits); the test `cli.synth.test.ts` re-measures it and
 * fails when this constant is more than 5 % off.
 */
export const TRAINED_LOGIT_SPREAD = 1.39;

/** The calibration text: every text canary of the embedded model (prompt + continuation), one a line. */
export const CALIBRATION_TEXT_FILE = path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl');

/** Reads the calibration text (held-out Moby-Dick, State of the Union and King James Bible lines). */
export function calibrationText(file = CALIBRATION_TEXT_FILE): string {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => {
      const item = JSON.parse(line) as { prompt: string; continuation: string };
      return item.prompt + item.continuation;
    })
    .join('\n');
}

/** Expert-load balance and locality of one layer's routing over T tokens. */
export interface RoutingStats {
  /** Entropy (bits) of the share of the T·k assignments each expert gets; log2(E) is perfect balance. */
  loadEntropyBits: number;
  /** Mean over tokens 1..T−1 of the share of a token's k experts that the previous token also used. */
  reusePrev: number;
}

/** Load entropy and reuse of `ids` ([T, k], expert ids). */
export function routingStats(ids: Int32Array, T: number, k: number, E: number): RoutingStats {
  const counts = new Float64Array(E);
  for (const e of ids) counts[e]++;
  let entropy = 0;
  for (const n of counts) if (n > 0) entropy -= (n / ids.length) * Math.log2(n / ids.length);
  let reused = 0;
  for (let t = 1; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const e = ids[t * k + j];
      for (let q = 0; q < k; q++) if (ids[(t - 1) * k + q] === e) reused++;
    }
  }
  return { loadEntropyBits: entropy, reusePrev: T > 1 ? reused / ((T - 1) * k) : 0 };
}

/** Top-k ids of logits [T, E] (ties to the lower id) and their softmax weights (renormalised when normTopk). */
export function topKRouting(logits: Float64Array, T: number, E: number, k: number, normTopk: boolean): { ids: Int32Array; weights: Float32Array } {
  const ids = new Int32Array(T * k);
  const weights = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const row = t * E;
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, logits[row + e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(logits[row + e] - max);
    let kept = 0;
    for (let j = 0; j < k; j++) {
      let best = -1;
      for (let e = 0; e < E; e++) {
        if (best >= 0 && logits[row + e] <= logits[row + best]) continue;
        let taken = false;
        for (let q = 0; q < j; q++) if (ids[t * k + q] === e) taken = true;
        if (!taken) best = e;
      }
      ids[t * k + j] = best;
      const p = Math.exp(logits[row + best] - max) / sum;
      weights[t * k + j] = p;
      kept += p;
    }
    if (normTopk) for (let j = 0; j < k; j++) weights[t * k + j] /= kept;
  }
  return { ids, weights };
}

/** H [T, d] · Rᵀ ([E, d]) → logits [T, E], accumulated in float64. */
export function routerLogits(h: Float32Array, T: number, d: number, router: Float32Array | Float64Array, E: number): Float64Array {
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const x = h.subarray(t * d, t * d + d);
    for (let e = 0; e < E; e++) {
      let z = 0;
      const r = e * d;
      for (let i = 0; i < d; i++) z += x[i] * router[r + i];
      out[t * E + e] = z;
    }
  }
  return out;
}

export interface CalibrationOptions {
  /** τ: the per-expert logit std the router is scaled to. */
  spread: number;
  /** Target share of a token's experts reused from the previous token; undefined keeps γ = 0. */
  locality?: number;
  /** The load entropy (bits) the locality search must not go below. */
  entropyFloorBits: number;
}

/** What calibration did to one layer, and what it measured. */
export interface LayerCalibration {
  layer: number;
  /** The new router [E, d] as bf16 bits (as written) and as the values they hold. */
  bits: Uint16Array;
  values: Float32Array;
  /** The routing the new router gives the calibration tokens ([T, k]). */
  ids: Int32Array;
  weights: Float32Array;
  stats: RoutingStats;
  /** The random router's routing of the same hidden states, for the record. */
  before: RoutingStats;
  params: {
    /** Share of the hidden states' energy along their mean direction (what step 1 removes). */
    commonDirectionEnergyShare: number;
    /** γ of step 3 (0: no locality shaping). */
    localityGamma: number;
    /** The per-expert logit std after calibration (τ). */
    logitSpread: number;
    /** Largest / smallest eigenvalue of the logit covariance before whitening (of those kept). */
    whiteningCondition: number;
  };
}

/**
 * Calibrates one layer's router (see the file comment). h: the router's input [T, d] (post-norm
 * hidden states); r0: the random router [E, d]; returns the bf16 router and the routing it gives.
 */
export function calibrateRouter(layer: number, h: Float32Array, T: number, d: number, r0: Float32Array, E: number, k: number, normTopk: boolean, opts: CalibrationOptions): LayerCalibration {
  // 1. The common direction and the router without it.
  const mean = new Float64Array(d);
  for (let t = 0; t < T; t++) for (let i = 0; i < d; i++) mean[i] += h[t * d + i] / T;
  const norm = Math.hypot(...mean) || 1;
  const u = mean.map((x) => x / norm);
  let along = 0;
  let energy = 0;
  for (let t = 0; t < T; t++) {
    let p = 0;
    for (let i = 0; i < d; i++) {
      p += h[t * d + i] * u[i];
      energy += h[t * d + i] ** 2;
    }
    along += p * p;
  }
  const r1 = new Float64Array(E * d);
  for (let e = 0; e < E; e++) {
    let p = 0;
    for (let i = 0; i < d; i++) p += r0[e * d + i] * u[i];
    for (let i = 0; i < d; i++) r1[e * d + i] = r0[e * d + i] - p * u[i];
  }
  const before = routingStats(topKRouting(routerLogits(h, T, d, r0, E), T, E, k, normTopk).ids, T, k, E);

  // 2. Whitening of the centred logits.
  const z = routerLogits(h, T, d, r1, E);
  centreColumns(z, T, E);
  const cov = covariance(z, T, E, 0);
  const covEig = symmetricEigen(cov, E);
  // A pseudo-inverse square root: directions without variance (E > d − 1 leaves some) stay zero
  // rather than having rounding noise blown up into logits.
  const top = Math.max(...covEig.values);
  const floor = top * 1e-8;
  const kept = [...covEig.values].filter((l) => l > floor);
  const w = symmetricFunction(covEig, E, (l) => (l > floor ? 1 / Math.sqrt(l) : 0));
  const zw = matMul(z, w, T, E, E);

  // 3. Slow and fast directions of the whitened logits.
  const lag = covariance(zw, T, E, 1);
  const lagEig = symmetricEigen(lag, E);
  const shaped = (gamma: number) => {
    const m = symmetricFunction(lagEig, E, (rho) => Math.exp(gamma * rho));
    const a = matMul(w, m, E, E, E);
    const za = matMul(z, a, T, E, E);
    // 4. Equal per-expert std τ.
    const std = columnStd(za, T, E);
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) a[i * E + j] *= opts.spread / std[j];
    for (let t = 0; t < T; t++) for (let j = 0; j < E; j++) za[t * E + j] *= opts.spread / std[j];
    return { a, stats: routingStats(topKRouting(za, T, E, k, normTopk).ids, T, k, E) };
  };
  const gamma = opts.locality === undefined ? 0 : searchGamma(shaped, opts.locality, opts.entropyFloorBits);
  const { a } = shaped(gamma);

  // R = Aᵀ R1, rounded to bf16 as the checkpoint will hold it.
  const bits = new Uint16Array(E * d);
  const values = new Float32Array(E * d);
  for (let e = 0; e < E; e++) {
    for (let i = 0; i < d; i++) {
      let s = 0;
      for (let j = 0; j < E; j++) s += a[j * E + e] * r1[j * d + i];
      const b = floatToBf16(s);
      bits[e * d + i] = b;
      values[e * d + i] = bf16ToFloat(b);
    }
  }
  const logits = routerLogits(h, T, d, values, E);
  const { ids, weights } = topKRouting(logits, T, E, k, normTopk);
  return {
    layer,
    bits,
    values,
    ids,
    weights,
    stats: routingStats(ids, T, k, E),
    before,
    params: {
      commonDirectionEnergyShare: energy > 0 ? along / energy : 0,
      localityGamma: gamma,
      logitSpread: opts.spread,
      whiteningCondition: top / Math.min(...kept),
    },
  };
}

/**
 * The γ whose reuse share is closest to `target` among those keeping the load entropy ≥ floor:
 * a coarse scan of γ in [−12, 12], then bisection between the scan points around the target.
 */
function searchGamma(shaped: (gamma: number) => { stats: RoutingStats }, target: number, floor: number): number {
  const tried: { gamma: number; stats: RoutingStats }[] = [];
  const trial = (gamma: number) => {
    const r = { gamma, stats: shaped(gamma).stats };
    tried.push(r);
    return r;
  };
  const scan = Array.from({ length: 13 }, (_, i) => trial(-12 + 2 * i));
  for (let i = 0; i + 1 < scan.length; i++) {
    let [lo, hi] = [scan[i], scan[i + 1]];
    if ((lo.stats.reusePrev - target) * (hi.stats.reusePrev - target) > 0) continue;
    for (let step = 0; step < 10; step++) {
      const mid = trial((lo.gamma + hi.gamma) / 2);
      if ((lo.stats.reusePrev - target) * (mid.stats.reusePrev - target) <= 0) hi = mid;
      else lo = mid;
    }
  }
  const feasible = tried.filter((r) => r.stats.loadEntropyBits >= floor);
  const pool = feasible.length ? feasible : tried.filter((r) => r.gamma === 0);
  pool.sort((x, y) => Math.abs(x.stats.reusePrev - target) - Math.abs(y.stats.reusePrev - target) || Math.abs(x.gamma) - Math.abs(y.gamma));
  return pool[0]?.gamma ?? 0;
}

function centreColumns(z: Float64Array, T: number, E: number): void {
  for (let j = 0; j < E; j++) {
    let m = 0;
    for (let t = 0; t < T; t++) m += z[t * E + j];
    m /= T;
    for (let t = 0; t < T; t++) z[t * E + j] -= m;
  }
}

/** Σ_t x_t x_{t−lag}ᵀ / (T − lag), symmetrised; x is [T, E]. */
function covariance(x: Float64Array, T: number, E: number, lag: number): Float64Array {
  const c = new Float64Array(E * E);
  for (let t = lag; t < T; t++) {
    for (let i = 0; i < E; i++) {
      const xi = x[t * E + i];
      for (let j = 0; j < E; j++) c[i * E + j] += xi * x[(t - lag) * E + j];
    }
  }
  const n = Math.max(1, T - lag);
  const out = new Float64Array(E * E);
  for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) out[i * E + j] = (c[i * E + j] + c[j * E + i]) / (2 * n);
  return out;
}

function columnStd(x: Float64Array, T: number, E: number): Float64Array {
  const std = new Float64Array(E);
  for (let j = 0; j < E; j++) {
    let m = 0;
    for (let t = 0; t < T; t++) m += x[t * E + j];
    m /= T;
    let v = 0;
    for (let t = 0; t < T; t++) v += (x[t * E + j] - m) ** 2;
    std[j] = Math.sqrt(v / T) || 1;
  }
  return std;
}

/** The most bytes of experts read at once while computing a layer in the calibration pass. */
const EXPERT_GROUP_BYTES = 512 * 1024 * 1024;

/**
 * The ExpertEngine of the calibration pass: for each layer, in the model's own forward, it takes
 * the router input, calibrates that layer's router on it (calibrateRouter), and computes the
 * experts the *calibrated* router chooses — ignoring the ids the model's random router picked —
 * so every later layer sees the hidden states the finished checkpoint produces. Experts are read
 * from the checkpoint (bf16, as stored) a group at a time and computed in the addon, so memory
 * holds at most EXPERT_GROUP_BYTES of them.
 */
export class CalibratingEngine implements ExpertEngine {
  /** Each layer's calibration, filled as the forward reaches it. */
  readonly layers: LayerCalibration[] = [];

  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly opts: CalibrationOptions & { threads?: number; onLayer?: (cal: LayerCalibration) => void },
  ) {}

  async compute(layer: number, hidden: Float32Array, _ids: Int32Array, _weights: Float32Array, T: number): Promise<Float32Array> {
    const c = this.checkpoint.config;
    const r0 = this.checkpoint.readTensor(routerName(c, layer));
    const cal = calibrateRouter(layer, hidden, T, c.hiddenSize, r0, c.numExperts, c.topK, c.normTopkProb, this.opts);
    this.layers[layer] = cal;
    this.opts.onLayer?.(cal);
    return this.routedExperts(layer, hidden, cal.ids, cal.weights, T);
  }

  /** out[t] = Σ_j w[t, j] · expert(ids[t, j])(hidden[t]), a group of experts at a time. */
  private async routedExperts(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const c = this.checkpoint.config;
    const d = c.hiddenSize;
    const ff = c.expertFfnSize;
    const k = ids.length / T;
    const out = new Float32Array(T * d);
    const bf16 = d % 32 === 0 && ff % 32 === 0; // the addon's bf16 path wants rows of whole 32-value blocks
    const perExpert = 3 * d * ff * (bf16 ? 2 : 4);
    const groupSize = Math.max(1, Math.floor(EXPERT_GROUP_BYTES / perExpert));
    const used = [...new Set(ids)].sort((a, b) => a - b);
    for (let g = 0; g < used.length; g += groupSize) {
      const group = used.slice(g, g + groupSize);
      const local = new Map(group.map((e, i) => [e, i]));
      const experts: NativeExpert[] = group.map((e) => this.readExpert(layer, e, bf16));
      // Every (token, choice) slot of this group's experts, as a row of its own (k = 1).
      const slots: number[] = [];
      for (let s = 0; s < ids.length; s++) if (local.has(ids[s])) slots.push(s);
      const rows = new Float32Array(slots.length * d);
      const slotIds = new Int32Array(slots.length);
      const slotWeights = new Float32Array(slots.length);
      slots.forEach((s, r) => {
        const t = Math.floor(s / k);
        rows.set(hidden.subarray(t * d, t * d + d), r * d);
        slotIds[r] = local.get(ids[s])!;
        slotWeights[r] = weights[s];
      });
      const y = await nativeExpertLayer((i) => experts[i], d, ff, rows, slotIds, slotWeights, slots.length, { threads: this.opts.threads ?? 0 });
      slots.forEach((s, r) => {
        const t = Math.floor(s / k);
        for (let i = 0; i < d; i++) out[t * d + i] += y[r * d + i];
      });
    }
    return out;
  }

  private readExpert(layer: number, expert: number, bf16: boolean): NativeExpert {
    const c = this.checkpoint.config;
    const read = (which: 'gate' | 'up' | 'down') => {
      const name = expertName(c, layer, expert, which);
      if (!bf16) return this.checkpoint.readTensor(name);
      const raw = this.checkpoint.readRaw(name);
      if (raw.dtype !== 'BF16') return this.checkpoint.readTensor(name);
      return new Uint16Array(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength / 2);
    };
    return { gate: read('gate'), up: read('up'), down: read('down') };
  }

  dispose(): void {}
}

/**
 * Measures a trained model's router-logit spread: the per-token std of the logits across experts,
 * per layer, over `windows` windows of the text (each as long as the model's context allows, at
 * most 256 tokens), and its RMS over the layers. This is how TRAINED_LOGIT_SPREAD was obtained.
 */
export async function measureLogitSpread(dir = EMBEDDED_MODEL_DIR, text = calibrationText(), windows = 8): Promise<{ perLayer: number[]; rms: number }> {
  const m = await loadModel(dir);
  try {
    const c = m.checkpoint.config;
    const routers = Array.from({ length: c.numLayers }, (_, l) => m.checkpoint.readTensor(routerName(c, l)));
    const sums = new Float64Array(c.numLayers);
    const counts = new Float64Array(c.numLayers);
    const inner = m.engine;
    const probe: ExpertEngine = {
      compute(layer, hidden, ids, weights, T) {
        const z = routerLogits(hidden, T, c.hiddenSize, routers[layer], c.numExperts);
        for (let t = 0; t < T; t++) {
          const row = z.subarray(t * c.numExperts, (t + 1) * c.numExperts);
          const mu = row.reduce((a, b) => a + b, 0) / c.numExperts;
          sums[layer] += row.reduce((a, b) => a + (b - mu) ** 2, 0) / c.numExperts;
          counts[layer]++;
        }
        return inner.compute(layer, hidden, ids, weights, T);
      },
      dispose() {},
    };
    const ids = m.tokenizer.encode(text);
    const width = Math.min(256, c.maxPositions);
    for (let w = 0; w < windows && (w + 1) * width <= ids.length; w++) {
      const cache = new KvCache(c.numLayers, c.numKvHeads * c.headDim, width);
      await m.model.forward(ids.slice(w * width, (w + 1) * width), cache, false, probe);
    }
    const perLayer = [...sums].map((s, l) => Math.sqrt(s / Math.max(1, counts[l])));
    return { perLayer, rms: Math.sqrt(perLayer.reduce((a, b) => a + b * b, 0) / perLayer.length) };
  } finally {
    m.dispose();
  }
}
