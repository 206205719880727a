/** Element types a stream's source may have, and a decode may produce. */
export type DType = 'f32' | 'f16' | 'bf16';
/** How a bound is read: absolute, relative to the value range (max − min), or relative to σ. */
export type BoundMode = 'abs' | 'rel' | 'sigma';

/**
 * How the quantized values are written: `fixed`, 32-value blocks of fixed-length bit-planes (the
 * GPU's and the fused product's format); `entropy`, the same values through 32-lane interleaved
 * rANS (near the symbols' entropy: 5.93× vs 5.09× on N(0, 0.02) f32 at eb 1e-3; CPU decode only).
 */
export type Coder = 'fixed' | 'entropy';

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];
/** Coders by the stream header's mode code (0, 1). */
export const CODERS: readonly Coder[] = ['fixed', 'entropy'];
export const BOUND_MODES: readonly BoundMode[] = ['abs', 'rel', 'sigma'];

/** Bytes per element of a dtype. */
export function dtypeBytes(d: DType): number {
  return d === 'f32' ? 4 : 2;
}

/** What a tensor can be handed in as: f32 values, f16/bf16 bit patterns, or raw little-endian bytes. */
export type Values = Float32Array | Uint16Array | Uint8Array;

export interface CompressOptions {
  /** The source's element type; default f32 for Float32Array and raw bytes. Required for Uint16Array. */
  dtype?: DType;
  /** The error bound, read as `boundMode` says. */
  bound: number;
  boundMode?: BoundMode;
  /** Threads for this call (default: 1 for sync calls, every core for async ones). */
  threads?: number;
  /** The coder (default 'fixed'). */
  coder?: Coder;
}

export interface LadderOptions extends Omit<CompressOptions, 'bound'> {
  /**
   * Rung bounds, loosest first, each a power of two times the finest (the last): rungs 0..k of the
   * stream then decode within bounds[k]. See `ladderBounds`.
   */
  bounds: number[];
}

export interface DecompressOptions {
  /** Output element type; default f32. */
  outDtype?: DType;
  /** Write here instead of allocating (a Float32Array for f32, Uint16Array for f16/bf16, or bytes). */
  out?: Float32Array | Uint16Array | Uint8Array;
  /** Decode rungs 0..rung (default: every rung given). */
  rung?: number;
  /** Check the header's and rungs' CRC-32C (default true; a hot path that made the stream may skip). */
  verify?: boolean;
  threads?: number;
}

/** A stream's header, its rung table and how its blocks' rates are spread. */
export interface StreamInfo {
  version: number;
  dtype: DType;
  /** The coder that wrote the stream (header mode 0 fixed, 1 entropy). */
  mode: Coder;
  count: number;
  /** The finest absolute bound, an f32 value (the largest not above the bound asked for). */
  eb: number;
  boundMode: BoundMode;
  boundParam: number;
  escapes: number;
  headBytes: number;
  payloadBytes: number;
  totalBytes: number;
  /** Compressed size against the source's bytes (count × dtype size), every rung included. */
  ratio: number;
  availableRungs: number;
  rungs: RungInfo[];
  /** rateHistogram[r] = blocks of rate r (bits per magnitude); empty for entropy-coded streams. */
  rateHistogram: number[];
  /** Entropy-coded streams: the symbols the lanes code and where rung 0's bytes go. */
  symbolStats?: SymbolStats;
}

/** An entropy-coded stream's symbols: byte symbols (u << 1 | sign), u = |q| >> codedShift. */
export interface SymbolStats {
  /** Length of the frequency table (symbols 0..symbols-1). */
  symbols: number;
  /** Bit-planes below the coded part stored raw in rung 0 (wide distributions). */
  rawPlanes: number;
  codedShift: number;
  /** Entropy of the (normalized) frequency table itself, bits per symbol; the lanes' real cost is codedBytes. */
  tableBits: number;
  /** Bytes of lane states and words; of raw planes in rung 0; of descriptor, tables. */
  codedBytes: number;
  rawBytes: number;
  tableBytes: number;
  /** The frequency table, in 1/4096. */
  frequencies: number[];
}

export interface RungInfo {
  droppedPlanes: number;
  /** The absolute bound rungs 0..this one decode within. */
  bound: number;
  offset: number;
  bytes: number;
  /** Bytes of rungs 0..this one together with the header: what decoding at this rung costs. */
  cumulativeBytes: number;
  crc32c: number;
}
