/**
 * The expert store held on disk (the disk tier): the store file's index in memory, the experts'
 * bytes on the disk, and a host tier (host-tier.ts) holding what fits of them within its budget.
 * The fetcher asks toHost before a move — the levels host memory lacks are read then, with
 * direct I/O — and partsToMove cuts the move's parts from that host copy, as the in-memory store
 * cuts them from its own buffers. Everything else a store answers (shapes, level sizes, bounds)
 * comes from the index.
 *
 * @example
 * const store = DiskExpertStore.open(file, { checkpointHash, ladder }, { budgetBytes: 4e9, telemetry });
 * // new OffloadExpertEngine({ store, ... }) — as with an in-memory store
 */
import { DirectFile } from './direct-file.js';
import type { EvictionPolicyName } from './eviction.js';
import { HostTier, type HeldExpert } from './host-tier.js';
import { MATRICES, type MatrixName } from './source.js';
import { StoreFileReader, type StoreKey } from './store-reader.js';
import { ExpertStore, type HostCopy, type MatrixInfo, type StoredExpert } from './store.js';
import type { TelemetrySink } from './telemetry.js';

export interface DiskStoreOptions {
  /** Host memory for experts' levels read from the disk, bytes. */
  budgetBytes: number;
  policy?: EvictionPolicyName;
  telemetry?: TelemetrySink;
}

export class DiskExpertStore extends ExpertStore {
  private constructor(
    readonly reader: StoreFileReader,
    readonly file: DirectFile,
    readonly host: HostTier,
  ) {
    super(reader.ladder, reader.numLayers, reader.numExperts, reader.checkpointHash, []);
  }

  /** Opens a store file (its index checked against `expect`; throws StoreCacheError) for reads through a host tier. */
  static open(path: string, expect: StoreKey, opts: DiskStoreOptions): DiskExpertStore {
    const reader = StoreFileReader.open(path, expect);
    let file: DirectFile;
    try {
      file = DirectFile.open(path);
    } catch (e) {
      reader.close();
      throw e;
    }
    return new DiskExpertStore(reader, file, new HostTier({ reader, file, budgetBytes: opts.budgetBytes, policy: opts.policy, telemetry: opts.telemetry }));
  }

  /** One line for logs: the file, how it is read, and the host budget. */
  describe(): string {
    return `${this.reader.file} (${(this.reader.size / 1e9).toFixed(2)} GB) on disk, read ${this.file.direct ? 'with direct I/O (O_DIRECT)' : 'through the page cache, each range dropped after its read (this file system refuses O_DIRECT)'} into a host budget of ${(this.host.tier.budgetBytes / 1e9).toFixed(2)} GB`;
  }

  override matrixInfo(layer: number, expert: number): Record<MatrixName, MatrixInfo> {
    const e = this.reader.entryOf(layer, expert);
    return Object.fromEntries(MATRICES.map((m) => [m, { dtype: e.matrices[m].dtype, shape: e.matrices[m].shape, bounds: e.matrices[m].bounds }])) as Record<MatrixName, MatrixInfo>;
  }

  override toHost(layer: number, expert: number, level: number, prefetch = false): Promise<HostCopy> {
    return this.host.bring(layer, expert, level, prefetch);
  }

  /** Cut from the host copy toHost gave (required: the bytes are not in this process otherwise). */
  override partsToMove(layer: number, expert: number, held: number, level: number, onHost?: HostCopy): Record<MatrixName, Buffer[]> {
    if (!onHost) throw new Error(`layer ${layer} expert ${expert}: the store is on disk (${this.reader.file}); bring the expert to host memory with toHost first`);
    return this.host.cut(onHost as HeldExpert, held, level);
  }

  override levelBytes(layer: number, expert: number, level: number): number {
    const e = this.reader.entryOf(layer, expert);
    let sum = 0;
    for (const m of MATRICES) {
      const x = e.matrices[m];
      if (level === this.exact) sum += x.exact![1];
      else sum += x.head[1] + x.rungs.slice(0, level + 1).reduce((n, r) => n + r[1], 0);
    }
    return sum;
  }

  /** Host memory the store holds now: the host tier's experts (the index aside). */
  override totalBytes(): number {
    return this.host.tier.used;
  }

  override expert(layer: number, expert: number): StoredExpert {
    throw new Error(`layer ${layer} expert ${expert}: the store is on disk (${this.reader.file}); its bytes are read through the host tier`);
  }

  override entries(): StoredExpert[][] {
    throw new Error(`the store is on disk (${this.reader.file}): it is already its file`);
  }

  close(): void {
    this.reader.close();
    this.file.close();
  }
}
