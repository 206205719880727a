/**
 * The CUDA expert engine: the device keeps up to `capacity` experts' weights (LRU); a missing
 * expert's compressed rungs cross the link on a copy stream from pinned memory, the codec's
 * decode kernels write its weights into its device buffer on a decompress stream, and our own FFN
 * kernels run on the compute stream, events ordering the three (cuda/eb_pipeline.h,
 * src/native/device_engine.h). The model's prefetch hints for layer l + 1 start those fetches
 * while layer l's kernels run. The same host code runs on the GPU (native.cudaEngine*, present
 * when the addon was built with nvcc) and on an emulated device in host memory
 * (native.emulatedEngine*), which is how it is tested here: there is no GPU on these machines.
 * Each fetch's copy is timed with events and reported as a TransferSample (link 'cuda', or
 * 'emulated-cuda' with modelled times).
 */
import { codecCall } from '../codec/errors.js';
import { native, type DeviceLayerResult, type EmulatedPipelineOptions } from '../codec/native.js';
import { distinctExperts, type ExpertEngine } from './expert-engine.js';
import { NO_TELEMETRY, type TelemetrySink } from './telemetry.js';

/** One matrix as the device fetches it: a stream's head and rungs 0..k (splitRungs' parts). */
export interface DeviceMatrix {
  head: Uint8Array;
  rungs: Uint8Array[];
  /** The rung to decode (default: the last given). */
  k?: number;
}

export interface DeviceExpert {
  gate: DeviceMatrix;
  up: DeviceMatrix;
  down: DeviceMatrix;
}

interface DeviceCalls {
  layer(experts: (DeviceExpert & { key: number })[], slotExpert: Int32Array, slotWeight: Float32Array, hidden: Float32Array, T: number, k: number, d: number, ff: number): DeviceLayerResult;
  prefetch(expert: DeviceExpert & { key: number }): void;
}

export interface CudaEngineOptions {
  telemetry?: TelemetrySink;
  /** Experts whose weights the device keeps (LRU); default every expert of the model. */
  capacity?: number;
  /** Act on the model's prefetch hints (default true). */
  prefetch?: boolean;
  /** The emulated device's model (link bandwidth, copy latency, decode bandwidth) and scheduler seed. */
  emulation?: EmulatedPipelineOptions;
}

export class CudaExpertEngine implements ExpertEngine {
  readonly stats = { hits: 0, misses: 0, prefetched: 0 };
  private readonly telemetry: TelemetrySink;
  private readonly prefetchOn: boolean;
  private readonly prefetchedKeys = new Set<number>();

  private constructor(
    private readonly d: number,
    private readonly ff: number,
    private readonly experts: DeviceExpert[][],
    private readonly calls: DeviceCalls,
    private readonly link: 'cuda' | 'emulated-cuda',
    opts: CudaEngineOptions,
    /** The emulated device's trace (emulated engines only). */
    readonly trace?: () => { trace: { seq: number; stream: string; kind: string; fetch: number; bytes: number; start: number; end: number }[] },
  ) {
    this.telemetry = opts.telemetry ?? NO_TELEMETRY;
    this.prefetchOn = opts.prefetch ?? true;
  }

  private static capacity(experts: DeviceExpert[][], opts: CudaEngineOptions): number {
    const c = opts.capacity ?? experts.length * (experts[0]?.length ?? 1);
    if (!(Number.isInteger(c) && c >= 1)) throw new RangeError(`device capacity must be a whole number of experts ≥ 1, got ${c}`);
    return c;
  }

  /** On the GPU. Throws when the addon has no CUDA code, or "no usable CUDA device: …" without one. */
  static gpu(d: number, ff: number, experts: DeviceExpert[][], opts: CudaEngineOptions = {}): CudaExpertEngine {
    const { cudaEngineNew, cudaEngineLayer, cudaEnginePrefetch } = native;
    if (!cudaEngineNew || !cudaEngineLayer || !cudaEnginePrefetch) throw new Error('this addon was built without nvcc, so it has no CUDA engine');
    const h = codecCall(() => cudaEngineNew(d, ff, CudaExpertEngine.capacity(experts, opts)));
    return new CudaExpertEngine(d, ff, experts, { layer: (...a) => cudaEngineLayer(h, ...a), prefetch: (x) => cudaEnginePrefetch(h, x) }, 'cuda', opts);
  }

  /** On the emulated device: the same host code and kernel bodies, run on the CPU, times modelled. */
  static emulated(d: number, ff: number, experts: DeviceExpert[][], opts: CudaEngineOptions = {}): CudaExpertEngine {
    const h = native.emulatedEngineNew(d, ff, CudaExpertEngine.capacity(experts, opts), opts.emulation ?? {});
    return new CudaExpertEngine(
      d, ff, experts,
      { layer: (...a) => native.emulatedEngineLayer(h, ...a), prefetch: (x) => native.emulatedEnginePrefetch(h, x) },
      'emulated-cuda', opts, () => native.emulatedEngineTrace(h),
    );
  }

  private key(layer: number, expert: number): number {
    return layer * this.experts[0].length + expert;
  }

  prefetch(layer: number, ids: Int32Array): void {
    if (!this.prefetchOn) return;
    const row = this.experts[layer];
    if (!row) return;
    for (const e of distinctExperts(ids)) {
      if (!row[e]) continue;
      const key = this.key(layer, e);
      try {
        this.calls.prefetch({ key, ...row[e] });
        this.prefetchedKeys.add(key);
        this.stats.prefetched++;
      } catch {
        // A hint: the layer's own call fetches it again and reports what is wrong.
      }
    }
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const row = this.experts[layer];
    if (!row) throw new RangeError(`layer ${layer} is not one of the engine's ${this.experts.length}`);
    const distinct = distinctExperts(ids);
    for (const e of distinct) if (!row[e]) throw new RangeError(`expert ${e} is not one of layer ${layer}'s ${row.length}`);
    const index = new Map(distinct.map((e, i) => [e, i]));
    const k = T ? ids.length / T : 1;
    const r = codecCall(() =>
      this.calls.layer(distinct.map((e) => ({ key: this.key(layer, e), ...row[e] })), Int32Array.from(ids, (e) => index.get(e)!), weights, hidden, T, k, this.d, this.ff),
    );
    this.stats.hits += r.hits;
    this.stats.misses += r.misses;
    const at = performance.now() / 1000;
    const perExpert = this.experts[0].length;
    r.fetches.forEach((f, i) => {
      const expert = f.expert % perExpert;
      const m = row[expert][(['gate', 'up', 'down'] as const)[i % 3]];
      this.telemetry.emit({
        kind: 'transfer', at, layer, expert, rung: m.k ?? m.rungs.length - 1, fromRung: 0, bytes: f.bytes, seconds: f.transferSeconds,
        link: this.link, emulated: this.link !== 'cuda', prefetch: this.prefetchedKeys.has(f.expert),
      });
    });
    for (const e of distinct) this.prefetchedKeys.delete(this.key(layer, e));
    return r.out;
  }

  dispose(): void {}
}
