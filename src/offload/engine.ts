/**
 * The offload expert engine: the model's ExpertEngine backed by the store, the link and the
 * device cache. For each layer it fetches the routed experts at the level the current
 * PrecisionPlan names (waiting only for what is not already on the device), computes them in the
 * addon straight from the device cache's f32 buffers (the CPU engine's kernels: nothing is copied
 * anywhere; the default) or, with `compute: 'tfjs'`, with TensorFlow.js, and releases them. Prefetch hints start the next layer's fetches while this
 * layer computes. Every forward step ends with a TokenSample splitting its time into compute,
 * transfer wait and decompress wait. A plan's drop rungs apply here too: a trimmed layer computes
 * each token's top-(k − 1) (trimRouting) and fetches only those experts; a skipped layer returns
 * zeros and fetches nothing, prefetches included.
 *
 * @example
 * const engine = new OffloadExpertEngine({ store, link: new CopyLink(), budget, telemetry: bus });
 * engine.setPlan(uniformPlan(store.numLayers, store.exact));
 * const m = await loadModel(dir, { engine: () => engine });
 */
import { combineExperts, distinctExperts, type ExpertEngine, type StepShape } from './expert-engine.js';
import { nativeExpertLayer } from './cpu-engine.js';
import { ExpertFetcher, nativeMatricesOf, tensorsOf, type ExpertHandle, type FetcherOptions, type TierAForm } from './fetcher.js';
import { checkPlan, dropOf, uniformPlan, type PrecisionPlan } from './plan.js';
import { NO_TELEMETRY, type TelemetrySink } from './telemetry.js';

export interface OffloadEngineOptions extends Omit<FetcherOptions, 'form'> {
  /** Who multiplies: the CPU engine's kernels in the addon (default) or TensorFlow.js. */
  compute?: 'tfjs' | 'cpu';
  /**
   * With the CPU engine, how tier A holds a codec level: 'f32' (default), its rungs decoded;
   * 'fused', the rungs as they crossed, multiplied by the fused product (each block decoded inside
   * the dot product); 'symbols', the rungs' weights as symbols with no decode in the product, 4
   * bits a value where the level fits them, 8 where it fits that, fused where neither. In 'fused' and
   * 'symbols' an exact level of bf16 bytes is multiplied in place; otherwise it is f32.
   */
  tierAForm?: TierAForm;
  /** With tierAForm 'symbols': multiply them by the integer product, the activations quantized to 8 bits (symbolMatrix). */
  int8Activations?: boolean;
  /** The first plan (default: every layer at the finest level). */
  plan?: PrecisionPlan;
  /** Act on the model's prefetch hints (default true). */
  prefetch?: boolean;
  /** Called with each expert handed to a computation (tests check what the model was given). */
  onExpertUsed?: (layer: number, expert: number, handle: ExpertHandle) => void;
}

export interface PrefetchStats {
  /** Distinct experts a layer computed with, and how many of them prefetch had predicted. */
  demanded: number;
  predicted: number;
  issued: number;
  failed: number;
}

export class OffloadExpertEngine implements ExpertEngine {
  readonly fetcher: ExpertFetcher;
  readonly prefetchStats: PrefetchStats = { demanded: 0, predicted: 0, issued: 0, failed: 0 };
  /**
   * Present only with prefetch on: the model skips its predictions for an engine without it
   * (they read each layer's hidden state back from the backend).
   */
  readonly prefetch?: (layer: number, ids: Int32Array) => void;
  private plan: PrecisionPlan;
  private readonly telemetry: TelemetrySink;
  private readonly predictedFor = new Map<number, Set<number>>();
  private readonly onExpertUsed?: OffloadEngineOptions['onExpertUsed'];
  private readonly d: number;
  private readonly ff: number;
  private readonly compute_: 'tfjs' | 'cpu';
  // The forward step under way: its start and the waits inside it (ms).
  private stepStart = 0;
  private transferWait = 0;
  private decompressWait = 0;

  constructor(opts: OffloadEngineOptions) {
    this.compute_ = opts.compute ?? 'cpu';
    const form = opts.tierAForm ?? 'f32';
    if (form !== 'f32' && this.compute_ !== 'cpu') throw new RangeError(`the ${form} form is multiplied by the CPU engine: compute must be cpu`);
    this.fetcher = new ExpertFetcher({ ...opts, form: this.compute_ === 'tfjs' ? 'tfjs' : form });
    const s = opts.store;
    this.plan = opts.plan ?? uniformPlan(s.numLayers, s.levels - 1);
    checkPlan(this.plan, s.ladder, s.numLayers);
    if (opts.prefetch ?? true) this.prefetch = (layer, ids) => this.startPrefetch(layer, ids);
    this.telemetry = opts.telemetry ?? NO_TELEMETRY;
    this.onExpertUsed = opts.onExpertUsed;
    [this.ff, this.d] = s.matrixInfo(0, 0).gate.shape;
  }

  get currentPlan(): PrecisionPlan {
    return this.plan;
  }

  /** Replaces the plan; the next fetch of each layer uses it. Throws on a plan that does not fit. */
  setPlan(plan: PrecisionPlan): void {
    checkPlan(plan, this.fetcher.store.ladder, this.fetcher.store.numLayers);
    this.plan = { version: plan.version, levels: [...plan.levels], ...(plan.drop ? { drop: [...plan.drop] } : {}) };
  }

  beginForward(): void {
    this.stepStart = performance.now();
    this.transferWait = 0;
    this.decompressWait = 0;
  }

  endForward(step: StepShape): void {
    if (!this.stepStart) return;
    const now = performance.now();
    const total = now - this.stepStart;
    this.telemetry.emit({
      kind: 'token', at: now / 1000, ...step, seconds: total / 1000,
      computeSeconds: Math.max(0, total - this.transferWait - this.decompressWait) / 1000,
      transferWaitSeconds: this.transferWait / 1000, decompressWaitSeconds: this.decompressWait / 1000,
    });
    this.stepStart = 0;
  }

  private startPrefetch(layer: number, ids: Int32Array): void {
    // A skipped layer fetches nothing; a trimmed one is predicted from its full top-k (a superset).
    if (dropOf(this.plan, layer) === 'skip-moe') return;
    const level = this.plan.levels[layer];
    const set = new Set<number>();
    for (const e of distinctExperts(ids)) {
      set.add(e);
      this.prefetchStats.issued++;
      this.fetcher.acquire(layer, e, level, true).then(
        (h) => h.release(),
        () => this.prefetchStats.failed++,
      );
    }
    this.predictedFor.set(layer, set);
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const drop = dropOf(this.plan, layer);
    if (drop === 'skip-moe') {
      this.predictedFor.delete(layer);
      return new Float32Array(T * this.d);
    }
    if (drop === 'trim') ({ ids, weights } = trimRouting(ids, weights, T));
    const level = this.plan.levels[layer];
    const experts = distinctExperts(ids);
    const predicted = this.predictedFor.get(layer);
    this.predictedFor.delete(layer);
    this.prefetchStats.demanded += experts.length;
    if (predicted) for (const e of experts) if (predicted.has(e)) this.prefetchStats.predicted++;

    const waitStart = performance.now();
    const settled = await Promise.allSettled(experts.map((e) => this.fetcher.acquire(layer, e, level)));
    const waitEnd = performance.now();
    const handles = new Map<number, ExpertHandle>();
    settled.forEach((r, i) => r.status === 'fulfilled' && handles.set(experts[i], r.value));
    try {
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      this.splitWait(waitStart, waitEnd, [...handles.values()]);
      for (const [e, h] of handles) this.onExpertUsed?.(layer, e, h);
      if (this.compute_ === 'cpu') return await nativeExpertLayer((e) => nativeMatricesOf(handles.get(e)!.weights), this.d, this.ff, hidden, ids, weights, T);
      return combineExperts(this.d, hidden, ids, weights, T, (e) => tensorsOf(handles.get(e)!.weights));
    } finally {
      for (const h of handles.values()) h.release();
    }
  }

  /** Splits a wait into the part spent until the last transfer landed and the decompression after it. */
  private splitWait(start: number, end: number, handles: ExpertHandle[]): void {
    const waited = end - start;
    // Everything was on the device already: the await was bookkeeping, not waiting.
    if (waited <= 0 || handles.every((h) => h.decodedAt <= start)) return;
    let lastTransfer = start;
    for (const h of handles) if (h.transferDoneAt > lastTransfer) lastTransfer = Math.min(h.transferDoneAt, end);
    this.transferWait += lastTransfer - start;
    this.decompressWait += end - lastTransfer;
  }

  /** Prefetch hit rate: the share of demanded experts that prefetch had predicted. */
  prefetchHitRate(): number {
    return this.prefetchStats.demanded ? this.prefetchStats.predicted / this.prefetchStats.demanded : 0;
  }

  dispose(): void {
    this.fetcher.close();
  }
}

/**
 * Expert trimming by routing: each token's lowest-weight expert dropped (top-k → top-(k − 1)) and
 * the kept weights scaled to the sum all k had (1 when the router normalises its top-k), so the
 * layer's output keeps its scale. A top-1 routing has nothing to trim: it is returned as it is.
 */
export function trimRouting(ids: Int32Array, weights: Float32Array, T: number): { ids: Int32Array; weights: Float32Array } {
  const k = ids.length / T;
  if (k < 2) return { ids, weights };
  const outIds = new Int32Array(T * (k - 1));
  const outW = new Float32Array(T * (k - 1));
  for (let t = 0; t < T; t++) {
    let low = 0;
    let sum = 0;
    let kept = 0;
    for (let j = 0; j < k; j++) {
      const w = weights[t * k + j];
      sum += w;
      if (w < weights[t * k + low]) low = j;
    }
    for (let j = 0; j < k; j++) if (j !== low) kept += weights[t * k + j];
    const scale = kept > 0 ? sum / kept : 0;
    let o = t * (k - 1);
    for (let j = 0; j < k; j++) {
      if (j === low) continue;
      outIds[o] = ids[t * k + j];
      outW[o++] = weights[t * k + j] * scale;
    }
  }
  return { ids: outIds, weights: outW };
}
