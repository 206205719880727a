// The one place that loads the addon (build/Release/ebserve_native.node, built by `make`).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

type Bytes = ArrayBufferView | ArrayBuffer;

/** The addon's raw functions; src/codec/index.ts wraps them in the typed API. */
export interface NativeCodec {
  /** coder: 0 fixed (default), 1 entropy. */
  compressSync(input: Bytes, dtype: number, bound: number, boundMode: number, cuts: number[], threads: number, coder?: number): Buffer;
  compressAsync(input: Bytes, dtype: number, bound: number, boundMode: number, cuts: number[], threads: number, coder?: number): Promise<Buffer>;
  decompressSync(head: Bytes, rungs: Bytes[] | null, k: number, outDtype: number, out: Bytes | null, verify: boolean, threads: number): Bytes;
  decompressAsync(head: Bytes, rungs: Bytes[] | null, k: number, outDtype: number, out: Bytes | null, verify: boolean, threads: number): Promise<Bytes>;
  /** The decode stream (src/native/decode_stream.h): decodes every rung of each part, starting no earlier than delayMs from now. */
  decodeStreamRun(parts: { head: Bytes; rungs: Bytes[] }[], delayMs: number, threads: number, outs?: (Float32Array | undefined)[]): Promise<{ values: Float32Array[]; seconds: number; waitedSeconds: number }>;
  inspect(head: Bytes, rungs: Bytes[] | null, verify: boolean): RawInfo;
  entropyBits(input: Bytes, dtype: number, eb: number): number;
  /** CRC-32C of data; with threads > 1 computed in segments and combined (same value). */
  crc32c(data: Bytes, threads?: number): number;
  /** Stored f32 / f16 / bf16 values (dtype 0 / 1 / 2) into `out`, which must hold exactly as many; returns out. */
  widen(input: Bytes, dtype: number, out: Float32Array): Float32Array;
  info(): { simd: string; fusedDecoder: string; intDot: string; threads: number; cuda: CudaProbe };
  /** The CPU expert engine (src/native/expert_cpu.h): a compressed matrix indexed for the fused product. */
  fusedMatrix(head: Bytes, rungs: Bytes[] | null, k: number, rows: number, cols: number, verify: boolean): RawFusedMatrix;
  /** The weights the fused product multiplies with, as f32 (checkpoint layout). */
  fusedMatrixDecode(m: RawFusedMatrix): Float32Array;
  /** A fused matrix's rung as 8- or 4-bit symbols (default 8); null when more than maxPatchShare of its values do not fit. */
  symbolMatrix(m: RawFusedMatrix, maxPatchShare: number, bits?: 4 | 8, int8Activations?: boolean): RawSymbolMatrix | null;
  /** The weights a symbol matrix's product multiplies with, as f32 (checkpoint layout). */
  symbolMatrixDecode(m: RawSymbolMatrix): Float32Array;
  /** The native forward pass (src/native/decoder_cpu.h); src/model/native-forward.ts builds the spec. */
  decoderNew(spec: object): unknown;
  decoderBegin(decoder: unknown, tokens: Int32Array, segments: { count: number; pos0: number; allLogits: boolean; keys: Float32Array[]; values: Float32Array[] }[], out: { hidden: Float32Array; ids: Int32Array; weights: Float32Array; predicted: Int32Array }, threads: number): unknown;
  decoderLayer(step: unknown, layer: number, moe: Float32Array | null): Promise<void>;
  decoderLogits(step: unknown, moe: Float32Array): Promise<{ logits: Float32Array; seconds: number }>;
  /** Every layer's experts ([gate, up, down] each), read once for decoderRun. */
  residentExperts(layers: RawMatrix[][][], d: number, ff: number, threads: number): unknown;
  /** A whole step with the resident experts, each layer's routing written into `routing` at l·T·K. */
  decoderRun(step: unknown, resident: unknown, routing: { ids: Int32Array; weights: Float32Array }): Promise<{ logits: Float32Array; seconds: number; expertSeconds: number }>;
  /** The disk tier's reads (src/native/direct_file.cc): around the page cache where the file system allows (`direct`). */
  directOpen(path: string): { handle: unknown; direct: boolean };
  /** offset and length in multiples of 4096; bytes: what the file holds there (fewer where it ends first); seconds: the read's own time. */
  directRead(handle: unknown, offset: number, length: number): Promise<{ bytes: Buffer; seconds: number }>;
  directClose(handle: unknown): void;
  /** Picks the fused path's block decoder; false when the CPU cannot run the one asked for. */
  setFusedDecoder(name: 'gfni' | 'plane loop'): boolean;
  /** The integer product's dot: VNNI where the CPU has it, or the generic int16 one; false when the CPU cannot. */
  setIntDot(name: 'vnni' | 'generic'): boolean;
  /** One product as the engine runs it: y [n, rows] = x [n, cols] · Mᵀ (for the tests). */
  matrixProduct(m: RawMatrix, rows: number, cols: number, x: Float32Array, n: number): Float32Array;
  /** One layer's routed SwiGLU experts: experts[i] = [gate, up, down]; returns [T, d]. */
  expertLayerSync(experts: RawMatrix[][], slotExpert: Int32Array, slotWeight: Float32Array, hidden: Float32Array, T: number, k: number, d: number, ff: number, threads: number): Float32Array;
  expertLayerAsync(experts: RawMatrix[][], slotExpert: Int32Array, slotWeight: Float32Array, hidden: Float32Array, T: number, k: number, d: number, ff: number, threads: number): Promise<Float32Array>;
  emulatedCompress?(input: Bytes, dtype: number, bound: number, boundMode: number, cuts: number[]): Buffer;
  /** Either coder: fixed-length streams through the block kernels, entropy-coded ones through the rANS warp kernel. */
  emulatedDecompress?(stream: Bytes, k: number, outDtype: number): Buffer;
  /** Present when built with nvcc; they throw "no usable CUDA device: …" without a GPU. */
  cudaCompress?(input: Bytes, dtype: number, bound: number, boundMode: number, cuts: number[]): Buffer;
  cudaDecompress?(stream: Bytes, k: number, outDtype: number): Buffer;
  /** The expert offload pipeline (cuda/eb_pipeline.h) on an emulated device: modelled times, and a trace. */
  emulatedPipelineRun?(fetches: PipelineFetch[], options?: EmulatedPipelineOptions): EmulatedPipelineResult;
  /** The CUDA engine (src/native/device_engine.h) on an emulated device, kept across layer calls. */
  emulatedEngineNew(d: number, ff: number, capacity: number, options?: EmulatedPipelineOptions): unknown;
  emulatedEnginePrefetch(engine: unknown, expert: DeviceExpertArg): void;
  emulatedEngineLayer(engine: unknown, experts: DeviceExpertArg[], slotExpert: Int32Array, slotWeight: Float32Array, hidden: Float32Array, T: number, k: number, d: number, ff: number): DeviceLayerResult;
  emulatedEngineTrace(engine: unknown): { trace: EmulatedPipelineResult['trace']; model: EmulatedPipelineResult['model'] };
  /** The same on the GPU; present when built with nvcc; cudaEngineNew throws "no usable CUDA device: …" without one. */
  cudaEngineNew?(d: number, ff: number, capacity: number): unknown;
  cudaEnginePrefetch?(engine: unknown, expert: DeviceExpertArg): void;
  cudaEngineLayer?(engine: unknown, experts: DeviceExpertArg[], slotExpert: Int32Array, slotWeight: Float32Array, hidden: Float32Array, T: number, k: number, d: number, ff: number): DeviceLayerResult;
  /** The same pipeline on the GPU; present when built with nvcc, throws "no usable CUDA device: …" without one. */
  cudaPipelineRun?(fetches: PipelineFetch[], options?: { outputSlots?: number; inFlight?: number }): PipelineResult;
}

/** One expert fetch: a stream's head and rungs (as splitRungs cuts them), decoded at rung k (-1: the last given). */
export interface PipelineFetch {
  head: Bytes;
  rungs: Bytes[];
  k?: number;
  outDtype?: number;
}

/** An expert for the device engines: each matrix's stream head and rungs, decoded at rung k. */
export interface DeviceExpertArg {
  /** Which expert (layer · experts + expert): the device engine caches weights by it. */
  key: number;
  gate: PipelineFetch;
  up: PipelineFetch;
  down: PipelineFetch;
}

export interface DeviceLayerResult {
  out: Float32Array;
  /** Per matrix fetched and first used by this call (gate, up, down of each such expert). */
  fetches: { expert: number; bytes: number; copies: number; transferSeconds: number; decompressSeconds: number }[];
  /** Routed experts whose weights were on the device or on their way (prefetched), and those fetched now. */
  hits: number;
  misses: number;
}

export interface EmulatedPipelineOptions {
  seed?: number;
  /** Fetch i decodes into device buffer i % outputSlots (default: one each). */
  outputSlots?: number;
  /** At most this many fetches outstanding; the oldest is released before the next (default: all). */
  inFlight?: number;
  linkBandwidth?: number;
  copyLatency?: number;
  decodeBandwidth?: number;
}

export interface PipelineResult {
  outputs: Buffer[];
  fetches: { bytes: number; copies: number; transferSeconds: number; decompressSeconds: number }[];
  /** Device rung buffers the pipeline allocated; released fetches' buffers are reused first. */
  rungBuffers: number;
}

export interface EmulatedPipelineResult extends PipelineResult {
  trace: { seq: number; stream: string; kind: string; fetch: number; bytes: number; start: number; end: number }[];
  model: { emulated: true; linkBandwidth: number; copyLatency: number; decodeBandwidth: number };
}

/** A compressed matrix made ready for the fused product; keeps its stream's buffers alive. */
export interface RawFusedMatrix {
  readonly handle: unknown;
  /** Bytes one full product reads: rate bytes, escapes and the words of rungs 0..k. */
  readonly bytes: number;
  readonly rows: number;
  readonly cols: number;
  readonly k: number;
  /** Bytes it holds in memory: the stream buffers it keeps alive and its row index (set by offload's fusedMatrix). */
  readonly heldBytes?: number;
}

/**
 * A rung held as symbols of 8 or 4 bits: every weight ±f32(n)·eb as the codec reconstructs it, from
 * the symbol and the rung's dropped planes, or a patch kept aside with its f32 value. Owns its
 * arrays (native memory).
 */
export interface RawSymbolMatrix {
  readonly symbols: unknown;
  /** Bytes it holds, and one product reads: the symbols, the row index and the patches. */
  readonly bytes: number;
  readonly rows: number;
  readonly cols: number;
  readonly patches: number;
  /** Bits a symbol: 8, or 4 where the rung is coarse enough. */
  readonly bits: 4 | 8;
  /** Whether its products quantize the activations to 8 bits (the integer product). */
  readonly int8Activations: boolean;
}

/** A matrix the CPU engine multiplies: dense f32, dense bf16 bits (rows of whole 32-value blocks), int8 symbols, or a fused one. */
export type RawMatrix = Float32Array | Uint16Array | RawFusedMatrix | RawSymbolMatrix;

export interface CudaProbe {
  built: boolean;
  available: boolean;
  devices?: number;
  runtimeVersion?: number;
  driverVersion?: number;
  error?: string;
}

export interface RawInfo {
  version: number;
  dtype: number;
  mode: number;
  count: number;
  eb: number;
  boundMode: number;
  boundParam: number;
  escapes: number;
  headBytes: number;
  payloadBytes: number;
  availableRungs: number;
  rungs: { droppedPlanes: number; bound: number; offset: number; bytes: number; crc32c: number }[];
  rateHistogram: number[];
  symbolStats?: import('./types.js').SymbolStats;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const addonPath = path.resolve(here, '..', '..', 'build', 'Release', 'ebserve_native.node');

function load(): NativeCodec {
  try {
    return createRequire(import.meta.url)(addonPath) as NativeCodec;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(`the native codec is not built (${addonPath}): run \`make\` first (${why})`);
  }
}

/** The loaded addon. */
export const native: NativeCodec = load();
