/**
 * The CUDA expert engine: per layer, each routed expert's compressed rungs cross the link on a
 * copy stream from pinned memory, the codec's decode kernels write its weights into device
 * buffers on a decompress stream, and our own FFN kernels run on the compute stream, events
 * ordering the three (cuda/eb_pipeline.h, src/native/expert_layer_driver.h). The same host code
 * runs on the GPU (native.cudaExpertLayer, present when the addon was built with nvcc) and on an
 * emulated device in host memory (native.emulatedExpertLayer), which is how it is tested here:
 * there is no GPU on these machines. Each fetch's copy is timed with events and reported as a
 * TransferSample (link 'cuda', or 'emulated-cuda' with modelled times).
 */
import { codecCall } from '../codec/errors.js';
import { native, type EmulatedPipelineOptions } from '../codec/native.js';
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

type LayerRun = (
  experts: DeviceExpert[], slotExpert: Int32Array, slotWeight: Float32Array, hidden: Float32Array, T: number, k: number, d: number, ff: number,
) => { out: Float32Array; fetches: { bytes: number; transferSeconds: number; decompressSeconds: number }[] };

export interface CudaEngineOptions {
  telemetry?: TelemetrySink;
  /** The emulated device's model (link bandwidth, copy latency, decode bandwidth) and scheduler seed. */
  emulation?: EmulatedPipelineOptions;
}

export class CudaExpertEngine implements ExpertEngine {
  private readonly telemetry: TelemetrySink;

  private constructor(
    private readonly d: number,
    private readonly ff: number,
    private readonly experts: DeviceExpert[][],
    private readonly run: LayerRun,
    private readonly link: 'cuda' | 'emulated-cuda',
    opts: CudaEngineOptions,
  ) {
    this.telemetry = opts.telemetry ?? NO_TELEMETRY;
  }

  /** On the GPU. Throws when the addon has no CUDA code; its calls throw when there is no device. */
  static gpu(d: number, ff: number, experts: DeviceExpert[][], opts: CudaEngineOptions = {}): CudaExpertEngine {
    const run = native.cudaExpertLayer;
    if (!run) throw new Error('this addon was built without nvcc, so it has no CUDA engine');
    return new CudaExpertEngine(d, ff, experts, run, 'cuda', opts);
  }

  /** On the emulated device: the same host code and kernel bodies, run on the CPU, times modelled. */
  static emulated(d: number, ff: number, experts: DeviceExpert[][], opts: CudaEngineOptions = {}): CudaExpertEngine {
    const emu = opts.emulation ?? {};
    return new CudaExpertEngine(d, ff, experts, (...a) => native.emulatedExpertLayer(...a, emu), 'emulated-cuda', opts);
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const row = this.experts[layer];
    if (!row) throw new RangeError(`layer ${layer} is not one of the engine's ${this.experts.length}`);
    const distinct = distinctExperts(ids);
    for (const e of distinct) if (!row[e]) throw new RangeError(`expert ${e} is not one of layer ${layer}'s ${row.length}`);
    const index = new Map(distinct.map((e, i) => [e, i]));
    const k = T ? ids.length / T : 1;
    const r = codecCall(() =>
      this.run(distinct.map((e) => row[e]), Int32Array.from(ids, (e) => index.get(e)!), weights, hidden, T, k, this.d, this.ff),
    );
    const at = performance.now() / 1000;
    r.fetches.forEach((f, i) => {
      const m = row[distinct[Math.floor(i / 3)]][(['gate', 'up', 'down'] as const)[i % 3]];
      const rung = m.k ?? m.rungs.length - 1;
      this.telemetry.emit({
        kind: 'transfer', at, layer, expert: distinct[Math.floor(i / 3)], rung, fromRung: 0, bytes: f.bytes, seconds: f.transferSeconds,
        link: this.link, emulated: this.link !== 'cuda', prefetch: false,
      });
    });
    return r.out;
  }

  dispose(): void {}
}
