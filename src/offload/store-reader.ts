/**
 * Reads an expert store file (layout: store-format.ts) one expert at a time. Opening reads only
 * the preamble and the index, and checks them (magic, version, the index's sha256, the key it
 * was built for, and the geometry of every block and segment); reading an expert is one aligned
 * positioned read of the segments asked for, each checked against its CRC-32C. A mismatch is a
 * StoreChecksumError naming the layer, expert, level and file offset — never wrong weights.
 *
 * The disk tier reads with `readExpert` (the parts that bring an expert from the levels held to
 * a level: what ExpertStore.partsToMove gives from memory), or reads `readRange` itself (direct
 * I/O, off the event loop) and hands the bytes to `partsFromRead`; `loadExpert` reads a whole
 * block (every level) for a store loaded into memory.
 *
 * @example
 * const f = StoreFileReader.open(file, { checkpointHash, ladder });
 * const parts = f.readExpert(3, 17, 2);   // head + rungs 0..2 of gate, up, down: one read
 * f.close();
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';

import { DTYPE_BYTES } from '../codec/halfs-array.js';
import { native } from '../codec/native.js';
import { exactLevel, ladderKey, levelCount, type Ladder } from './plan.js';
import { MATRICES, type MatrixName } from './source.js';
import {
  ALIGN,
  alignDown,
  alignUp,
  FORMAT_VERSION,
  MAGIC,
  PREAMBLE_USED,
  StoreCacheError,
  StoreChecksumError,
  type BlockRange,
  type ExpertEntry,
  type StoreIndex,
} from './store-format.js';
import type { StoredExpert, StoredMatrix } from './store.js';

/** The largest index accepted (a 64-layer × 256-expert store's is ~20 MB). */
const MAX_INDEX_BYTES = 1 << 30;

/** What a reader may be asked to match: the checkpoint and ladder the caller wants a store for. */
export interface StoreKey {
  checkpointHash: string;
  ladder: Ladder;
}

/** An aligned byte range of the file: what one O_DIRECT read would fetch. */
export interface FileRange {
  offset: number;
  length: number;
}

export class StoreFileReader {
  readonly ladder: Ladder;
  readonly checkpointHash: string;
  readonly numLayers: number;
  readonly numExperts: number;
  /** Levels per expert (codec rungs, then the exact level when present), and the exact one's number (−1: none). */
  readonly levels: number;
  readonly exact: number;
  /** Bytes read from the file by readExpert / loadExpert so far (aligned reads, padding included). */
  bytesRead = 0;
  private fd: number | undefined;

  private constructor(
    readonly file: string,
    fd: number,
    readonly size: number,
    private readonly index: StoreIndex,
  ) {
    this.fd = fd;
    this.ladder = index.ladderSpec;
    this.checkpointHash = index.checkpoint;
    this.numLayers = index.numLayers;
    this.numExperts = index.numExperts;
    this.levels = levelCount(this.ladder);
    this.exact = exactLevel(this.ladder);
  }

  /**
   * Opens `file` and checks its preamble and index (and, given `expect`, that it was built for
   * that checkpoint and ladder). Throws StoreCacheError: 'STALE' for another key or format
   * version, 'DAMAGED' for anything else wrong.
   */
  static open(file: string, expect?: StoreKey): StoreFileReader {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new StoreCacheError('DAMAGED', `${file}: cannot be read (${(e as Error).message})`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      const index = readIndex(file, fd, size, expect);
      return new StoreFileReader(file, fd, size, index);
    } catch (e) {
      fs.closeSync(fd);
      if (e instanceof StoreCacheError) throw e;
      throw new StoreCacheError('DAMAGED', `${file}: cannot be read (${(e as Error).message})`);
    }
  }

  /** The aligned range of the file that `readExpert(layer, expert, level, held)` reads (length 0: nothing to read). */
  readRange(layer: number, expert: number, level: number, held = -1): FileRange {
    const [from, to] = this.segmentSpan(level, held);
    const e = this.entry(layer, expert);
    return from > to ? { offset: e.offset, length: 0 } : segmentsRange(e, from, to);
  }

  /**
   * The parts that bring expert (layer, expert) to `level` when rungs 0..held are held
   * (held −1: nothing; the head comes with rung 0), per matrix in MATRICES order — for the exact
   * level the original bytes alone, whatever is held: what ExpertStore.partsToMove returns from
   * memory, read from the file with one aligned read and checked against the segments' CRC-32Cs.
   */
  readExpert(layer: number, expert: number, level: number, held = -1): Record<MatrixName, Buffer[]> {
    const [from, to] = this.segmentSpan(level, held);
    if (from > to) return this.partsFromRead(layer, expert, level, held, Buffer.alloc(0));
    return this.partsFromRead(layer, expert, level, held, this.readSegments(layer, expert, from, to));
  }

  /**
   * As readExpert, from bytes the caller read itself — exactly the file's `readRange(layer,
   * expert, level, held)`, e.g. with direct I/O off the event loop: checks their CRC-32Cs (a
   * StoreChecksumError names the layer, expert, level and file offset) and cuts out the parts.
   */
  partsFromRead(layer: number, expert: number, level: number, held: number, bytes: Buffer): Record<MatrixName, Buffer[]> {
    const [from, to] = this.segmentSpan(level, held);
    const out = Object.fromEntries(MATRICES.map((m) => [m, [] as Buffer[]])) as Record<MatrixName, Buffer[]>;
    const range = this.readRange(layer, expert, level, held);
    if (bytes.byteLength !== range.length) throw new RangeError(`layer ${layer} expert ${expert} level ${level} held ${held}: ${bytes.byteLength} bytes given, its read range is ${range.length}`);
    if (from > to) return out;
    const e = this.entry(layer, expert);
    const at = range.offset - e.offset;
    this.checkSegments(layer, expert, from, to, at, bytes);
    const part = ([off, len]: BlockRange) => bytes.subarray(off - at, off - at + len);
    for (const m of MATRICES) {
      const x = e.matrices[m];
      if (level === this.exact) out[m].push(part(x.exact!));
      else {
        if (from === 0) out[m].push(part(x.head));
        for (let k = from; k <= to; k++) out[m].push(part(x.rungs[k]));
      }
    }
    return out;
  }

  /** Every level of expert (layer, expert), in the store's in-memory form (one read of its whole block; its padding checked too). */
  loadExpert(layer: number, expert: number): StoredExpert {
    const e = this.entry(layer, expert);
    const last = e.segments.length - 1;
    const block = this.readSegments(layer, expert, 0, last);
    this.checkSegments(layer, expert, 0, last, 0, block); // the block's read starts at its first byte
    const pad = block.subarray(e.segments[last].end);
    if (pad.some((b) => b !== 0)) throw new StoreCacheError('DAMAGED', `${this.file}: layer ${layer} expert ${expert}: a non-zero byte in the padding after its block (bytes ${e.offset + e.segments[last].end}..${e.offset + alignUp(e.segments[last].end)})`);
    const part = ([off, len]: BlockRange) => block.subarray(off, off + len);
    const stored = {} as StoredExpert;
    for (const m of MATRICES) {
      const x = e.matrices[m];
      const s: StoredMatrix = { dtype: x.dtype, shape: x.shape, bounds: x.bounds, head: part(x.head), rungs: x.rungs.map(part), exact: x.exact ? part(x.exact) : undefined };
      stored[m] = s;
    }
    return stored;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  /** Expert (layer, expert)'s entry in the index: where its block is, its segments and its matrices' shapes and ranges. */
  entryOf(layer: number, expert: number): Readonly<ExpertEntry> {
    return this.entry(layer, expert);
  }

  private entry(layer: number, expert: number): ExpertEntry {
    const e = this.index.experts[layer]?.[expert];
    if (!Number.isInteger(layer) || !Number.isInteger(expert) || !e) throw new RangeError(`no expert ${expert} in layer ${layer} (${this.numLayers} layers × ${this.numExperts} experts)`);
    return e;
  }

  /** Segments [from, to] that reading `level` on top of `held` needs (from > to: none). */
  private segmentSpan(level: number, held: number): [number, number] {
    if (!Number.isInteger(level) || level < 0 || level >= this.levels) throw new RangeError(`level ${level} is not one of 0..${this.levels - 1}`);
    if (!Number.isInteger(held) || held < -1 || held >= this.levels) throw new RangeError(`held ${held} is not one of -1..${this.levels - 1}`);
    return level === this.exact ? [level, level] : [held + 1, level];
  }

  /** One aligned read of the range that holds segments from..to of an expert's block. */
  private readSegments(layer: number, expert: number, from: number, to: number): Buffer {
    if (this.fd === undefined) throw new Error(`${this.file}: read after close`);
    const range = segmentsRange(this.entry(layer, expert), from, to);
    const block = Buffer.allocUnsafeSlow(range.length);
    for (let done = 0; done < block.byteLength; ) {
      const got = fs.readSync(this.fd, block, done, block.byteLength - done, range.offset + done);
      if (got === 0) throw new StoreCacheError('DAMAGED', `${this.file}: layer ${layer} expert ${expert}: the file ends at ${range.offset + done}, inside the expert's bytes (truncated after opening?)`);
      done += got;
    }
    this.bytesRead += block.byteLength;
    return block;
  }

  /** Checks segments from..to against their CRC-32Cs in `bytes`, whose first byte is byte `at` of the block. */
  private checkSegments(layer: number, expert: number, from: number, to: number, at: number, bytes: Buffer): void {
    const e = this.entry(layer, expert);
    for (let k = from; k <= to; k++) {
      const start = k === 0 ? 0 : e.segments[k - 1].end;
      const seg = bytes.subarray(start - at, e.segments[k].end - at);
      const crc = native.crc32c(seg);
      if (crc !== e.segments[k].crc32c) throw new StoreChecksumError(this.file, layer, expert, k, e.offset + start, seg.byteLength, e.segments[k].crc32c, crc);
    }
  }
}

/** The aligned file range that holds segments from..to of block `e` (the block is padded: it never runs past it). */
function segmentsRange(e: ExpertEntry, from: number, to: number): FileRange {
  const offset = e.offset + alignDown(from === 0 ? 0 : e.segments[from - 1].end);
  return { offset, length: alignUp(e.offset + e.segments[to].end) - offset };
}

/** Reads and checks the preamble and the index of an open store file. */
function readIndex(file: string, fd: number, size: number, expect?: StoreKey): StoreIndex {
  const damaged = (why: string) => new StoreCacheError('DAMAGED', `${file}: ${why}`);
  const read = (offset: number, length: number): Buffer => {
    const b = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const got = fs.readSync(fd, b, done, length - done, offset + done);
      if (got === 0) break;
      done += got;
    }
    return b.subarray(0, done);
  };
  const pre = read(0, ALIGN);
  if (pre.byteLength < 8 || !pre.subarray(0, 8).equals(MAGIC)) throw damaged('not an ebserve expert store (bad magic)');
  if (pre.byteLength < 12) throw damaged(`truncated to ${pre.byteLength} bytes (no format version)`);
  const version = pre.readUInt32LE(8);
  if (version !== FORMAT_VERSION) throw new StoreCacheError('STALE', `${file}: format version ${version}, this build reads version ${FORMAT_VERSION} only`);
  if (pre.byteLength < ALIGN) throw damaged(`truncated to ${pre.byteLength} bytes (the preamble alone is ${ALIGN})`);
  const alignment = pre.readUInt32LE(12);
  if (alignment !== ALIGN) throw damaged(`alignment ${alignment} in the preamble, the format's is ${ALIGN}`);
  if (pre.subarray(PREAMBLE_USED).some((b) => b !== 0)) throw damaged('a non-zero byte in the preamble’s padding');
  const indexOffset = Number(pre.readBigUInt64LE(16));
  const indexLength = Number(pre.readBigUInt64LE(24));
  if (indexOffset < ALIGN || indexOffset % ALIGN !== 0 || indexLength <= 0 || indexLength > MAX_INDEX_BYTES) throw damaged(`index at ${indexOffset}, ${indexLength} bytes: not a place an index can be`);
  if (indexOffset + indexLength !== size) throw damaged(`the file is ${size} bytes, the preamble says its index ends at ${indexOffset + indexLength} (truncated or extended)`);
  const json = read(indexOffset, indexLength);
  if (!createHash('sha256').update(json).digest().equals(pre.subarray(32, 64))) throw damaged('index does not match its sha256 (a changed or damaged byte)');
  let h: StoreIndex;
  try {
    h = JSON.parse(json.toString('utf8')) as StoreIndex;
  } catch (e) {
    throw damaged(`index is not valid JSON (${(e as Error).message})`);
  }
  if (expect && h.checkpoint !== expect.checkpointHash) throw new StoreCacheError('STALE', `${file}: built for another checkpoint (${String(h.checkpoint).slice(0, 12)}…, now ${expect.checkpointHash.slice(0, 12)}…)`);
  if (expect && h.ladder !== ladderKey(expect.ladder)) throw new StoreCacheError('STALE', `${file}: built for ladder ${h.ladder}, now ${ladderKey(expect.ladder)}`);
  checkGeometry(h, indexOffset, damaged);
  return h;
}

/** Every block aligned, in order, inside the data; every segment and matrix range where the layout puts it. */
function checkGeometry(h: StoreIndex, indexOffset: number, damaged: (why: string) => StoreCacheError): void {
  const ladder = h.ladderSpec;
  let levels: number;
  try {
    if (ladderKey(ladder) !== h.ladder) throw new Error('the ladder does not match its key');
    levels = levelCount(ladder);
  } catch (e) {
    throw damaged(`index: ${(e as Error).message}`);
  }
  const R = ladder.bounds.length;
  const count = (n: unknown) => Number.isInteger(n) && (n as number) > 0;
  if (!count(h.numLayers) || !count(h.numExperts) || h.alignment !== ALIGN) throw damaged('index: layer count, expert count or alignment missing');
  if (!Array.isArray(h.experts) || h.experts.length !== h.numLayers) throw damaged('index: expert table does not match its layer count');
  let next = ALIGN;
  h.experts.forEach((row, l) => {
    if (!Array.isArray(row) || row.length !== h.numExperts) throw damaged(`index: layer ${l}: expert table does not match its expert count`);
    row.forEach((e, x) => {
      const where = `index: layer ${l} expert ${x}`;
      if (!e || !Number.isInteger(e.offset) || e.offset < next || e.offset % ALIGN !== 0) throw damaged(`${where}: block offset ${e?.offset} is not aligned after the previous block (${next})`);
      if (!Array.isArray(e.segments) || e.segments.length !== levels) throw damaged(`${where}: ${e.segments?.length} segments, the ladder has ${levels} levels`);
      let end = 0;
      e.segments.forEach((s, k) => {
        if (!Number.isInteger(s?.end) || s.end < end || !Number.isInteger(s.crc32c)) throw damaged(`${where}: segment ${k} is not a range after segment ${k - 1}`);
        end = s.end;
      });
      next = alignUp(e.offset + end);
      if (next > indexOffset) throw damaged(`${where}: block runs past the index (to ${e.offset + end}, index at ${indexOffset})`);
      const inSegment = (r: BlockRange, k: number, what: string) => {
        const [off, len] = Array.isArray(r) ? r : [NaN, NaN];
        const [lo, hi] = [k === 0 ? 0 : e.segments[k - 1].end, e.segments[k].end];
        if (!(Number.isInteger(off) && Number.isInteger(len) && len >= 0 && off >= lo && off + len <= hi)) throw damaged(`${where} ${what}: range [${off}, +${len}] outside its segment ${k} [${lo}, ${hi})`);
      };
      for (const m of MATRICES) {
        const x = e.matrices?.[m];
        if (!x || !Array.isArray(x.rungs) || x.rungs.length !== R || !Array.isArray(x.bounds) || x.bounds.length !== R) throw damaged(`${where} ${m}: entry missing or with the wrong rung count`);
        if (!(x.dtype in DTYPE_BYTES) || !Array.isArray(x.shape) || !x.shape.every(count)) throw damaged(`${where} ${m}: dtype ${x.dtype} or shape ${JSON.stringify(x.shape)} is not a matrix's`);
        inSegment(x.head, 0, `${m} head`);
        x.rungs.forEach((r, k) => inSegment(r, k, `${m} rung ${k}`));
        if (ladder.exact !== Boolean(x.exact)) throw damaged(`${where} ${m}: exact bytes ${x.exact ? 'present' : 'missing'}`);
        if (x.exact) {
          inSegment(x.exact, R, `${m} exact bytes`);
          const want = x.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[x.dtype];
          if (x.exact[1] !== want) throw damaged(`${where} ${m}: exact bytes ${x.exact[1]}, its shape and dtype make ${want}`);
        }
      }
    });
  });
}
