/**
 * Writes an expert store file (layout: store-format.ts) one expert at a time, so that a build
 * holds only the experts in flight: each appended expert becomes one aligned block on disk at
 * once, with its segments' CRC-32Cs kept for the index. `finish` writes the index and the
 * preamble and renames the temporary file into place — a reader never sees half a file.
 *
 * @example
 * const w = StoreFileWriter.create(file, { checkpoint, ladder, numLayers: 2, numExperts: 8 });
 * for (…) w.append(layer, expert, matrices);  w.finish();   // or w.abort() on failure
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { native } from '../codec/native.js';
import { ladderKey, type Ladder } from './plan.js';
import { MATRICES, type MatrixName } from './source.js';
import { ALIGN, alignUp, encodePreamble, type BlockRange, type ExpertEntry, type MatrixEntry, type SegmentEntry, type StoreIndex } from './store-format.js';
import type { StoredMatrix } from './store.js';

/** One matrix as appended: the stored form, its parts possibly views of larger buffers. */
export type MatrixParts = Pick<StoredMatrix, 'dtype' | 'shape' | 'bounds'> & { head: Uint8Array; rungs: Uint8Array[]; exact?: Uint8Array };

export interface StoreFileMeta {
  checkpoint: string;
  ladder: Ladder;
  numLayers: number;
  numExperts: number;
}

/** The store file could not be written (the disk, not the data): the caller may build in memory instead. */
export class StoreWriteError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreWriteError';
  }
}

export class StoreFileWriter {
  /** Where the next block goes (always a multiple of ALIGN). */
  private at = ALIGN;
  private readonly rows: ExpertEntry[][] = [];
  private closed = false;
  /** Bytes of blocks written so far, padding included. */
  bytesWritten = ALIGN;

  private constructor(
    readonly file: string,
    private readonly tmp: string,
    private readonly fd: number,
    private readonly meta: StoreFileMeta,
  ) {}

  /** Creates the folder and a temporary file beside `file`; throws StoreWriteError when it cannot. */
  static create(file: string, meta: StoreFileMeta): StoreFileWriter {
    const tmp = `${file}.${process.pid}.tmp`;
    let fd: number;
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fd = fs.openSync(tmp, 'w');
    } catch (e) {
      throw new StoreWriteError(`cannot create ${tmp}: ${(e as Error).message}`, { cause: e });
    }
    const w = new StoreFileWriter(file, tmp, fd, meta);
    w.write(Buffer.alloc(ALIGN), 0); // the preamble's place; finish() fills it
    return w;
  }

  /** Appends expert (layer, expert): the next one in layer-major order, every matrix with the ladder's rungs. */
  append(layer: number, expert: number, matrices: Record<MatrixName, MatrixParts>): void {
    if (this.closed) throw new Error(`${this.file}: append after finish or abort`);
    const { numLayers, numExperts, ladder } = this.meta;
    const want = this.rows.length === 0 ? [0, 0] : this.rows.at(-1)!.length < numExperts ? [this.rows.length - 1, this.rows.at(-1)!.length] : [this.rows.length, 0];
    if (layer !== want[0] || expert !== want[1] || layer >= numLayers) throw new RangeError(`${this.file}: expert (${layer}, ${expert}) appended, (${want[0]}, ${want[1]}) expected next`);
    const R = ladder.bounds.length;
    for (const m of MATRICES) {
      const s = matrices[m];
      if (s.rungs.length !== R) throw new RangeError(`layer ${layer} expert ${expert} ${m}: ${s.rungs.length} rungs, the ladder has ${R}`);
      if (Boolean(s.exact) !== ladder.exact) throw new RangeError(`layer ${layer} expert ${expert} ${m}: exact bytes ${s.exact ? 'given' : 'missing'}, the ladder ${ladder.exact ? 'has' : 'has no'} exact level`);
    }
    // The block, segment by segment (store-format.ts), into one buffer: one CRC per segment and
    // one write per expert. `put` copies a part in and says where it went.
    const used = MATRICES.reduce((sum, m) => sum + [matrices[m].head, ...matrices[m].rungs, ...(matrices[m].exact ? [matrices[m].exact] : [])].reduce((a, b) => a + b.byteLength, 0), 0);
    const block = Buffer.allocUnsafeSlow(alignUp(used)).fill(0, used); // the parts fill the rest
    let off = 0;
    const put = (p: Uint8Array): BlockRange => {
      block.set(p, off);
      off += p.byteLength;
      return [off - p.byteLength, p.byteLength];
    };
    const segs: SegmentEntry[] = [];
    const endSegment = () => segs.push({ end: off, crc32c: native.crc32c(block.subarray(segs.length ? segs.at(-1)!.end : 0, off)) });
    const entries = {} as Record<MatrixName, MatrixEntry>;
    for (const m of MATRICES) {
      const s = matrices[m];
      entries[m] = { dtype: s.dtype, shape: [...s.shape], bounds: [...s.bounds], head: put(s.head), rungs: [], exact: null };
    }
    for (let k = 0; k < R; k++) {
      for (const m of MATRICES) entries[m].rungs.push(put(matrices[m].rungs[k]));
      endSegment();
    }
    if (ladder.exact) {
      for (const m of MATRICES) entries[m].exact = put(matrices[m].exact!);
      endSegment();
    }
    this.write(block, this.at);
    if (expert === 0) this.rows.push([]);
    this.rows.at(-1)!.push({ offset: this.at, segments: segs, matrices: entries });
    this.at += block.byteLength;
    this.bytesWritten = this.at;
  }

  /** Writes the index and the preamble, and renames the file into place. Every expert must have been appended. */
  finish(): void {
    const { numLayers, numExperts, ladder, checkpoint } = this.meta;
    if (this.rows.length !== numLayers || this.rows.at(-1)!.length !== numExperts) {
      throw new RangeError(`${this.file}: finish after ${this.rows.length} layers (of ${numLayers}), the last with ${this.rows.at(-1)?.length ?? 0} experts (of ${numExperts})`);
    }
    const index: StoreIndex = { checkpoint, ladder: ladderKey(ladder), ladderSpec: ladder, numLayers, numExperts, alignment: ALIGN, experts: this.rows };
    const json = Buffer.from(JSON.stringify(index), 'utf8');
    this.write(json, this.at);
    this.write(encodePreamble({ indexOffset: this.at, indexLength: json.byteLength, indexSha256: createHash('sha256').update(json).digest() }), 0);
    this.bytesWritten = this.at + json.byteLength;
    this.closed = true;
    try {
      fs.closeSync(this.fd);
      fs.renameSync(this.tmp, this.file);
    } catch (e) {
      fs.rmSync(this.tmp, { force: true });
      throw new StoreWriteError(`cannot move ${this.tmp} into place: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Closes and removes the temporary file (after a failure); safe to call twice. */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      fs.closeSync(this.fd);
    } finally {
      fs.rmSync(this.tmp, { force: true });
    }
  }

  private write(b: Uint8Array, position: number): void {
    try {
      for (let done = 0; done < b.byteLength; ) done += fs.writeSync(this.fd, b, done, b.byteLength - done, position + done);
    } catch (e) {
      this.abort();
      throw new StoreWriteError(`cannot write ${this.tmp}: ${(e as Error).message}`, { cause: e });
    }
  }
}
