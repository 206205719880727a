/**
 * The codec's TypeScript face: error-bounded compression of expert weights.
 *
 * compress → a stream whose every value decodes within the bound; compressLadder → one stream of
 * rungs, where rungs 0..k decode within bounds[k]; decompress / decompressRungs → values; inspect
 * → header and rung table. The *Async variants run on libuv worker threads using every core, so a
 * large tensor never blocks the event loop; the sync ones use one thread unless told otherwise.
 * Layout and guarantees: FORMAT.md beside this file.
 *
 * @example
 * const stream = compress(weights, { bound: 1e-3 });
 * const back = decompress(stream) as Float32Array;   // |weights[i] − back[i]| ≤ 1e-3
 */
import { codecAwait, codecCall, CodecError } from './errors.js';
import { ladderCuts } from './ladder.js';
import { native } from './native.js';
import {
  BOUND_MODES,
  CODERS,
  DTYPES,
  dtypeBytes,
  type BoundMode,
  type Coder,
  type CompressOptions,
  type DecompressOptions,
  type DType,
  type LadderOptions,
  type StreamInfo,
  type Values,
} from './types.js';

export * from './types.js';
export { CodecError } from './errors.js';
export { ladderBounds, ladderCuts } from './ladder.js';

const ASYNC_THREADS = 0; // 0 = every core (the addon decides)

/** Compresses `values` within `opts.bound` into a one-rung stream. */
export function compress(values: Values, opts: CompressOptions): Buffer {
  const a = compressArgs(values, opts.dtype, opts.bound, opts.boundMode, [0], opts.coder);
  return codecCall(() => native.compressSync(values, a.dtype, opts.bound, a.mode, a.cuts, opts.threads ?? 1, a.coder));
}

/** As `compress`, on worker threads. */
export function compressAsync(values: Values, opts: CompressOptions): Promise<Buffer> {
  const a = compressArgs(values, opts.dtype, opts.bound, opts.boundMode, [0], opts.coder);
  return codecAwait(native.compressAsync(values, a.dtype, opts.bound, a.mode, a.cuts, opts.threads ?? ASYNC_THREADS, a.coder));
}

/** Compresses `values` as a precision ladder: rungs 0..k decode within opts.bounds[k]. */
export function compressLadder(values: Values, opts: LadderOptions): Buffer {
  const cuts = ladderCuts(opts.bounds);
  const finest = opts.bounds[opts.bounds.length - 1];
  const a = compressArgs(values, opts.dtype, finest, opts.boundMode, cuts, opts.coder);
  return codecCall(() => native.compressSync(values, a.dtype, finest, a.mode, a.cuts, opts.threads ?? 1, a.coder));
}

/** As `compressLadder`, on worker threads. */
export function compressLadderAsync(values: Values, opts: LadderOptions): Promise<Buffer> {
  const cuts = ladderCuts(opts.bounds);
  const finest = opts.bounds[opts.bounds.length - 1];
  const a = compressArgs(values, opts.dtype, finest, opts.boundMode, cuts, opts.coder);
  return codecAwait(native.compressAsync(values, a.dtype, finest, a.mode, a.cuts, opts.threads ?? ASYNC_THREADS, a.coder));
}

/** Decodes a whole stream (every rung, or rungs 0..opts.rung). */
export function decompress(stream: Uint8Array, opts: DecompressOptions = {}): Float32Array | Uint16Array {
  const a = decompressArgs(opts);
  const raw = codecCall(() =>
    native.decompressSync(stream, null, a.rung, a.outDtype, a.out, a.verify, opts.threads ?? 1),
  );
  return typed(raw, opts.outDtype ?? 'f32', opts.out);
}

/** As `decompress`, on worker threads. */
export async function decompressAsync(stream: Uint8Array, opts: DecompressOptions = {}): Promise<Float32Array | Uint16Array> {
  const a = decompressArgs(opts);
  const raw = await codecAwait(
    native.decompressAsync(stream, null, a.rung, a.outDtype, a.out, a.verify, opts.threads ?? ASYNC_THREADS),
  );
  return typed(raw, opts.outDtype ?? 'f32', opts.out);
}

/** A stream cut into its head (header + rung table) and rungs, as the offload store keeps them. */
export interface SplitStream {
  head: Buffer;
  rungs: Buffer[];
}

/** Cuts a stream into head and rungs (views into `stream`, no copy). Validates it first. */
export function splitRungs(stream: Buffer, verify = true): SplitStream {
  const info = inspect(stream, { verify });
  const payload = info.headBytes;
  return {
    head: stream.subarray(0, info.headBytes),
    rungs: info.rungs.map((r) => stream.subarray(payload + r.offset, payload + r.offset + r.bytes)),
  };
}

/** Decodes from a head and rungs 0..k given separately (k = rungs.length − 1 unless opts.rung). */
export function decompressRungs(head: Uint8Array, rungs: Uint8Array[], opts: DecompressOptions = {}): Float32Array | Uint16Array {
  const a = decompressArgs(opts);
  const raw = codecCall(() =>
    native.decompressSync(head, rungs, a.rung, a.outDtype, a.out, a.verify, opts.threads ?? 1),
  );
  return typed(raw, opts.outDtype ?? 'f32', opts.out);
}

/** As `decompressRungs`, on worker threads. */
export async function decompressRungsAsync(head: Uint8Array, rungs: Uint8Array[], opts: DecompressOptions = {}): Promise<Float32Array | Uint16Array> {
  const a = decompressArgs(opts);
  const raw = await codecAwait(
    native.decompressAsync(head, rungs, a.rung, a.outDtype, a.out, a.verify, opts.threads ?? ASYNC_THREADS),
  );
  return typed(raw, opts.outDtype ?? 'f32', opts.out);
}

/** A stream as the offload store keeps it: its head and the rungs to decode (every one given). */
export interface RungParts {
  head: Uint8Array;
  rungs: Uint8Array[];
}

export interface StreamDecode {
  /** Each part's values, f32. */
  values: Float32Array[];
  /** The decode's own time on the stream's thread. */
  seconds: number;
  /** How long the job waited past its start time behind earlier jobs. */
  waitedSeconds: number;
}

/**
 * Decodes streams to f32 on the addon's decode stream: one thread per process that starts each
 * job no earlier than `startAt` (a performance.now() time, such as when a copy lands) by itself,
 * without waiting for the event loop, jobs in order of their start times. Validates the streams'
 * structure when queued (a bad one rejects at once) but not their checksums: the offload store
 * verified them when it built or loaded them. `into[i]`, when given, is the Float32Array part i
 * decodes into (of exactly its values: a recycled buffer, so nothing is allocated).
 */
export function decodeOnStream(parts: RungParts[], opts: { startAt?: number; threads?: number; into?: (Float32Array | undefined)[] } = {}): Promise<StreamDecode> {
  const delay = opts.startAt === undefined ? 0 : opts.startAt - performance.now();
  try {
    return codecAwait(native.decodeStreamRun(parts, delay, opts.threads ?? 1, opts.into));
  } catch (e) {
    return codecAwait(Promise.reject(e));
  }
}

/** Validates a stream (checksums too unless verify: false) and describes it. */
export function inspect(stream: Uint8Array, opts: { verify?: boolean; rungs?: Uint8Array[] } = {}): StreamInfo {
  const raw = codecCall(() => native.inspect(stream, opts.rungs ?? null, opts.verify ?? true));
  const total = raw.headBytes + raw.payloadBytes;
  let cumulative = raw.headBytes;
  return {
    version: raw.version,
    dtype: DTYPES[raw.dtype],
    mode: CODERS[raw.mode],
    count: raw.count,
    eb: raw.eb,
    boundMode: BOUND_MODES[raw.boundMode],
    boundParam: raw.boundParam,
    escapes: raw.escapes,
    headBytes: raw.headBytes,
    payloadBytes: raw.payloadBytes,
    totalBytes: total,
    ratio: raw.count === 0 ? 0 : (raw.count * dtypeBytes(DTYPES[raw.dtype])) / total,
    availableRungs: raw.availableRungs,
    rungs: raw.rungs.map((r) => ({ ...r, cumulativeBytes: (cumulative += r.bytes) })),
    rateHistogram: raw.rateHistogram,
    ...(raw.symbolStats ? { symbolStats: raw.symbolStats } : {}),
  };
}

/** Bits per value of the quantized symbols at bound `eb`: the limit any coder of them meets. */
export function quantizedEntropyBits(values: Values, dtype: DType, eb: number): number {
  return codecCall(() => native.entropyBits(values, DTYPES.indexOf(dtype), eb));
}

function compressArgs(values: Values, dtype: DType | undefined, bound: number, mode: BoundMode | undefined, cuts: number[], coder: Coder | undefined) {
  const d = dtype ?? (values instanceof Uint16Array ? undefined : 'f32');
  if (d === undefined) throw new CodecError('BAD_DTYPE', 'a Uint16Array holds f16 or bf16 bits: say which with dtype');
  if (!DTYPES.includes(d)) throw new CodecError('BAD_DTYPE', `dtype must be one of ${DTYPES.join(', ')}, got ${String(d)}`);
  if (values instanceof Float32Array && d !== 'f32') {
    throw new CodecError('BAD_DTYPE', `a Float32Array holds f32 values, but dtype says ${d}`);
  }
  if (values instanceof Uint16Array && d === 'f32') {
    throw new CodecError('BAD_DTYPE', 'a Uint16Array cannot hold f32 values');
  }
  const m = mode ?? 'abs';
  if (!BOUND_MODES.includes(m)) throw new CodecError('BAD_BOUND_MODE', `bound mode must be one of ${BOUND_MODES.join(', ')}, got ${String(m)}`);
  if (typeof bound !== 'number' || !(bound > 0) || !Number.isFinite(bound)) {
    throw new CodecError('BAD_BOUND', `error bound must be a positive finite number, got ${String(bound)}`);
  }
  const c = coder ?? 'fixed';
  if (!CODERS.includes(c)) throw new CodecError('BAD_MODE', `coder must be one of ${CODERS.join(', ')}, got ${String(c)}`);
  return { dtype: DTYPES.indexOf(d), mode: BOUND_MODES.indexOf(m), cuts, coder: CODERS.indexOf(c) };
}

function decompressArgs(opts: DecompressOptions) {
  const outDtype = opts.outDtype ?? 'f32';
  if (!DTYPES.includes(outDtype)) throw new CodecError('BAD_DTYPE', `outDtype must be one of ${DTYPES.join(', ')}, got ${String(outDtype)}`);
  const out = opts.out;
  if (out instanceof Float32Array && outDtype !== 'f32') throw new CodecError('BAD_OUTPUT', `out is a Float32Array but outDtype is ${outDtype}`);
  if (out instanceof Uint16Array && outDtype === 'f32') throw new CodecError('BAD_OUTPUT', 'out is a Uint16Array but outDtype is f32');
  if (out && out.byteOffset % dtypeBytes(outDtype) !== 0) {
    throw new CodecError('BAD_OUTPUT', `out starts at byte ${out.byteOffset}, not aligned to ${outDtype} values`);
  }
  const rung = opts.rung ?? -1;
  if (!Number.isInteger(rung) || rung < -1) throw new CodecError('BAD_RUNGS', `rung must be a non-negative integer, got ${String(opts.rung)}`);
  return { outDtype: DTYPES.indexOf(outDtype), rung, out: opts.out ?? null, verify: opts.verify ?? true };
}

function typed(raw: ArrayBufferView | ArrayBuffer, dtype: DType, out: DecompressOptions['out']): Float32Array | Uint16Array {
  if (out instanceof Float32Array || out instanceof Uint16Array) return out;
  const v = raw instanceof ArrayBuffer ? new Uint8Array(raw) : raw;
  const n = v.byteLength / dtypeBytes(dtype);
  // Buffers from the addon start at offset 0 of their own ArrayBuffer, so the view is aligned.
  return dtype === 'f32' ? new Float32Array(v.buffer, v.byteOffset, n) : new Uint16Array(v.buffer, v.byteOffset, n);
}
