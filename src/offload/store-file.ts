/**
 * The expert store's disk cache, so a restart loads the compressed experts instead of
 * recompressing them. One file per (checkpoint, ladder), in a folder beside the model, laid out
 * per expert (store-format.ts: every expert's levels in one 4096-aligned block, a CRC-32C per
 * level, the index at the end). It is built by streaming (store-build.ts: a few experts in memory
 * at a time) and read by store-reader.ts.
 *
 * Loading checks all of it — magic, version, the index's sha256, the key it was built for, the
 * geometry of every block, every segment's CRC-32C, the padding, and every codec stream through
 * the codec's own validator with checksums — and anything wrong makes the file untrusted: the
 * caller is told why, and the store is rebuilt and rewritten (atomically).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { inspect } from '../codec/index.js';
import { ladderKey, type Ladder } from './plan.js';
import { MATRICES, type ExpertSource } from './source.js';
import { buildStoreFile } from './store-build.js';
import { StoreCacheError } from './store-format.js';
import { StoreFileReader } from './store-reader.js';
import { StoreFileWriter, StoreWriteError } from './store-writer.js';
import { buildStore, ExpertStore, type BuildProgress, type StoredExpert } from './store.js';

export { StoreCacheError, StoreChecksumError } from './store-format.js';
export { StoreFileReader } from './store-reader.js';

/** Where a model's expert store is cached by default: a folder inside the model's. */
export function defaultCacheDir(modelDir: string): string {
  return path.join(modelDir, '.ebserve-cache');
}

/** The cache file for (checkpoint, ladder) in `dir`. */
export function storeFileName(dir: string, checkpointHash: string, ladder: Ladder): string {
  const key = createHash('sha256').update(`${checkpointHash}\0${ladderKey(ladder)}`).digest('hex').slice(0, 20);
  return path.join(dir, `experts-${key}.ebstore`);
}

/** Writes an in-memory `store` to `file` (a temporary file renamed into place: never half a file). */
export function writeStoreFile(file: string, store: ExpertStore): void {
  const w = StoreFileWriter.create(file, { checkpoint: store.checkpointHash, ladder: store.ladder, numLayers: store.numLayers, numExperts: store.numExperts });
  try {
    store.entries().forEach((row, l) => row.forEach((e, x) => w.append(l, x, e)));
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
}

/**
 * Reads every expert of a store file made for (checkpointHash, ladder) into memory, checking
 * each (its CRC-32Cs, its padding, its codec streams); throws StoreCacheError.
 */
export function readStoreFile(file: string, checkpointHash: string, ladder: Ladder): ExpertStore {
  const f = StoreFileReader.open(file, { checkpointHash, ladder });
  try {
    const experts: StoredExpert[][] = [];
    for (let l = 0; l < f.numLayers; l++) {
      const row: StoredExpert[] = [];
      for (let e = 0; e < f.numExperts; e++) {
        const stored = f.loadExpert(l, e);
        for (const m of MATRICES) {
          try {
            inspect(stored[m].head, { rungs: stored[m].rungs, verify: true });
          } catch (err) {
            throw new StoreCacheError('DAMAGED', `${file}: layer ${l} expert ${e} ${m}: ${(err as Error).message}`);
          }
        }
        row.push(stored);
      }
      experts.push(row);
    }
    return new ExpertStore(ladder, f.numLayers, f.numExperts, checkpointHash, experts);
  } finally {
    f.close();
  }
}

/**
 * The store file for `source` at `ladder` in `cacheDir`, for a store held on disk: used as it is
 * when its preamble and index are sound and made for this checkpoint and ladder (its experts are
 * checked as they are read, a CRC-32C per level), else built by streaming. Unlike openStore,
 * nothing is loaded into memory, and a file that cannot be written is an error: the disk tier
 * has nothing to read without it.
 */
export async function ensureStoreFile(
  source: ExpertSource,
  ladder: Ladder,
  cacheDir: string,
  onProgress?: (p: BuildProgress) => void,
): Promise<{ file: string; from: 'cache' | 'built'; notes: string[] }> {
  const notes: string[] = [];
  const file = storeFileName(cacheDir, source.hash, ladder);
  if (fs.existsSync(file)) {
    try {
      StoreFileReader.open(file, { checkpointHash: source.hash, ladder }).close();
      return { file, from: 'cache', notes };
    } catch (e) {
      if (!(e instanceof StoreCacheError)) throw e;
      notes.push(`cache ${e.code === 'STALE' ? 'stale' : 'damaged'}, rebuilding: ${e.message}`);
    }
  } else {
    notes.push(`no cache file ${file}; building`);
  }
  await buildStoreFile(source, ladder, file, { onProgress });
  return { file, from: 'built', notes };
}

export interface OpenedStore {
  store: ExpertStore;
  /** 'cache': read from `file`; 'built': compressed now (streamed to `file` and read back, unless writing failed). */
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
  if (!cacheDir) return { store: await buildStore(source, ladder, onProgress), from: 'built', file, notes };
  // Streamed to the file, then loaded from it: the file is checked end to end as any cache is.
  // When the disk will not take it, the store is built in memory instead (and said so).
  try {
    await buildStoreFile(source, ladder, file, { onProgress });
  } catch (e) {
    if (!(e instanceof StoreWriteError)) throw e;
    notes.push(`could not write the cache ${file}: ${e.message}; building in memory`);
    return { store: await buildStore(source, ladder, onProgress), from: 'built', file, notes };
  }
  try {
    return { store: readStoreFile(file, source.hash, ladder), from: 'built', file, notes };
  } catch (e) {
    if (!(e instanceof StoreCacheError)) throw e;
    notes.push(`the cache file just written does not read back (${e.message}); building in memory`);
  }
  return { store: await buildStore(source, ladder, onProgress), from: 'built', file, notes };
}
