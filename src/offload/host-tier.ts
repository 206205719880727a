/**
 * The disk tier's host side: what host memory holds of an expert store that does not fit in it.
 * Per expert it keeps the levels read so far — codec rungs 0..k with their heads, and the exact
 * bytes — within a byte budget (LRU or LFU over experts, as the device tiers); everything else is
 * read from the store file when asked for: one direct read of the aligned range holding just the
 * missing levels (DirectFile, around the page cache, so the budget is the memory used and a read
 * times the disk), checked against the levels' CRC-32Cs, then kept.
 *
 * Every read is a `read` sample on the telemetry (the disk hop, measured, never emulated); the
 * host → device hop stays the link's `transfer` samples. The budget counts the bytes read
 * (aligned ranges, padding included): the memory actually held.
 *
 * @example
 * const host = new HostTier({ reader: StoreFileReader.open(file), file: DirectFile.open(file), budgetBytes: 2e9 });
 * const parts = await host.partsToMove(3, 17, -1, 2);   // what ExpertStore.partsToMove gives from memory
 */
import type { DirectFile } from './direct-file.js';
import { evictionPolicy, type EvictionPolicyName } from './eviction.js';
import { MATRICES, type MatrixName } from './source.js';
import type { StoreFileReader } from './store-reader.js';
import { NO_TELEMETRY, type TelemetrySink } from './telemetry.js';
import { Tier } from './tier.js';

type Parts = Record<MatrixName, Buffer[]>;

/** What host memory holds of one expert. */
export interface HeldExpert {
  /** Codec rungs 0..held (−1: none), per matrix [head, rung 0, …, rung held]. */
  held: number;
  codec: Parts;
  exact?: Record<MatrixName, Buffer>;
  /** Bytes read for it (what the budget counts). */
  bytes: number;
}

export interface HostTierOptions {
  reader: StoreFileReader;
  /** The same store file, opened for direct reads. */
  file: DirectFile;
  budgetBytes: number;
  policy?: EvictionPolicyName;
  telemetry?: TelemetrySink;
}

export interface HostTierStats {
  hits: number;
  misses: number;
  reads: number;
  bytesRead: number;
  readSeconds: number;
}

const noParts = (): Parts => ({ gate: [], up: [], down: [] });

export class HostTier {
  readonly tier: Tier<number, HeldExpert>;
  readonly stats: HostTierStats = { hits: 0, misses: 0, reads: 0, bytesRead: 0, readSeconds: 0 };
  private readonly reader: StoreFileReader;
  private readonly file: DirectFile;
  private readonly telemetry: TelemetrySink;
  private readonly inflight = new Map<number, Promise<unknown>>();

  constructor(opts: HostTierOptions) {
    this.reader = opts.reader;
    this.file = opts.file;
    this.telemetry = opts.telemetry ?? NO_TELEMETRY;
    this.tier = new Tier('host', opts.budgetBytes, evictionPolicy<number>(opts.policy ?? 'lru'));
  }

  /**
   * The parts that bring expert (layer, expert) to `level` on a device holding its rungs 0..held
   * (held −1: nothing): ExpertStore.partsToMove's answer, from host memory or, for what is not
   * there, from the disk.
   */
  async partsToMove(layer: number, expert: number, held: number, level: number, prefetch = false): Promise<Parts> {
    return this.cut(await this.bring(layer, expert, level, prefetch), held, level);
  }

  /**
   * Expert (layer, expert)'s levels up to `level` in host memory (all of 0..level, or the exact
   * bytes): what was held, with the missing levels read from the disk. The copy stays valid
   * after the expert leaves the budget (a budget too small to keep it still serves it once).
   * Concurrent asks for one expert share its reads.
   */
  async bring(layer: number, expert: number, level: number, prefetch = false): Promise<HeldExpert> {
    const key = layer * this.reader.numExperts + expert;
    for (;;) {
      const pending = this.inflight.get(key);
      if (!pending) break;
      await pending.catch(() => {});
    }
    const exact = level === this.reader.exact;
    const have = this.tier.get(key);
    if (have && (exact ? have.exact : have.held >= level)) {
      this.stats.hits++;
      return have;
    }
    this.stats.misses++;
    const p = this.read(key, layer, expert, level, have, prefetch);
    this.inflight.set(key, p);
    try {
      return await p;
    } finally {
      this.inflight.delete(key);
    }
  }

  /** Reads the levels `have` lacks up to `level` (one aligned read), checks them and keeps them within the budget. */
  private async read(key: number, layer: number, expert: number, level: number, have: HeldExpert | undefined, prefetch: boolean): Promise<HeldExpert> {
    const exact = level === this.reader.exact;
    const from = exact ? -1 : (have?.held ?? -1);
    const range = this.reader.readRange(layer, expert, level, from);
    const r = await this.file.read(range.offset, range.length);
    const parts = this.reader.partsFromRead(layer, expert, level, from, r.bytes); // a StoreChecksumError names the expert and offset
    this.stats.reads++;
    this.stats.bytesRead += r.bytesRead;
    this.stats.readSeconds += r.seconds;
    this.telemetry.emit({
      kind: 'read', at: performance.now() / 1000, layer, expert, rung: level, fromRung: exact ? level : from + 1,
      bytes: r.bytesRead, seconds: r.seconds, direct: this.file.direct, prefetch,
    });
    const next: HeldExpert = have ? { ...have, codec: { ...have.codec } } : { held: -1, codec: noParts(), bytes: 0 };
    if (exact) next.exact = Object.fromEntries(MATRICES.map((m) => [m, parts[m][0]])) as Record<MatrixName, Buffer>;
    else {
      for (const m of MATRICES) next.codec[m] = [...next.codec[m], ...parts[m]];
      next.held = level;
    }
    next.bytes += r.bytesRead;
    // Kept when the budget allows (evicting others); otherwise served once and dropped.
    this.tier.remove(key);
    if (this.tier.reserve(next.bytes)) this.tier.set(key, next, next.bytes);
    return next;
  }

  /** The parts of `e` that bring a device holding rungs 0..held to `level` (which `e` must cover). */
  cut(e: HeldExpert, held: number, level: number): Parts {
    const covered = level === this.reader.exact ? Boolean(e.exact) : e.held >= level;
    if (!covered) throw new RangeError(`host copy holds rungs 0..${e.held}${e.exact ? ' and the exact level' : ''}, not level ${level}`);
    const out = noParts();
    for (const m of MATRICES) {
      if (level === this.reader.exact) out[m].push(e.exact![m]);
      else out[m].push(...(held < 0 ? [e.codec[m][0]] : []), ...e.codec[m].slice(held + 2, level + 2)); // [head, rung 0, …]
    }
    return out;
  }
}
