/**
 * The device cache and the fetch path that fills it: bring expert (layer, e) to a level.
 *
 *   tier A hit at that level or tighter ───────────────────────────────────────────► handle
 *   miss: tier B (compressed rungs on the device) ─ missing rungs ─link─► device
 *         ─ decompress (the decode stream, from the moment the move lands) ─► tier A insert ─► handle
 *
 * Tier A holds decoded experts (the memory the engine computes from, as the fetcher's `form` says:
 * tfjs tensors, f32 arrays the CPU engine multiplies in the addon, or — `fused` — the bytes that
 * crossed, multiplied in place: codec rungs indexed for the CPU engine's fused product, which
 * decodes each block inside the dot product, and a bf16 checkpoint's exact bytes for its bf16
 * product; no decode at all, and an entry costs the bytes that crossed), tier B the
 * compressed rungs that crossed the link, so a tier-A eviction or a tightened plan costs only a
 * decompression and the missing residual rungs, not the whole expert again. Each tier has its
 * own byte budget, never exceeded, and an eviction policy (LRU default, LFU). Concurrent requests
 * for one expert share one load. An entry in use by a computation is pinned; when nothing can be
 * evicted the request is served by a transient copy that is freed on release (counted).
 */
import { decodeOnStream } from '../codec/index.js';
import { fusedIndexBytes, fusedMatrix, isSymbolMatrix, matrixHeldBytes, symbolMatrix, type NativeExpert } from './cpu-engine.js';
import { disposeSwiglu, swigluTensors, type ExpertMatrices, type SwigluTensors } from './expert-engine.js';
import { evictionPolicy, type EvictionPolicyName } from './eviction.js';
import type { DeviceMemory } from './device-memory.js';
import type { Link } from './link.js';
import { MATRICES, type MatrixName } from './source.js';
import type { ExpertStore } from './store.js';
import { NO_TELEMETRY, type TelemetrySink } from './telemetry.js';
import { Tier } from './tier.js';

/**
 * Values below which a matrix decodes on the decode stream's thread alone: the codec starts its
 * helper threads per call (~50 µs), longer than such a decode takes, and the other core computes.
 */
const ONE_THREAD_VALUES = 1 << 20;

/** Spare f32 matrices kept for misses to decode into (a few experts' worth). */
const SPARE_BUFFERS = 24;

export interface DeviceBudget {
  /** Decoded experts (f32 values the engine computes from). */
  tierABytes: number;
  /** Compressed rungs kept on the device. */
  tierBBytes: number;
  /** Tier A's bytes per layer (they add up to at most tierABytes); absent: one budget shared by every layer. */
  tierALayerBytes?: number[];
}

/**
 * A device budget from what a profile says: a byte budget split between the tiers
 * (`tierBFraction` of it for compressed rungs, default 0.25), or a count of decoded experts per
 * layer (tier A = count × layers × one decoded expert) plus `tierBBytes` (default 0). With
 * `expertsByLayer` (tier A's size per layer, in experts) tier A is split into one share per layer:
 * the byte budget's tier A in those proportions, or, without a byte budget, exactly that many
 * decoded experts of each layer.
 */
export function deviceBudget(
  spec: { deviceMemoryBudgetBytes?: number; expertsPerLayer?: number; expertsByLayer?: number[]; tierBFraction?: number; tierBBytes?: number },
  store: { numLayers: number; expertValues(layer: number, expert: number): number },
): DeviceBudget {
  const decoded = store.expertValues(0, 0) * 4;
  const byLayer = spec.expertsByLayer;
  if (byLayer !== undefined) {
    if (spec.expertsPerLayer !== undefined) throw new RangeError('give experts per layer or experts by layer, not both');
    if (byLayer.length !== store.numLayers || !byLayer.every((n) => Number.isInteger(n) && n >= 1)) {
      throw new RangeError(`experts by layer must be ${store.numLayers} whole numbers ≥ 1 (one per layer), got [${byLayer.join(', ')}]`);
    }
  }
  if (spec.expertsPerLayer !== undefined || (byLayer !== undefined && spec.deviceMemoryBudgetBytes === undefined)) {
    if (byLayer !== undefined) {
      const tierALayerBytes = byLayer.map((n) => n * decoded);
      return { tierABytes: tierALayerBytes.reduce((a, b) => a + b, 0), tierBBytes: spec.tierBBytes ?? 0, tierALayerBytes };
    }
    if (!(Number.isInteger(spec.expertsPerLayer) && spec.expertsPerLayer! >= 1)) throw new RangeError(`experts per layer must be a whole number ≥ 1, got ${spec.expertsPerLayer}`);
    return { tierABytes: spec.expertsPerLayer! * store.numLayers * decoded, tierBBytes: spec.tierBBytes ?? 0 };
  }
  const total = spec.deviceMemoryBudgetBytes;
  if (total === undefined || !(total > 0) || !Number.isFinite(total)) throw new RangeError(`a device budget needs device memory budget bytes > 0 or experts per layer, got ${total}`);
  const f = spec.tierBFraction ?? 0.25;
  if (!(f >= 0 && f < 1)) throw new RangeError(`tier B fraction must be in [0, 1), got ${f}`);
  const tierABytes = Math.floor(total * (1 - f));
  if (byLayer === undefined) return { tierABytes, tierBBytes: Math.floor(total * f) };
  const sum = byLayer.reduce((a, b) => a + b, 0);
  return { tierABytes, tierBBytes: Math.floor(total * f), tierALayerBytes: byLayer.map((n) => Math.floor((tierABytes * n) / sum)) };
}

/**
 * What tier A holds for an expert: tfjs tensors (the tfjs engine), its f32 matrices as they were
 * decoded (the CPU engine reads them in place, nothing is copied into tfjs), or what crossed the
 * link, multiplied in place: compressed rungs prepared for the CPU engine's fused product, and at
 * the exact level a bf16 checkpoint's own bits (other dtypes decode to f32). 'symbols' is the
 * fused form with each codec level's matrices held as symbols, 4 bits a value where they fit and
 * 8 where they fit that (the same weights, no decode in the product), the rungs kept where neither does.
 */
export type DecodedForm = 'tfjs' | 'f32' | 'fused' | 'symbols';
/** The forms a CPU-engine tier A can take (OffloadEngineOptions.tierAForm). */
export type TierAForm = Exclude<DecodedForm, 'tfjs'>;
export type DecodedWeights = SwigluTensors | ExpertMatrices | NativeExpert;

/** The tensors of a tfjs-form expert (throws for an f32-form one: a wiring mistake). */
export function tensorsOf(w: DecodedWeights): SwigluTensors {
  if (!('gateT' in w)) throw new Error('this expert was decoded for the CPU engine, not as tfjs tensors');
  return w;
}

/** The matrices of an f32-form expert. */
export function matricesOf(w: DecodedWeights): ExpertMatrices {
  if (!('gate' in w) || !(w.gate instanceof Float32Array)) throw new Error('this expert is not held as f32 matrices');
  return w as ExpertMatrices;
}

/** The matrices of an f32- or fused-form expert as the CPU engine takes them. */
export function nativeMatricesOf(w: DecodedWeights): NativeExpert {
  if (!('gate' in w)) throw new Error('this expert was decoded as tfjs tensors, not for the CPU engine');
  return w;
}


/** An expert's compressed parts on the device: codec rungs 0..held (and/or its exact bytes). */
interface DeviceParts {
  held: number;
  parts: Record<MatrixName, { head?: Uint8Array; rungs: Uint8Array[]; exact?: Uint8Array }>;
  bytes: number;
}

interface Decoded {
  level: number;
  weights: DecodedWeights;
  /** Users holding a handle; a transient entry is freed when the last lets go. */
  users: number;
  transient: boolean;
  /** Bytes it holds in tier A. */
  bytes: number;
  /** The device buffers it is multiplied from in place (released when it is freed). */
  device?: Uint8Array[];
  /** When its transfer and its decompression finished (performance.now() ms; 0 = none needed). */
  transferDoneAt: number;
  decodedAt: number;
}

/** An expert ready to compute with. Call release() when done (it may be evicted afterwards). */
export interface ExpertHandle {
  readonly weights: DecodedWeights;
  readonly level: number;
  readonly transferDoneAt: number;
  readonly decodedAt: number;
  release(): void;
}

export interface FetchStats {
  aHits: number;
  aMisses: number;
  bHits: number;
  bMisses: number;
  transfers: number;
  bytesMoved: number;
  decompressions: number;
  /** Requests served by a copy that did not fit in tier A. */
  transient: number;
}

export interface FetcherOptions {
  store: ExpertStore;
  link: Link;
  budget: DeviceBudget;
  policy?: EvictionPolicyName;
  telemetry?: TelemetrySink;
  /**
   * Hand out exactly the level asked for. By default a decoded expert held at a tighter level
   * serves a looser request (it costs nothing and is more accurate), so serving is at least as
   * precise as the plan; canaries and profiling set this to measure the plan itself.
   */
  strictLevels?: boolean;
  /** What tier A holds (default tfjs tensors). */
  form?: DecodedForm;
  /** With the symbol form: its products quantize the activations to 8 bits (the integer product). */
  int8Activations?: boolean;
}

export class ExpertFetcher {
  readonly store: ExpertStore;
  readonly link: Link;
  readonly tierA: Tier<number, Decoded>;
  readonly tierB: Tier<number, DeviceParts>;
  readonly stats: FetchStats = { aHits: 0, aMisses: 0, bHits: 0, bMisses: 0, transfers: 0, bytesMoved: 0, decompressions: 0, transient: 0 };
  /** Bytes of one decoded expert (f32), the same for every expert of a checkpoint. */
  readonly decodedBytes: number;
  private readonly inflight = new Map<number, Promise<unknown>>();
  /** The link's device memory: buffers go back to it when their last holder lets go. */
  private readonly memory?: DeviceMemory;
  /** Matrices of freed f32 experts (d × ff values each), reused by the next misses. */
  private readonly spare: Float32Array[] = [];
  private readonly telemetry: TelemetrySink;
  private readonly d: number;
  private readonly ff: number;
  private closed = false;
  private readonly strict: boolean;
  readonly form: DecodedForm;
  readonly int8Activations: boolean;
  /** [level]: the bytes the last expert made at that level held (the symbol form: 4 or 8 bits a value, or rungs). */
  private readonly symbolsHeld: number[] = [];

  constructor(opts: FetcherOptions) {
    this.store = opts.store;
    this.link = opts.link;
    this.memory = opts.link.memory;
    this.telemetry = opts.telemetry ?? NO_TELEMETRY;
    this.strict = opts.strictLevels ?? false;
    this.form = opts.form ?? 'tfjs';
    this.int8Activations = opts.int8Activations ?? false;
    if (this.int8Activations && this.form !== 'symbols') throw new RangeError(`8-bit activations are the symbol form's integer product; tier A's form is ${this.form}`);
    const policy = opts.policy ?? 'lru';
    // Per-layer shares of tier A, when the budget has them: keys are layer · experts + expert.
    const layerBytes = opts.budget.tierALayerBytes;
    if (layerBytes && layerBytes.length !== this.store.numLayers) throw new RangeError(`tier A has ${layerBytes.length} layer shares for a store of ${this.store.numLayers} layers`);
    const shares = layerBytes && { of: (key: number) => Math.floor(key / this.store.numExperts), budgets: layerBytes };
    this.tierA = new Tier('A', opts.budget.tierABytes, evictionPolicy<number>(policy), (_k, v) => this.dropDecoded(v), shares);
    this.tierB = new Tier('B', opts.budget.tierBBytes, evictionPolicy<number>(policy), (_k, v) => this.memory?.release(partsBuffers(v)));
    [this.ff, this.d] = this.store.matrixInfo(0, 0).gate.shape;
    this.decodedBytes = this.store.expertValues(0, 0) * 4;
    if (this.inPlace && (this.d % 32 || this.ff % 32)) throw new RangeError(`the ${this.form} form needs rows of whole 32-value blocks; this model's experts are ${this.ff}×${this.d}`);
  }

  /**
   * [level]: the bytes one expert of `layer` holds in tier A at each level (its mean over the
   * layer's experts): what the bytes that crossed hold in the fused form — codec rungs with their
   * row indexes, and the exact bf16 bytes where they are multiplied in place — in the symbol form
   * what the last expert made at that level held (4 or 8 bits a value, or its rungs where neither
   * fitted; a byte a value until one is made), and a decoded f32 expert otherwise.
   */
  heldBytesByLevel(layer: number): number[] {
    const moved = this.store.layerLevelBytes(layer);
    if (!this.inPlace) return moved.map(() => this.decodedBytes);
    const inPlace = this.exactInPlace(layer, 0);
    const rows = 2 * this.ff + this.d; // gate and up [ff, d], down [d, ff]
    // A level not yet made as symbols: a byte a value and each matrix's row index.
    const symbols = this.decodedBytes / 4 + 4 * (rows + 3);
    return moved.map((b, k) =>
      k === this.store.exact ? (inPlace ? b : this.decodedBytes) : this.form === 'symbols' ? (this.symbolsHeld[k] ?? symbols) : b + fusedIndexBytes(rows, k),
    );
  }

  /** Whether tier A multiplies what crossed in place (the fused and symbol forms). */
  private get inPlace(): boolean {
    return this.form === 'fused' || this.form === 'symbols';
  }

  /**
   * Whether an expert's exact level is multiplied in place, as the bytes that crossed: bf16 exact
   * bytes (the bf16 product widens them in registers, bit for bit as their f32 would be), at half
   * the bytes of f32 and no decode.
   */
  private exactInPlace(layer: number, expert: number): boolean {
    const stored = this.store.matrixInfo(layer, expert);
    return this.inPlace && this.store.exactIsOriginal && MATRICES.every((m) => stored[m].dtype === 'BF16' && stored[m].shape[1] % 32 === 0);
  }

  /** Brings expert (layer, expert) to `level` or tighter and pins it until the handle's release. */
  async acquire(layer: number, expert: number, level: number, prefetch = false): Promise<ExpertHandle> {
    if (this.closed) throw new Error('the expert fetcher is closed');
    const { numLayers, numExperts } = this.store;
    if (!(Number.isInteger(layer) && layer >= 0 && layer < numLayers)) throw new RangeError(`layer ${layer} is not one of the store's ${numLayers}`);
    // Keys are layer · experts + expert: an out-of-range expert would alias another layer's.
    if (!(Number.isInteger(expert) && expert >= 0 && expert < numExperts)) throw new RangeError(`expert ${expert} is not one of layer ${layer}'s ${numExperts}`);
    const key = layer * this.store.numExperts + expert;
    let loaded = false;
    for (;;) {
      const pending = this.inflight.get(key);
      if (pending) {
        await pending.catch(() => {});
        continue;
      }
      const a = this.tierA.get(key);
      if (a && (this.strict ? a.level === level : a.level >= level)) {
        if (!loaded) this.count(layer, 'A', 'hit', prefetch);
        this.tierA.pin(key);
        return this.handle(key, a);
      }
      this.count(layer, 'A', 'miss', prefetch);
      loaded = true;
      const p = this.load(key, layer, expert, level, prefetch);
      this.inflight.set(key, p);
      try {
        return await p;
      } finally {
        this.inflight.delete(key);
      }
    }
  }

  /** Frees every decoded expert; later acquires throw. */
  close(): void {
    this.closed = true;
    for (const k of this.tierA.keys()) {
      const d = this.tierA.remove(k)!;
      if (d.users === 0) this.free(d);
      else d.transient = true; // freed by the last release
    }
    for (const k of this.tierB.keys()) this.tierB.remove(k);
  }

  private async load(key: number, layer: number, expert: number, level: number, prefetch: boolean): Promise<ExpertHandle> {
    const exact = level === this.store.exact;
    // A move needs the expert in host memory: a store held on disk reads it there first (all its
    // levels up to `level`, so whatever tier B holds once the read is done, the rest is on the
    // host); one in memory has it already.
    const first = this.tierB.peek(key);
    const needsMove = exact ? !first?.parts.gate.exact : (first?.held ?? -1) < level;
    const reading = needsMove ? this.store.toHost(layer, expert, level, prefetch) : undefined;
    const readFrom = performance.now();
    const onHost = reading && (await reading);
    // What the move waited for the disk (a host hit: nothing), counted in its transfer sample, so
    // the controller plans on the time an expert takes to come from where it is.
    const diskSeconds = reading ? (performance.now() - readFrom) / 1000 : 0;
    const b = this.tierB.get(key);
    const held = b?.held ?? -1;
    const have = exact ? Boolean(b?.parts.gate.exact) : held >= level; // rungs 0..level decode from any longer run
    this.count(layer, 'B', have ? 'hit' : 'miss', prefetch);
    let parts = b ?? { held: -1, parts: { gate: { rungs: [] }, up: { rungs: [] }, down: { rungs: [] } }, bytes: 0 };
    let landed: Promise<void> = Promise.resolve();
    let landsAt: number | undefined;
    let matrixLandsAt: number[] | undefined;
    let moved: Uint8Array[] = [];
    if (!have) {
      const from = exact ? -1 : held;
      const toMove = this.store.partsToMove(layer, expert, from, level, onHost);
      // One move per matrix, back to back on the link: a matrix decodes as soon as it has landed,
      // while the next crosses, so only the last one's decode is left once the expert is over.
      const moves = MATRICES.map((m) => this.link.start(toMove[m]));
      moved = moves.flatMap((m) => m.device);
      parts = mergeParts(parts, toMove, moved, exact, level);
      matrixLandsAt = moves.map((m) => m.landsAt);
      landsAt = Math.max(...matrixLandsAt);
      const bytes = moves.reduce((n, m) => n + m.bytes, 0);
      const seconds = moves.reduce((n, m) => n + m.seconds, 0);
      // They land in order: the last one's landing is the expert's.
      landed = moves[moves.length - 1].landed.then(() => {
        this.stats.transfers++;
        this.stats.bytesMoved += bytes;
        this.telemetry.emit({
          kind: 'transfer', at: performance.now() / 1000, layer, expert, rung: level, fromRung: exact ? level : held + 1,
          bytes, seconds: seconds + diskSeconds, link: reading ? `disk+${this.link.name}` : this.link.name, emulated: this.link.emulated, prefetch,
        });
        const old = this.tierB.remove(key);
        if (this.tierB.reserve(parts.bytes)) {
          this.tierB.set(key, parts, parts.bytes);
          this.memory?.retain(partsBuffers(parts));
        }
        if (old) this.memory?.release(partsBuffers(old));
      });
    }
    // This load holds the device buffers it decodes from (tier B may evict them meanwhile); the
    // move's own hold on what it copied passes to the load.
    const hold = partsBuffers(parts);
    this.memory?.retain(hold);
    this.memory?.release(moved);
    // The codec's rungs decode on the decode stream, which starts when the move lands by itself;
    // exact bytes (and a baseline store's own formats) decode here once it has.
    let values: NativeExpert;
    let seconds: number;
    let device: Uint8Array[] | undefined;
    try {
      [{ values, seconds }] = await Promise.all([this.decode(parts, layer, expert, level, landed, matrixLandsAt), landed]);
      // Multiplied in place, the entry holds the device bytes it reads (taken before the load lets
      // go); f32 and symbol matrices hold their own copies.
      const inPlace = MATRICES.filter((m) => !(values[m] instanceof Float32Array) && !isSymbolMatrix(values[m]));
      if (inPlace.length) {
        device = inPlace.flatMap((m) => (exact ? [parts.parts[m].exact!] : [parts.parts[m].head!, ...parts.parts[m].rungs.slice(0, level + 1)]));
        this.memory?.retain(device);
      }
    } finally {
      this.memory?.release(hold);
    }
    const decodedAt = performance.now();
    const transferDoneAt = landsAt ?? 0; // 0: nothing crossed the link
    this.stats.decompressions++;
    this.telemetry.emit({
      kind: 'decompress', at: decodedAt / 1000, layer, expert, rung: level,
      bytes: exact ? MATRICES.reduce((s, m) => s + parts.parts[m].exact!.byteLength, 0) : partsBytes(parts, level),
      values: this.decodedBytes / 4, seconds,
    });
    const bytes = this.form === 'tfjs' ? this.decodedBytes : MATRICES.reduce((n, m) => n + matrixHeldBytes(values[m]), 0);
    const weights = this.form === 'tfjs' ? swigluTensors(values as ExpertMatrices, this.d, this.ff) : values;
    const decoded: Decoded = { level, weights, bytes, device, users: 0, transient: false, transferDoneAt, decodedAt };
    const old = this.tierA.peek(key);
    if ((old && this.tierA.pinned(key)) || !this.tierA.reserve(bytes - (old?.bytes ?? 0), key)) {
      decoded.transient = true;
      this.stats.transient++;
      return this.handle(key, decoded);
    }
    if (old) this.dropDecoded(this.tierA.remove(key)!);
    this.tierA.set(key, decoded, bytes);
    this.tierA.pin(key);
    return this.handle(key, decoded);
  }

  /**
   * Decodes an expert's parts once they have landed; `seconds` is the decode's own time. In the
   * fused form a codec level is not decoded: its rungs are indexed (a pass over the rate bytes,
   * one per 32 values, with the checksum checked) for the CPU engine's fused product.
   */
  private async decode(p: DeviceParts, layer: number, expert: number, level: number, landed: Promise<void>, landsAt?: number[]): Promise<{ values: NativeExpert; seconds: number }> {
    const stored = this.store.matrixInfo(layer, expert);
    if (level === this.store.exact) {
      await landed;
      const t = performance.now();
      const inPlace = this.exactInPlace(layer, expert);
      const [gate, up, down] = MATRICES.map((m) => (inPlace ? bf16View(p.parts[m].exact!) : this.store.decodeExact(stored[m], p.parts[m].exact!, this.spare.pop())));
      return { values: { gate, up, down }, seconds: (performance.now() - t) / 1000 };
    }
    if (this.inPlace) {
      await landed;
      const t = performance.now();
      const [gate, up, down] = MATRICES.map((m) => {
        const fused = fusedMatrix(p.parts[m].head!, stored[m].shape[0], stored[m].shape[1], { rungs: p.parts[m].rungs.slice(0, level + 1), k: level });
        return this.form === 'symbols' ? (symbolMatrix(fused, undefined, this.int8Activations) ?? fused) : fused;
      });
      // What this level holds: what heldBytesByLevel says of it from now on.
      if (this.form === 'symbols') this.symbolsHeld[level] = matrixHeldBytes(gate) + matrixHeldBytes(up) + matrixHeldBytes(down);
      return { values: { gate, up, down }, seconds: (performance.now() - t) / 1000 };
    }
    const count = stored.gate.shape[0] * stored.gate.shape[1];
    // Each matrix on the decode stream from the moment its own move lands.
    const runs = await Promise.all(
      MATRICES.map((m, i) =>
        decodeOnStream([{ head: p.parts[m].head!, rungs: p.parts[m].rungs.slice(0, level + 1) }], {
          startAt: landsAt?.[i], threads: count < ONE_THREAD_VALUES ? 1 : 0, into: [this.spare.pop()],
        }),
      ),
    );
    const [gate, up, down] = runs.map((r) => r.values[0]);
    return { values: { gate, up, down }, seconds: runs.reduce((n, r) => n + r.seconds, 0) };
  }

  private handle(key: number, d: Decoded): ExpertHandle {
    d.users++;
    let released = false;
    return {
      weights: d.weights,
      level: d.level,
      transferDoneAt: d.transferDoneAt,
      decodedAt: d.decodedAt,
      release: () => {
        if (released) return;
        released = true;
        d.users--;
        if (this.tierA.peek(key) === d) this.tierA.unpin(key);
        if (d.transient && d.users === 0) this.free(d);
      },
    };
  }

  /**
   * Frees an expert nobody holds: tfjs tensors are disposed; f32 matrices go back to the spare
   * buffers the next miss decodes into (a miss otherwise allocates — and the garbage collector
   * later frees — an expert's worth of f32, which cost more than the decode itself).
   */
  private free(d: Decoded): void {
    const w = d.weights;
    if (d.device) this.memory?.release(d.device);
    if ('gateT' in w) return disposeSwiglu(w);
    for (const m of MATRICES) {
      const a = w[m];
      if (a instanceof Float32Array && a.length === this.d * this.ff && this.spare.length < SPARE_BUFFERS) this.spare.push(a);
    }
  }

  private dropDecoded(d: Decoded): void {
    if (d.users === 0) this.free(d);
    else d.transient = true;
  }

  private count(layer: number, tier: 'A' | 'B', result: 'hit' | 'miss', prefetch: boolean): void {
    if (tier === 'A') result === 'hit' ? this.stats.aHits++ : this.stats.aMisses++;
    else result === 'hit' ? this.stats.bHits++ : this.stats.bMisses++;
    this.telemetry.emit({ kind: 'cache', at: performance.now() / 1000, layer, tier, result, prefetch });
  }
}

/** Every device buffer of an expert's parts. */
function partsBuffers(p: DeviceParts): Uint8Array[] {
  return MATRICES.flatMap((m) => {
    const x = p.parts[m];
    return [...(x.head ? [x.head] : []), ...x.rungs, ...(x.exact ? [x.exact] : [])];
  });
}

/** The bf16 bits in `bytes` (a view when aligned, else a copy). */
function bf16View(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
  return new Uint16Array(new Uint8Array(bytes).buffer);
}

/** The parts held after a move: what was held plus what arrived (in partsToMove's order). */
function mergeParts(old: DeviceParts, moved: Record<MatrixName, Buffer[]>, device: Uint8Array[], exact: boolean, level: number): DeviceParts {
  let i = 0;
  const parts = {} as DeviceParts['parts'];
  let bytes = 0;
  for (const m of MATRICES) {
    const o = old.parts[m];
    const x = { head: o.head, rungs: [...o.rungs], exact: o.exact };
    for (let j = 0; j < moved[m].length; j++) {
      const buf = device[i++];
      if (exact) x.exact = buf;
      else if (!x.head) x.head = buf;
      else x.rungs.push(buf);
    }
    bytes += (x.head?.byteLength ?? 0) + x.rungs.reduce((a, r) => a + r.byteLength, 0) + (x.exact?.byteLength ?? 0);
    parts[m] = x;
  }
  return { held: exact ? old.held : Math.max(old.held, level), parts, bytes };
}

function partsBytes(p: DeviceParts, level: number): number {
  return MATRICES.reduce((s, m) => s + (p.parts[m].head?.byteLength ?? 0) + p.parts[m].rungs.slice(0, level + 1).reduce((a, r) => a + r.byteLength, 0), 0);
}
