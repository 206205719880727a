/**
 * The CPU expert engine: the model's ExpertEngine computed in the addon (src/native/expert_cpu.h)
 * on every core, from weights that never enter TensorFlow.js; calls of real size run on a libuv
 * worker, off the event loop (small ones on the calling thread, see NativeLayerOptions). An expert's
 * matrices are either dense f32 (what the tfjs engine would copy into the wasm heap) or
 * compressed streams multiplied in place by the fused path, which decodes each 32-value block in
 * registers inside the dot product: a token then reads the compressed bytes, not f32 weights.
 *
 * @example
 * const m = await loadModel(dir, { cpu: { bound: 1e-3 } });   // + the native forward pass
 * const engine = CpuExpertEngine.fromReader(config, (l, e) => readExpert(ckpt, l, e), { bound: 1e-3 });
 */
import { compress } from '../codec/index.js';
import { codecCall } from '../codec/errors.js';
import { native, type RawFusedMatrix, type RawMatrix, type RawSymbolMatrix } from '../codec/native.js';
import { distinctExperts, type ExpertEngine, type ExpertMatrices, type ResidentExperts, type StepShape } from './expert-engine.js';
import type { TelemetrySink } from './telemetry.js';

/** One expert as the native engine reads it. */
export interface NativeExpert {
  gate: RawMatrix;
  up: RawMatrix;
  down: RawMatrix;
}

export interface NativeLayerOptions {
  /** Threads for the call (default every core). */
  threads?: number;
  /**
   * Where the call runs: on a libuv worker (false), on the calling thread (true), or 'auto'
   * (default): the calling thread for calls under SYNC_MACS multiply-adds. A worker hand-off costs
   * ~85 µs and, measured on the embedded model with tfjs dense layers, slows the whole step by
   * more than that; a call that small blocks the loop for less time than one tfjs op does.
   */
  sync?: boolean | 'auto';
}

/** Multiply-adds below which sync: 'auto' runs a call on the calling thread (~100 µs of work). */
export const SYNC_MACS = 1 << 24;

/**
 * One layer's routed experts through the addon: out[t] = Σ_j weights[t·k+j] · expert(ids[t·k+j])(hidden[t]).
 * `experts(e)` gives expert e's matrices; each distinct expert runs once on all its tokens.
 */
export function nativeExpertLayer(
  experts: (expert: number) => NativeExpert,
  d: number,
  ff: number,
  hidden: Float32Array,
  ids: Int32Array,
  weights: Float32Array,
  T: number,
  opts: NativeLayerOptions = {},
): Promise<Float32Array> {
  // Slots renumbered to the distinct experts, in first-seen order (a plain loop: this runs once
  // per layer per step, and Map/Set bookkeeping showed in a small model's decode step).
  const slotExpert = new Int32Array(ids.length);
  const seen: number[] = [];
  const mats: NativeExpert['gate'][][] = [];
  for (let s = 0; s < ids.length; s++) {
    let i = seen.indexOf(ids[s]);
    if (i < 0) {
      i = seen.push(ids[s]) - 1;
      const x = experts(ids[s]);
      mats.push([x.gate, x.up, x.down]);
    }
    slotExpert[s] = i;
  }
  const k = T ? ids.length / T : 1;
  const threads = opts.threads ?? 0;
  const sync = opts.sync ?? 'auto';
  if (sync === true || (sync === 'auto' && 3 * d * ff * ids.length < SYNC_MACS)) {
    return Promise.resolve().then(() => native.expertLayerSync(mats, slotExpert, weights, hidden, T, k, d, ff, threads));
  }
  return native.expertLayerAsync(mats, slotExpert, weights, hidden, T, k, d, ff, threads);
}

/**
 * The bf16 bits of `m` when every value is a bf16 value (its low 16 bits zero) and rows are whole
 * 32-value blocks (what the bf16 product reads); `m` itself otherwise.
 */
export function bf16IfExact(m: Float32Array, cols: number): Float32Array | Uint16Array {
  if (cols % 32 !== 0) return m;
  const bits = new Uint32Array(m.buffer, m.byteOffset, m.length);
  const out = new Uint16Array(m.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    if (b & 0xffff) return m;
    out[i] = b >>> 16;
  }
  return out;
}

/**
 * Bytes a fused matrix's row index takes beside its stream: for every row, where each of rungs
 * 0..k's words start and its first escape, 8 bytes each. At the embedded model's 128-value rows
 * that is as much again as a loose rung's own bytes, so memory figures count it.
 */
export function fusedIndexBytes(rows: number, k: number): number {
  return 8 * rows * (k + 2);
}

/** A compressed matrix (a codec stream of rows × cols values, or its head and rungs) for the fused path at rung k (default: the last). */
export function fusedMatrix(stream: Uint8Array, rows: number, cols: number, opts: { rungs?: Uint8Array[]; k?: number; verify?: boolean } = {}): RawFusedMatrix {
  const m = codecCall(() => native.fusedMatrix(stream, opts.rungs ?? null, opts.k ?? -1, rows, cols, opts.verify ?? true));
  const buffers = stream.byteLength + (opts.rungs ?? []).reduce((n, r) => n + r.byteLength, 0);
  return Object.assign(m, { heldBytes: buffers + fusedIndexBytes(rows, m.k) });
}

/** The weights the fused product multiplies with (f32, checkpoint layout). */
export function fusedMatrixValues(m: RawFusedMatrix): Float32Array {
  return native.fusedMatrixDecode(m);
}

/**
 * Patches (values that do not fit the symbols' bits) a symbol matrix may hold, as a share of its
 * values: past it a rung is too tight for that width. A patch costs 8 bytes and a branch in its
 * block; 1/64 keeps them under 13 % of an int8 matrix's bytes (a quarter of a 4-bit one's).
 */
export const MAX_PATCH_SHARE = 1 / 64;

/**
 * The fused matrix's weights as symbols (RawSymbolMatrix): 4 bits a value where its rung is coarse
 * enough, else 8, else null (too tight for either). The same weights bit for bit, so the same
 * products; decoded once here instead of in every product. With int8Activations its products
 * quantize the activations to 8 bits and run on integers where the form allows (the result's
 * int8Activations says): faster, no longer the dense product's bits.
 */
export function symbolMatrix(m: RawFusedMatrix, widths: readonly (4 | 8)[] = [4, 8], int8Activations = false): RawSymbolMatrix | null {
  for (const bits of widths) {
    const s = native.symbolMatrix(m, MAX_PATCH_SHARE, bits, int8Activations);
    if (s) return s;
  }
  return null;
}

/** Whether a matrix is held as symbols. */
export function isSymbolMatrix(m: RawMatrix): m is RawSymbolMatrix {
  return 'symbols' in m;
}

/** The weights a symbol matrix's product multiplies with (f32, checkpoint layout). */
export function symbolMatrixValues(m: RawSymbolMatrix): Float32Array {
  return native.symbolMatrixDecode(m);
}

/** Bytes one product with the matrix reads. */
export function matrixBytes(m: RawMatrix): number {
  return m instanceof Float32Array || m instanceof Uint16Array ? m.byteLength : m.bytes;
}

/** Bytes the matrix holds in memory: its array, a symbol matrix's arrays, or a fused one's stream buffers and row index. */
export function matrixHeldBytes(m: RawMatrix): number {
  return m instanceof Float32Array || m instanceof Uint16Array ? m.byteLength : isSymbolMatrix(m) ? m.bytes : (m.heldBytes ?? m.bytes);
}

/**
 * An expert compressed within an absolute bound, each matrix as a one-rung stream ready for the
 * fused path, or with `symbols` its weights as symbols where they fit 4 or 8 bits.
 */
export function compressedExpert(m: ExpertMatrices, d: number, ff: number, bound: number, symbols = false, int8Activations = false): NativeExpert {
  const one = (v: Float32Array, rows: number, cols: number) => {
    const fused = fusedMatrix(compress(v, { bound, threads: 0 }), rows, cols);
    return symbols ? (symbolMatrix(fused, undefined, int8Activations) ?? fused) : fused;
  };
  return { gate: one(m.gate, ff, d), up: one(m.up, ff, d), down: one(m.down, d, ff) };
}

export interface CpuEngineStats {
  /** Layer calls, and the seconds from each call to its result (the expert FFN time). */
  calls: number;
  seconds: number;
  /** Weight bytes the calls read: every distinct expert's three matrices once per call. */
  bytesRead: number;
}

export interface CpuEngineOptions extends NativeLayerOptions {
  /** Keep experts compressed within this absolute bound and use the fused path; dense when absent. */
  bound?: number;
  /** With a bound: hold each matrix as symbols where it fits 4 or 8 bits (fused where not). */
  symbols?: boolean;
  /** With symbols: multiply them by the integer product, the activations quantized to 8 bits (symbolMatrix). */
  int8Activations?: boolean;
  /** Where each forward step's TokenSample goes (all compute: every expert is resident, nothing waits). */
  telemetry?: TelemetrySink;
}

/** Every expert resident in host memory, dense (f32 or bf16) or compressed, computed by the addon. */
export class CpuExpertEngine implements ExpertEngine {
  readonly stats: CpuEngineStats = { calls: 0, seconds: 0, bytesRead: 0 };
  private stepStart = 0;

  constructor(
    private readonly d: number,
    private readonly ff: number,
    private readonly experts: NativeExpert[][],
    private readonly opts: CpuEngineOptions = {},
  ) {}

  beginForward(): void {
    this.stepStart = performance.now();
  }

  endForward(step: StepShape): void {
    if (!this.stepStart || !this.opts.telemetry) return;
    const now = performance.now();
    const seconds = (now - this.stepStart) / 1000;
    this.opts.telemetry.emit({ kind: 'token', at: now / 1000, ...step, seconds, computeSeconds: seconds, transferWaitSeconds: 0, decompressWaitSeconds: 0 });
    this.stepStart = 0;
  }

  /**
   * Reads every expert of a model: compressed when opts.bound is set, else dense — as bf16 bits
   * when every value of a matrix is one (a bf16 checkpoint's are), read by the bf16 product with
   * the same results as from f32 at half the bytes a token reads, else f32.
   */
  static fromReader(
    c: { hiddenSize: number; expertFfnSize: number; numLayers: number; numExperts: number },
    read: (layer: number, expert: number) => ExpertMatrices,
    opts: CpuEngineOptions = {},
  ): CpuExpertEngine {
    const { hiddenSize: d, expertFfnSize: ff } = c;
    const experts = Array.from({ length: c.numLayers }, (_, l) =>
      Array.from({ length: c.numExperts }, (_, e) => {
        const m = read(l, e);
        if (opts.bound !== undefined) return compressedExpert(m, d, ff, opts.bound, opts.symbols, opts.int8Activations);
        return { gate: bf16IfExact(m.gate, d), up: bf16IfExact(m.up, d), down: bf16IfExact(m.down, ff) };
      }),
    );
    return new CpuExpertEngine(d, ff, experts, opts);
  }

  /** How the experts are held, for logs: 'dense f32', 'dense bf16', 'compressed (fused)' or 'compressed (N-bit symbols)'. */
  describeForm(): string {
    const g = this.experts[0]?.[0]?.gate;
    return g instanceof Float32Array ? 'dense f32' : g instanceof Uint16Array ? 'dense bf16 (the checkpoint\'s own values)' : isSymbolMatrix(g) ? `compressed (${g.bits}-bit symbols${g.int8Activations ? ', activations in 8 bits' : ''})` : 'compressed (fused)';
  }

  /** Layer `l`'s experts, as the native forward takes them. */
  layer(l: number): NativeExpert[] {
    return this.experts[l];
  }

  /** Bytes of every expert the engine holds (compressed ones: their streams and row indexes). */
  heldBytes(): number {
    let n = 0;
    for (const row of this.experts) for (const x of row) n += matrixHeldBytes(x.gate) + matrixHeldBytes(x.up) + matrixHeldBytes(x.down);
    return n;
  }

  /** Bytes one token reads per expert it uses (the three matrices of expert 0 of layer 0). */
  expertBytes(): number {
    const x = this.experts[0][0];
    return matrixBytes(x.gate) + matrixBytes(x.up) + matrixBytes(x.down);
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const row = this.experts[layer];
    if (!row) throw new RangeError(`layer ${layer} is not one of the engine's ${this.experts.length}`);
    const start = performance.now();
    this.countReads(layer, ids);
    const out = await nativeExpertLayer((e) => row[e], this.d, this.ff, hidden, ids, weights, T, this.opts);
    this.stats.calls++;
    this.stats.seconds += (performance.now() - start) / 1000;
    return out;
  }

  /** Every expert is resident: the native forward computes them inside its step (read once, on first use). */
  resident(): ResidentExperts {
    this.residentHandle ??= native.residentExperts(
      this.experts.map((row) => row.map((x) => [x.gate, x.up, x.down])),
      this.d,
      this.ff,
      this.opts.threads ?? 0,
    );
    return {
      handle: this.residentHandle,
      computed: (ids, layers, seconds) => {
        const n = ids.length / layers;
        for (let l = 0; l < layers; l++) this.countReads(l, ids.subarray(l * n, (l + 1) * n));
        this.stats.calls += layers;
        this.stats.seconds += seconds;
      },
    };
  }

  private residentHandle: unknown;

  /** Adds the bytes a layer's call reads (each distinct expert's three matrices once). */
  private countReads(layer: number, ids: Int32Array): void {
    const row = this.experts[layer];
    for (const e of distinctExperts(ids)) {
      const x = row[e];
      if (!x) throw new RangeError(`expert ${e} is not one of layer ${layer}'s ${row.length}`);
      this.stats.bytesRead += matrixBytes(x.gate) + matrixBytes(x.up) + matrixBytes(x.down);
    }
  }

  dispose(): void {
    // The matrices are garbage-collected JS values (Float32Arrays, or fused handles whose
    // finalizers free the native index).
  }
}
