/**
 * The expert store's disk cache, so a restart loads the compressed experts instead of
 * recompressing them. One file per (checkpoint, ladder), in a folder beside the model:
 *
 *   "EBSTORE\0"  u32 LE format version (1)  u32 LE header length  sha256(header)  header  data
 *
 * (header: JSON, UTF-8).
 * The header repeats the checkpoint hash and the ladder the file was built for, the data's length
 * and sha256, and per matrix the byte ranges of its codec head, rungs and exact bytes within data.
 * Loading checks all of it — magic, version, header, key, length, digest, and every codec stream
 * through the codec's own validator with checksums — and anything wrong makes the file
 * untrusted: the caller is told why, and the store is rebuilt and rewritten (atomically).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { inspect } from '../codec/index.js';
import { ladderKey, type Ladder } from './plan.js';
import { MATRICES, type ExpertSource } from './source.js';
import { buildStore, ExpertStore, type BuildProgress, type StoredExpert, type StoredMatrix } from './store.js';

const MAGIC = Buffer.from('EBSTORE\0', 'latin1');
const VERSION = 1;
const FIXED = 48; // magic, version, header length, header sha256

type Range = [offset: number, length: number];
interface MatrixEntry {
  dtype: StoredMatrix['dtype'];
  shape: number[];
  bounds: number[];
  head: Range;
  rungs: Range[];
  exact: Range | null;
}
interface Header {
  checkpoint: string;
  ladder: string;
  ladderSpec: Ladder;
  numLayers: number;
  numExperts: number;
  dataBytes: number;
  dataSha256: string;
  experts: Record<string, MatrixEntry>[][];
}

/** Why a cache file was not used. */
export class StoreCacheError extends Error {
  constructor(
    readonly code: 'DAMAGED' | 'STALE',
    message: string,
  ) {
    super(message);
    this.name = 'StoreCacheError';
  }
}

/** Where a model's expert store is cached by default: a folder inside the model's. */
export function defaultCacheDir(modelDir: string): string {
  return path.join(modelDir, '.ebserve-cache');
}

/** The cache file for (checkpoint, ladder) in `dir`. */
export function storeFileName(dir: string, checkpointHash: string, ladder: Ladder): string {
  const key = createHash('sha256').update(`${checkpointHash}\0${ladderKey(ladder)}`).digest('hex').slice(0, 20);
  return path.join(dir, `experts-${key}.ebstore`);
}

/** Writes `store` to `file` (a temporary file renamed into place: never half a file). */
export function writeStoreFile(file: string, store: ExpertStore): void {
  const chunks: Buffer[] = [];
  let at = 0;
  const put = (b: Buffer): Range => {
    chunks.push(b);
    at += b.byteLength;
    return [at - b.byteLength, b.byteLength];
  };
  const experts = store.entries().map((row) =>
    row.map((e) => {
      const out: Record<string, MatrixEntry> = {};
      for (const m of MATRICES) {
        const s = e[m];
        out[m] = { dtype: s.dtype, shape: s.shape, bounds: s.bounds, head: put(s.head), rungs: s.rungs.map(put), exact: s.exact ? put(s.exact) : null };
      }
      return out;
    }),
  );
  const data = Buffer.concat(chunks);
  const header: Header = {
    checkpoint: store.checkpointHash,
    ladder: ladderKey(store.ladder),
    ladderSpec: store.ladder,
    numLayers: store.numLayers,
    numExperts: store.numExperts,
    dataBytes: data.byteLength,
    dataSha256: createHash('sha256').update(data).digest('hex'),
    experts,
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const fixed = Buffer.alloc(FIXED);
  MAGIC.copy(fixed, 0);
  fixed.writeUInt32LE(VERSION, 8);
  fixed.writeUInt32LE(json.byteLength, 12);
  createHash('sha256').update(json).digest().copy(fixed, 16);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, Buffer.concat([fixed, json, data]));
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** Reads and checks a cache file made for (checkpointHash, ladder); throws StoreCacheError. */
export function readStoreFile(file: string, checkpointHash: string, ladder: Ladder): ExpertStore {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new StoreCacheError('DAMAGED', `${file}: cannot be read (${(e as Error).message})`);
  }
  const damaged = (why: string) => new StoreCacheError('DAMAGED', `${file}: ${why}`);
  if (buf.byteLength < FIXED || !buf.subarray(0, 8).equals(MAGIC)) throw damaged('not an ebserve expert store (bad magic)');
  if (buf.readUInt32LE(8) !== VERSION) throw new StoreCacheError('STALE', `${file}: format version ${buf.readUInt32LE(8)}, this build reads ${VERSION}`);
  const headerBytes = buf.readUInt32LE(12);
  if (FIXED + headerBytes > buf.byteLength) throw damaged(`header of ${headerBytes} bytes runs past the end of the file`);
  const json = buf.subarray(FIXED, FIXED + headerBytes);
  if (!createHash('sha256').update(json).digest().equals(buf.subarray(16, FIXED))) throw damaged('header does not match its sha256 (a changed or damaged byte)');
  let h: Header;
  try {
    h = JSON.parse(json.toString('utf8')) as Header;
  } catch (e) {
    throw damaged(`header is not valid JSON (${(e as Error).message})`);
  }
  if (h.checkpoint !== checkpointHash) throw new StoreCacheError('STALE', `${file}: built for another checkpoint (${String(h.checkpoint).slice(0, 12)}…, now ${checkpointHash.slice(0, 12)}…)`);
  if (h.ladder !== ladderKey(ladder)) throw new StoreCacheError('STALE', `${file}: built for ladder ${h.ladder}, now ${ladderKey(ladder)}`);
  const data = buf.subarray(FIXED + headerBytes);
  if (data.byteLength !== h.dataBytes) throw damaged(`data is ${data.byteLength} bytes, the header says ${h.dataBytes}`);
  if (createHash('sha256').update(data).digest('hex') !== h.dataSha256) throw damaged('data does not match its sha256 (a changed or damaged byte)');
  if (!Array.isArray(h.experts) || h.experts.length !== h.numLayers) throw damaged('expert table does not match its layer count');
  const slice = ([off, len]: Range, what: string): Buffer => {
    if (!(Number.isInteger(off) && Number.isInteger(len) && off >= 0 && len >= 0 && off + len <= data.byteLength)) throw damaged(`${what}: range [${off}, +${len}] outside the data`);
    return data.subarray(off, off + len);
  };
  const experts: StoredExpert[][] = h.experts.map((row, l) => {
    if (!Array.isArray(row) || row.length !== h.numExperts) throw damaged(`layer ${l}: expert table does not match its expert count`);
    return row.map((entry, e) => {
      const stored = {} as StoredExpert;
      for (const m of MATRICES) {
        const where = `layer ${l} expert ${e} ${m}`;
        const x = entry?.[m];
        if (!x || !Array.isArray(x.rungs) || x.rungs.length !== ladder.bounds.length) throw damaged(`${where}: entry missing or with the wrong rung count`);
        const s: StoredMatrix = { dtype: x.dtype, shape: x.shape, bounds: x.bounds, head: slice(x.head, where), rungs: x.rungs.map((r) => slice(r, where)), exact: x.exact ? slice(x.exact, where) : undefined };
        try {
          inspect(s.head, { rungs: s.rungs, verify: true });
        } catch (err) {
          throw damaged(`${where}: ${(err as Error).message}`);
        }
        if (ladder.exact !== Boolean(s.exact)) throw damaged(`${where}: exact bytes ${s.exact ? 'present' : 'missing'}`);
        stored[m] = s;
      }
      return stored;
    });
  });
  return new ExpertStore(ladder, h.numLayers, h.numExperts, checkpointHash, experts);
}

export interface OpenedStore {
  store: ExpertStore;
  /** 'cache': read from `file`; 'built': compressed now (and written to `file` unless that failed). */
  from: 'cache' | 'built';
  file: string;
  /** Why the cache was not used (no file, stale, damaged), or why writing it failed. */
  notes: string[];
}

/**
 * The store for `source` at `ladder`: from the cache file in `cacheDir` when it is there and
 * sound, else built (with progress) and written back. `cacheDir: null` skips the disk cache.
 */
export async function openStore(
  source: ExpertSource,
  ladder: Ladder,
  cacheDir: string | null,
  onProgress?: (p: BuildProgress) => void,
): Promise<OpenedStore> {
  const notes: string[] = [];
  const file = cacheDir ? storeFileName(cacheDir, source.hash, ladder) : '';
  if (cacheDir) {
    if (fs.existsSync(file)) {
      try {
        return { store: readStoreFile(file, source.hash, ladder), from: 'cache', file, notes };
      } catch (e) {
        if (!(e instanceof StoreCacheError)) throw e;
        notes.push(`cache ${e.code === 'STALE' ? 'stale' : 'damaged'}, rebuilding: ${e.message}`);
      }
    } else {
      notes.push(`no cache file ${file}; building`);
    }
  }
  const store = await buildStore(source, ladder, onProgress);
  if (cacheDir) {
    try {
      writeStoreFile(file, store);
    } catch (e) {
      notes.push(`could not write the cache ${file}: ${(e as Error).message}`);
    }
  }
  return { store, from: 'built', file, notes };
}
