/**
 * The expert store file's layout (format version 2), written down once, here. Every integer is
 * little-endian; ALIGN = 4096.
 *
 *   offset 0      preamble, ALIGN bytes:
 *                   0  "EBSTORE\0"
 *                   8  u32 format version (2)
 *                  12  u32 alignment (4096)
 *                  16  u64 index offset      24  u64 index length
 *                  32  sha256 of the index (32 bytes)
 *                  64  zeros up to ALIGN
 *   offset ALIGN  one block per expert, layer by layer, expert by expert, each starting at a
 *                 multiple of ALIGN and padded with zeros to the next one. A block is the
 *                 expert's levels in order, one *segment* per level, each matrix (gate, up, down)
 *                 inside it in that order:
 *                   segment 0:    gate head, up head, down head, gate rung 0, up rung 0, down rung 0
 *                   segment k:    gate rung k, up rung k, down rung k            (k = 1 .. R−1)
 *                   segment R:    gate exact, up exact, down exact   (when the ladder has an exact level)
 *                 so levels 0..k of one expert are one prefix of its block — a single aligned
 *                 read [block, alignUp(end of segment k)) — and the exact level is one range too.
 *   index         JSON (UTF-8), after the last block, to the end of the file:
 *                   { checkpoint, ladder, ladderSpec, numLayers, numExperts, alignment,
 *                     experts: [layer][expert] → ExpertEntry }
 *                 An ExpertEntry gives the block's offset, each segment's end (from the block's
 *                 start) and CRC-32C, and per matrix its dtype, shape, bounds and the ranges of its
 *                 head, rungs and exact bytes within the block.
 *
 * The index comes last because it is known only when every expert has been compressed: the build
 * streams blocks to disk as they are made and writes the index and then the preamble at the end.
 * A reader checks the preamble, the index's sha256 and its geometry when it opens the file, and
 * each segment's CRC-32C whenever it reads one; a mismatch names the layer, expert and offset.
 * Version 1 (one sha256 over all data, no alignment) is not read: it is a cache, so a file of
 * another version is stale and rebuilt.
 */
import type { StoredMatrix } from './store.js';
import type { Ladder } from './plan.js';
import type { MatrixName } from './source.js';

export const MAGIC = Buffer.from('EBSTORE\0', 'latin1');
export const FORMAT_VERSION = 2;
export const ALIGN = 4096;
/** Bytes of the preamble that carry data (the rest of its ALIGN bytes are zero). */
export const PREAMBLE_USED = 64;

/** [offset, length] within the expert's block. */
export type BlockRange = [offset: number, length: number];

export interface MatrixEntry {
  dtype: StoredMatrix['dtype'];
  shape: number[];
  bounds: number[];
  head: BlockRange;
  rungs: BlockRange[];
  exact: BlockRange | null;
}

export interface SegmentEntry {
  /** End of the segment, from the block's start (segment k starts where k−1 ends; 0 starts at 0). */
  end: number;
  crc32c: number;
}

export interface ExpertEntry {
  /** File offset of the block (a multiple of ALIGN). */
  offset: number;
  /** One per level: the codec rungs, then the exact level when the ladder has one. */
  segments: SegmentEntry[];
  matrices: Record<MatrixName, MatrixEntry>;
}

export interface StoreIndex {
  checkpoint: string;
  ladder: string;
  ladderSpec: Ladder;
  numLayers: number;
  numExperts: number;
  alignment: number;
  experts: ExpertEntry[][];
}

export interface Preamble {
  version: number;
  alignment: number;
  indexOffset: number;
  indexLength: number;
  indexSha256: Buffer;
}

/** The smallest multiple of ALIGN ≥ n. */
export function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

/** The largest multiple of ALIGN ≤ n. */
export function alignDown(n: number): number {
  return Math.floor(n / ALIGN) * ALIGN;
}

export function encodePreamble(p: Omit<Preamble, 'version' | 'alignment'>): Buffer {
  const b = Buffer.alloc(ALIGN);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(FORMAT_VERSION, 8);
  b.writeUInt32LE(ALIGN, 12);
  b.writeBigUInt64LE(BigInt(p.indexOffset), 16);
  b.writeBigUInt64LE(BigInt(p.indexLength), 24);
  p.indexSha256.copy(b, 32);
  return b;
}

/** Why a store file was not used or an expert could not be read from it. */
export class StoreCacheError extends Error {
  constructor(
    readonly code: 'DAMAGED' | 'STALE',
    message: string,
  ) {
    super(message);
    this.name = 'StoreCacheError';
  }
}

/** One expert's bytes in the store file do not match their CRC-32C: which ones, and where. */
export class StoreChecksumError extends StoreCacheError {
  constructor(
    readonly file: string,
    readonly layer: number,
    readonly expert: number,
    readonly level: number,
    /** File offset and length of the segment that failed its check. */
    readonly offset: number,
    readonly length: number,
    stored: number,
    computed: number,
  ) {
    super(
      'DAMAGED',
      `${file}: layer ${layer} expert ${expert}, level ${level} (bytes ${offset}..${offset + length} of the file): CRC-32C ${hex(computed)} read, ${hex(stored)} stored — the file is damaged there`,
    );
    this.name = 'StoreChecksumError';
  }
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}
