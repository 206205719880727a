/**
 * The expert store: every routed expert of a checkpoint held in host memory as precision-ladder
 * rungs (and, when the ladder has an exact level, its original bytes). It answers the two
 * questions the data plane asks — what bytes must cross the link to bring an expert from the
 * rungs the device holds to a level, and how many bytes each level costs per layer (the planner's
 * input) — and never decompresses anything itself.
 *
 * Built in memory by `buildStore` from an ExpertSource on worker threads (the codec's async
 * calls), with progress; or streamed to a store file by `buildStoreFile` (store-build.ts) and
 * loaded from it. `openStore` (store-file.ts) loads or rebuilds the disk cache around it.
 */
import { compressLadderAsync, inspect, splitRungs, type DType } from '../codec/index.js';
import { DTYPE_BYTES, type TensorDtype } from '../codec/halfs-array.js';
import { native } from '../codec/native.js';

/** The addon's dtype codes (src/native/stream_format.h). */
const WIDEN_CODE: Readonly<Record<TensorDtype, number>> = { F32: 0, F16: 1, BF16: 2 };
import { exactLevel, levelCount, type Ladder } from './plan.js';
import { MATRICES, type ExpertSource, type MatrixName, type RawTensor } from './source.js';

/** One matrix of one expert, as the store keeps it. */
export interface StoredMatrix {
  dtype: TensorDtype;
  shape: number[];
  /** The codec stream's head (header and rung table) and its rungs, loosest first. */
  head: Buffer;
  rungs: Buffer[];
  /** Absolute bound after rungs 0..k (per tensor: a σ-relative ladder differs per matrix). */
  bounds: number[];
  /** The original bytes, when the ladder has an exact level. */
  exact?: Buffer;
}

export type StoredExpert = Record<MatrixName, StoredMatrix>;

/** An expert's levels in host memory, as a store held on disk read them (toHost; opaque elsewhere). */
export interface HostCopy {
  readonly held: number;
}

/** What a store knows of a matrix without its bytes. */
export type MatrixInfo = Pick<StoredMatrix, 'dtype' | 'shape' | 'bounds'>;

export interface BuildProgress {
  done: number;
  total: number;
  layer: number;
  expert: number;
  /** Streaming builds (store-build.ts): checkpoint bytes read and store-file bytes written so far. */
  bytesRead?: number;
  bytesWritten?: number;
}

export class ExpertStore {
  /** Levels the ladder offers (rungs, then the exact level when present). */
  readonly levels: number;
  readonly exact: number;
  private readonly levelSizes = new Map<number, number[]>();

  constructor(
    readonly ladder: Ladder,
    readonly numLayers: number,
    readonly numExperts: number,
    readonly checkpointHash: string,
    private readonly experts: StoredExpert[][],
  ) {
    this.levels = levelCount(ladder);
    this.exact = exactLevel(ladder);
  }

  /** Each matrix's element type, shape and rung bounds (what a store knows without its bytes). */
  matrixInfo(layer: number, expert: number): Record<MatrixName, MatrixInfo> {
    return this.expert(layer, expert);
  }

  /**
   * Brings expert (layer, expert)'s levels up to `level` into host memory, for partsToMove: here
   * they always are (undefined: nothing to wait for); a store held on disk (disk-store.ts) reads
   * what host memory lacks and resolves to the copy partsToMove then cuts from. `prefetch`: asked
   * by a prefetch, not by a layer waiting (the disk's telemetry says which).
   */
  toHost(_layer: number, _expert: number, _level: number, _prefetch = false): Promise<HostCopy> | undefined {
    return undefined;
  }

  expert(layer: number, expert: number): StoredExpert {
    const e = this.experts[layer]?.[expert];
    if (!e) throw new RangeError(`no expert ${expert} in layer ${layer} (${this.numLayers} layers × ${this.numExperts} experts)`);
    return e;
  }

  /**
   * The buffers that bring expert (layer, expert) to `level` when the device already holds
   * codec rungs 0..held (held = −1: nothing; the head comes with rung 0). For the exact level,
   * the original bytes, whatever is held. Per matrix, in MATRICES order.
   */
  partsToMove(layer: number, expert: number, held: number, level: number, _onHost?: HostCopy): Record<MatrixName, Buffer[]> {
    this.checkLevel(level);
    const e = this.expert(layer, expert);
    const out = {} as Record<MatrixName, Buffer[]>;
    for (const m of MATRICES) {
      const s = e[m];
      out[m] = level === this.exact ? [s.exact!] : [...(held < 0 ? [s.head] : []), ...s.rungs.slice(held + 1, level + 1)];
    }
    return out;
  }

  /** Bytes that bring one expert from nothing to `level` (what a miss at that level moves). */
  levelBytes(layer: number, expert: number, level: number): number {
    const parts = this.partsToMove(layer, expert, -1, level);
    return MATRICES.reduce((sum, m) => sum + parts[m].reduce((a, b) => a + b.byteLength, 0), 0);
  }

  /**
   * Mean bytes per expert of each level in `layer`, index = level (the planner's rung sizes).
   * Computed once per layer: the store never changes, and /metrics asks at every scrape.
   */
  layerLevelBytes(layer: number): number[] {
    let sizes = this.levelSizes.get(layer);
    if (!sizes) {
      sizes = Array.from({ length: this.levels }, (_, level) => {
        let sum = 0;
        for (let e = 0; e < this.numExperts; e++) sum += this.levelBytes(layer, e, level);
        return sum / this.numExperts;
      });
      this.levelSizes.set(layer, sizes);
    }
    return [...sizes];
  }

  /** Bytes of one expert's original weights (what uncompressed offload moves per miss). */
  originalBytes(layer: number, expert: number): number {
    const e = this.matrixInfo(layer, expert);
    return MATRICES.reduce((sum, m) => sum + e[m].shape.reduce((a, b) => a * b, 1) * (e[m].dtype === 'F32' ? 4 : 2), 0);
  }

  /** Values in one expert (all three matrices). */
  expertValues(layer: number, expert: number): number {
    const e = this.matrixInfo(layer, expert);
    return MATRICES.reduce((sum, m) => sum + e[m].shape.reduce((a, b) => a * b, 1), 0);
  }

  /** Every stored byte (host memory the store holds). */
  totalBytes(): number {
    let sum = 0;
    for (const layer of this.experts) {
      for (const e of layer) {
        for (const m of MATRICES) sum += e[m].head.byteLength + e[m].rungs.reduce((a, b) => a + b.byteLength, 0) + (e[m].exact?.byteLength ?? 0);
      }
    }
    return sum;
  }

  /**
   * Whether the exact level holds the checkpoint's own bytes (in its dtype), so that an engine may
   * multiply them as they are; false for a store that keeps another encoding there.
   */
  get exactIsOriginal(): boolean {
    return true;
  }

  /**
   * Values of a matrix's exact-level bytes. The exact level holds the original bytes; a store
   * that keeps some other direct encoding there (the benchmark's int8 / int4 baselines) says how
   * to decode it here.
   */
  decodeExact(m: MatrixInfo, bytes: Uint8Array, into?: Float32Array): Float32Array {
    const n = bytes.byteLength / DTYPE_BYTES[m.dtype];
    // Widened in the addon, into a recycled buffer when one is given (`into` of the wrong size is
    // not used): this runs on every exact-level miss.
    return native.widen(bytes, WIDEN_CODE[m.dtype], into?.length === n ? into : new Float32Array(n));
  }

  /** All experts, for serialisation. */
  entries(): StoredExpert[][] {
    return this.experts;
  }

  private checkLevel(level: number): void {
    if (!Number.isInteger(level) || level < 0 || level >= this.levels) throw new RangeError(`level ${level} is not one of 0..${this.levels - 1}`);
  }
}

const CODEC_DTYPE: Record<TensorDtype, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** The codec's view of a raw tensor: a typed array of its values (a view, no copy when aligned). */
function codecValues(t: RawTensor): Float32Array | Uint16Array {
  // Unaligned bytes are copied (new Uint8Array copies; a Node Buffer's slice() would not).
  const b = t.bytes.byteOffset % 4 === 0 ? t.bytes : new Uint8Array(t.bytes);
  return t.dtype === 'F32' ? new Float32Array(b.buffer, b.byteOffset, b.byteLength >> 2) : new Uint16Array(b.buffer, b.byteOffset, b.byteLength >> 1);
}

/** One matrix compressed into the ladder: its codec head, rungs (views of one stream) and bounds. */
export type CompressedMatrix = Pick<StoredMatrix, 'dtype' | 'shape' | 'bounds'> & { head: Buffer; rungs: Buffer[] };

/** Compresses one matrix into the ladder on the codec's workers and checks what it made (inspect verifies every rung). */
export async function compressMatrix(t: RawTensor, ladder: Ladder): Promise<CompressedMatrix> {
  const stream = await compressLadderAsync(codecValues(t), { dtype: CODEC_DTYPE[t.dtype], bounds: ladder.bounds, boundMode: ladder.boundMode });
  const { head, rungs } = splitRungs(stream);
  const info = inspect(head, { rungs });
  return { dtype: t.dtype, shape: [...t.shape], head, rungs, bounds: info.rungs.map((r) => r.bound) };
}

/** Compresses one matrix into the ladder, each part in a buffer of its own (the in-memory store's form). */
export async function storeMatrix(t: RawTensor, ladder: Ladder): Promise<StoredMatrix> {
  const c = await compressMatrix(t, ladder);
  // Copies: the rungs are views of one stream; each gets its own buffer so a rung can be moved,
  // cached and freed alone.
  return { ...c, head: Buffer.from(c.head), rungs: c.rungs.map((r) => Buffer.from(r)), exact: ladder.exact ? Buffer.from(t.bytes) : undefined };
}

/** Compresses every expert of `source` into a store. */
export async function buildStore(source: ExpertSource, ladder: Ladder, onProgress?: (p: BuildProgress) => void): Promise<ExpertStore> {
  const total = source.numLayers * source.numExperts;
  const experts: StoredExpert[][] = [];
  let done = 0;
  for (let l = 0; l < source.numLayers; l++) {
    const row: StoredExpert[] = [];
    for (let e = 0; e < source.numExperts; e++) {
      const raw = source.readExpert(l, e);
      const stored = {} as StoredExpert;
      for (const m of MATRICES) stored[m] = await storeMatrix(raw[m], ladder);
      row.push(stored);
      onProgress?.({ done: ++done, total, layer: l, expert: e });
    }
    experts.push(row);
  }
  return new ExpertStore(ladder, source.numLayers, source.numExperts, source.hash, experts);
}
